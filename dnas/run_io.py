"""Run folders: checkpoints, resume checks, logs, signals and compilation, for both loops.

Everything here touches disk, clocks or signals for ``dnas.search_loop`` and
``dnas.train_loop``: checkpoint files written atomically and checked against the state they
fill, a resumed run's folder checked against the config that wrote it (``check_resume``) and
cleaned of what a killed run logged after its checkpoint (``start_clean``), TensorBoard
writers, the progress line, SIGTERM/SIGINT as a flag, and the step compiled (or loaded from a
saved trace, ``dnas.aot``) while the state initialises.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from dnas import aot, genotypes, io, plugins
from dnas.run_config import ConfigError, RESUMABLE_KEYS, TRACE_FREE_KEYS


class CheckpointError(RuntimeError):
  """A checkpoint that does not fit the run resuming it (or is damaged); names the file."""


def trace_key(c: ml_collections.ConfigDict, **extra) -> str:
  """What a step's trace depends on in ``c`` (all but ``TRACE_FREE_KEYS``) and ``extra``, with
  the digest of every plug-in's source (``dnas.plugins.digest``): a saved trace is never reused
  for user code that changed (dnas' own source is in ``dnas.aot``'s key)."""
  flat = traverse_util.flatten_dict(c.to_dict(), sep=".")
  kept = {k: v for k, v in flat.items() if k not in TRACE_FREE_KEYS}
  return json.dumps({**kept, **extra, "plugins": plugins.digest()}, sort_keys=True,
                    default=repr)


def enable_compilation_cache(path: str) -> Optional[str]:
  """Turns on JAX's persistent compilation cache (``"none"`` turns it off); returns its folder."""
  if path == "none":
    return None
  path = path or os.path.join(os.path.expanduser("~"), ".cache", "dnas", "jax")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def summary_writer(workdir: str, step: int = 0):
  """A TensorBoard event writer into ``workdir`` (tensorboardX; TensorFlow is not needed).

  On resume (``step > 0``) TensorBoard is told to purge what an interrupted run wrote after
  the checkpoint's step, so the curves do not fold back on themselves.
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(logdir=workdir, purge_step=step or None, flush_secs=30)


def add_scalars(writer, prefix: str, line: Dict[str, Any], step: int) -> None:
  for k, v in line.items():
    if k not in ("step", "epoch", "split") and isinstance(v, (int, float)):
      writer.add_scalar(f"{prefix}/{k}", v, step)


class Progress:
  """A one-line progress bar on a terminal; silent otherwise (the epoch summary still prints)."""

  def __init__(self, stream=sys.stderr):
    self.stream = stream
    self.tty = stream.isatty()

  def update(self, epoch, i, n, metrics, ips, eta):
    if not self.tty:
      return
    bar = "#" * int(20 * i / n) + "." * (20 - int(20 * i / n))
    figures = "".join(f" {name} {metrics[key]:.3f}" for key, name in
                      (("train_loss", "loss"), ("train_acc", "acc")) if key in metrics)
    speed = f" {ips:.0f} img/s" if ips else ""
    self.stream.write(f"\repoch {epoch} [{bar}] {i}/{n}{figures}{speed} ETA {eta:.0f}s  ")
    self.stream.flush()

  def summary(self, line):
    if self.tty:
      self.stream.write("\r" + " " * 100 + "\r")
    print(line, flush=True)


class Stopper:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._old = {}
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def start_clean(workdir: str, step: int) -> None:
  """Undoes what a killed run wrote after its last checkpoint (at ``step``; 0: none).

  Those steps run again, so their ``metrics.jsonl`` lines would appear twice; and a kill in the
  middle of an atomic write leaves its temporary file (``.NAME.*.tmp``) behind.
  """
  for tmp in glob.glob(os.path.join(workdir, ".*.tmp")) + glob.glob(
      os.path.join(workdir, "plots", ".*.tmp")):
    os.unlink(tmp)
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):  # a line cut short
      pass
  if len(keep) < len(lines):
    io.atomic_write_text(path, "".join(line + "\n" for line in keep))


def check_resume(workdir: str, c: ml_collections.ConfigDict, genotype=None) -> None:
  """Refuses to resume a run under another config or genotype than the one that wrote it.

  Runs before the run writes anything, so the folder's ``config.json``, ``genotype.json`` and
  checkpoint stay as they were. Keys in only one of the two configs (written by another version
  of dnas) are not compared.

  Raises:
    ConfigError: naming every key that differs, with both values.
  """
  if not os.path.exists(os.path.join(workdir, "checkpoint.msgpack")):
    return
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = traverse_util.flatten_dict(json.load(f), sep=".")
    except ValueError as e:
      raise ConfigError(f"{path}: cannot be read ({e}); it records the config of the run this "
                        f"folder resumes, so restore it or choose another --workdir") from e
    new = traverse_util.flatten_dict(json.loads(c.to_json_best_effort()), sep=".")
    diff = [f"config.{k}: {old[k]!r} in {path}, {new[k]!r} now" for k in sorted(old)
            if k in new and k not in RESUMABLE_KEYS and old[k] != new[k]]
    if diff:
      raise ConfigError(
          f"{workdir} holds a checkpoint of a run with another config; resuming it would mix two "
          "runs. " + "; ".join(diff) + ". Resume with the run's values, or choose another "
          "--workdir (only " + ", ".join(sorted(RESUMABLE_KEYS)) + " may change on resume)")
  path = os.path.join(workdir, "genotype.json")
  if genotype is not None and os.path.exists(path):
    try:
      old_g = genotypes.load(path).to_json()
    except (ValueError, genotypes.GenotypeError) as e:
      raise ConfigError(f"{path}: cannot be read ({e}); it records the genotype of the run "
                        f"this folder resumes, so restore it or choose another --workdir") from e
    if old_g != genotype.to_json():
      raise ConfigError(
          f"{workdir} holds a checkpoint of a run that trains another genotype ({path}: "
          f"{json.dumps(old_g)}; now: {json.dumps(genotype.to_json())}); resume with that "
          f"genotype, or choose another --workdir")


def restore_state(template, state_dict, sharding=None):
  """``template`` (arrays or ``jax.ShapeDtypeStruct``s, key included) filled from a checkpoint.

  Every array must have the template's shape and dtype: Flax's ``from_state_dict`` only checks
  the tree's keys, and a wrong-shaped weight would otherwise fail much later, or not at all.
  The arrays are placed with ``sharding`` (``dnas.parallel.replicated``: a copy on every device
  of the run's mesh); None: the default device.
  """
  key_template = jax.eval_shape(jax.random.key_data, template.key)
  template = template._replace(key=key_template)
  state = serialization.from_state_dict(template, state_dict)
  bad = []
  for (where, want), got in zip(jax.tree_util.tree_flatten_with_path(template)[0],
                                jax.tree.leaves(state)):
    got = np.asarray(got)
    if got.shape != tuple(want.shape) or got.dtype != want.dtype:
      bad.append(f"{jax.tree_util.keystr(where)}: {got.dtype}{list(got.shape)} in the file, "
                 f"{np.dtype(want.dtype)}{list(want.shape)} expected")
  if bad:
    raise ValueError("; ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""))
  state = jax.device_put(state, sharding)
  return state._replace(key=jax.random.wrap_key_data(state.key))


def checkpoint_error(path: str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f"{path}: checkpoint cannot be read ({e}). It was written by a run with another model "
      f"(config.model: space, op_set, channels, layers, nodes, scan_inputs must match), or it "
      f"is damaged; resume with that run's config, or delete it to start over")


def save_checkpoint(path: str, state, history: Dict[str, list]) -> None:
  state = state._replace(key=jax.random.key_data(state.key))
  payload = {"state": serialization.to_state_dict(jax.device_get(state)),
             "history": {k: np.asarray(v, np.float32) for k, v in history.items()}}
  io.atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def load_checkpoint(path: str, template, sharding=None) -> Any:
  with open(path, "rb") as f:
    raw = f.read()
  try:
    payload = serialization.msgpack_restore(raw)
    state = restore_state(template, payload["state"], sharding)
    history = {k: [np.asarray(x) for x in v] for k, v in payload["history"].items()}
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoint_error(path, e) from e
  return state, history


def save_train_checkpoint(path, state):
  state = state._replace(key=jax.random.key_data(state.key))
  io.atomic_write_bytes(path, serialization.msgpack_serialize(
      serialization.to_state_dict(jax.device_get(state))))


def load_train_checkpoint(path, template, sharding=None):
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return restore_state(template, serialization.msgpack_restore(raw), sharding)
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoint_error(path, e) from e


def subset(key, n: int, size: int) -> Optional[np.ndarray]:
  """The sorted first ``size`` of a seeded permutation of ``range(n)``, or None for all."""
  if not size:
    return None
  return np.sort(np.asarray(jax.random.permutation(key, n))[:size])


def placed(specs, sharding):
  """``jax.ShapeDtypeStruct``s of ``specs``' shapes and dtypes, laid out with ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      specs)


def init_and_compile(init_trace: aot.Trace, state, total: int, step_fn, examples, *,
                      while_loading: Optional[Any] = None, sharding=None, **compile_kwargs):
  """The run's state and its compiled step, the step compiled or loaded on a second thread.

  XLA compiles and loads without holding Python's lock, so the step's compilation (or its load
  from the caches) overlaps the initialisation. ``state``: a restored state, or None to run
  ``init_trace`` on its example arguments and place the result with ``sharding`` (as the step's
  example state is laid out; None: where the initialiser left it). A finished run (resumed to
  redo its artifacts) gets no step.

  Returns:
    ``(state, step, traced, init_end)``: ``step`` is ``aot.compile_step``'s (None when the run
    has no step left), ``init_end`` the ``time.time()`` at which the state was ready.
  """
  step, traced = None, True
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = None
    if state is None or int(state.step) < total:
      pending = pool.submit(aot.compile_step, step_fn, examples, **compile_kwargs)
    if state is None:
      state = init_trace.compile()(*init_trace.args)
      if sharding is not None:
        state = jax.device_put(state, sharding)
    init_end = time.time()
    if pending is not None:
      if while_loading is not None:
        while_loading()
      step, traced = pending.result()
  return state, step, traced, init_end
