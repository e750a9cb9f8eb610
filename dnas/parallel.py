"""Data parallelism on one host or many: the processes, the mesh, the state's and batches' shardings.

Every device holds a copy of the run's state (params, batch_stats, alpha, optimizer and
strategy states, keys) and a slice of each global batch: a 1-D ``jax.sharding.Mesh`` of the
devices with the axis ``"data"``, the state replicated over it (``PartitionSpec()``) and the
batch axis split along it (``PartitionSpec("data")``). The step is one ``jax.jit``-ed program;
XLA's sharding propagation turns the batch means (loss, gradients, BatchNorm statistics) into
means over the global batch, so a run on N devices computes what a run on one does at the same
global batch, up to the order of floating-point sums. On one device the mesh is trivial and
nothing changes.

Several hosts (or several processes on one) join one run through JAX's multi-controller
runtime: every process runs the same program, ``initialize`` connects them
(``jax.distributed.initialize``), and the mesh spans every process's devices. Each process
holds the dataset and computes only its own devices' slices of each batch; only process 0
writes the run folder's logs, plots and genotype (``is_writer``), while every process takes part
in each checkpoint (``dnas.checkpoints``: each writes the shards it holds).

Example::

  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.data.batch_size, mesh)
  state = jax.device_put(state, parallel.replicated(mesh))
  batch_fn = jax.jit(functools.partial(data.get_batch, ..., sharding=parallel.batch_sharding(mesh)))
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dnas.run_config import ConfigError

AXIS = "data"


# Environment variables by which a cluster manager starts the processes of one job; JAX's
# `jax.distributed.initialize()` reads the coordinator, process count and id from them.
_CLUSTER_ENV = {"SLURM_NTASKS": "SLURM", "OMPI_COMM_WORLD_SIZE": "Open MPI"}


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, detect: bool = False) -> bool:
  """Joins this process to a multi-process run; returns whether it did.

  A run is multi-process when any argument is given, when ``JAX_COORDINATOR_ADDRESS`` is set, or
  when ``detect`` is true (``--distributed``: JAX finds the coordinator, the process count and
  this process's id itself on a TPU pod slice, under SLURM, Open MPI or Kubernetes). A SLURM or
  Open MPI job of several tasks is detected without ``detect``. Otherwise nothing happens: one
  process, its own devices. Must run before JAX computes anything.

  Raises:
    ConfigError: naming the flag, when the values do not fit together.
  """
  env = os.environ.get("JAX_COORDINATOR_ADDRESS")
  cluster = [name for var, name in _CLUSTER_ENV.items() if int(os.environ.get(var, "1") or 1) > 1]
  if not (detect or env or cluster or coordinator_address or num_processes is not None
          or process_id is not None):
    return False
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes} must be >= 1")
  if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
    raise ConfigError(f"--process_id={process_id} must be in [0, --num_processes="
                      f"{num_processes})")
  if coordinator_address and (num_processes is None or process_id is None) and not cluster:
    raise ConfigError("--coordinator_address needs --num_processes and --process_id (or a "
                      "cluster manager, as SLURM, that sets them)")
  # CPU devices of different processes exchange data through gloo; GPUs and TPUs use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def is_writer() -> bool:
  """Whether this process writes the run folder's files: process 0 of a multi-process run."""
  return jax.process_index() == 0


def put(tree: Any, sharding) -> Any:
  """``jax.device_put(tree, sharding)``, also where ``sharding`` spans several processes.

  Every process must pass the same values (a state initialised from the same key). Arrays on
  one process's device cannot move to other processes' devices directly, so each array goes
  through host memory; PRNG keys keep their implementation.
  """
  if sharding is None or jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)

  return jax.tree.map(one, tree)


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh (axis ``"data"``) of ``devices``; default: every process's devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """A copy of the whole array on every device of ``mesh``: the state's sharding."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over ``mesh``'s devices: the batches' sharding."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, where: str = "data.batch_size") -> None:
  """Raises ``ConfigError`` naming ``where`` unless ``batch_size`` splits evenly over ``mesh``."""
  n = mesh.devices.size
  if int(batch_size) % n:
    raise ConfigError(f"config.{where}={batch_size} must be a multiple of the {n} devices the "
                      f"batch is split over (set config.{where} to a multiple of {n}, or make "
                      f"fewer devices visible)")


def constrain_outputs(fn: Callable, mesh: Mesh) -> Callable:
  """``fn`` whose outputs are laid out replicated over ``mesh`` (a step's new state, metrics).

  A compiled step is called again with the state it returned, so the state must come out
  where it went in; the constraint says so to XLA instead of leaving it to propagation. On one
  device there is nothing to lay out, and ``fn`` is returned as it is.
  """
  if mesh.devices.size == 1:
    return fn
  sharding = replicated(mesh)

  def constrained(*args):
    return jax.lax.with_sharding_constraint(fn(*args), sharding)

  return constrained


def place_batch(batch: Any, mesh: Mesh) -> Any:
  """An evaluation batch on ``mesh``: split over the devices when its size allows, else copied.

  Evaluation sums per-example results, so either layout gives the same sums; splitting only
  saves the devices work. On several processes every process passes the same batch.
  """
  split, whole = batch_sharding(mesh), replicated(mesh)
  n = mesh.devices.size
  return jax.tree.map(lambda x: put(x, split if x.shape[0] % n == 0 else whole), batch)
