"""Data parallelism on one host: the mesh, the state's and the batches' shardings.

Every local device holds a copy of the run's state (params, batch_stats, alpha, optimizer and
strategy states, keys) and a slice of each global batch: a 1-D ``jax.sharding.Mesh`` of the
devices with the axis ``"data"``, the state replicated over it (``PartitionSpec()``) and the
batch axis split along it (``PartitionSpec("data")``). The step is one ``jax.jit``-ed program;
XLA's sharding propagation turns the batch means (loss, gradients, BatchNorm statistics) into
means over the global batch, so a run on N devices computes what a run on one does at the same
global batch, up to the order of floating-point sums. On one device the mesh is trivial and
nothing changes.

Example::

  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.data.batch_size, mesh)
  state = jax.device_put(state, parallel.replicated(mesh))
  batch_fn = jax.jit(functools.partial(data.get_batch, ..., sharding=parallel.batch_sharding(mesh)))
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dnas.run_config import ConfigError

AXIS = "data"


def make_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh (axis ``"data"``) of ``devices``; default: this process's devices."""
  devices = jax.local_devices() if devices is None else devices
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
  saves the devices work.
  """
  split, whole = batch_sharding(mesh), replicated(mesh)
  n = mesh.devices.size
  return jax.tree.map(lambda x: jax.device_put(x, split if x.shape[0] % n == 0 else whole),
                      batch)
