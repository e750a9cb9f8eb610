"""Run folders: checkpoints, resume checks, logs, signals and compilation, for both loops.

Everything here touches disk, clocks or signals for ``dnas.search_loop`` and
``dnas.train_loop`` (checkpoints are ``dnas.checkpoints``): a resumed run's folder checked against the config that wrote it (``check_resume``) and
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
from flax import traverse_util

from dnas import aot, checkpoints, genotypes, io, parallel, plugins
from dnas.run_config import ConfigError, RESUMABLE_KEYS, TRACE_FREE_KEYS


CheckpointError = checkpoints.CheckpointError


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


class _NoWriter:
  """A TensorBoard writer that writes nothing: processes other than a run's writer."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass

  def add_scalar(self, *args, **kwargs):
    pass

  def add_text(self, *args, **kwargs):
    pass


def summary_writer(workdir: str, step: int = 0, enabled: bool = True):
  """A TensorBoard event writer into ``workdir`` (tensorboardX; TensorFlow is not needed).

  On resume (``step > 0``) TensorBoard is told to purge what an interrupted run wrote after
  the checkpoint's step, so the curves do not fold back on themselves. ``enabled=False``: a
  writer that writes nothing (the processes of a multi-process run other than process 0).
  """
  if not enabled:
    return _NoWriter()
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
  if not checkpoints.exists(workdir):
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
    # A stacked state (several seeds, ``dnas.seeds``) holds one equal step per seed.
    if state is None or int(np.ravel(state.step)[0]) < total:
      pending = pool.submit(aot.compile_step, step_fn, examples, **compile_kwargs)
    if state is None:
      state = init_trace.compile()(*init_trace.args)
      if sharding is not None:
        state = parallel.put(state, sharding)
    init_end = time.time()
    if pending is not None:
      if while_loading is not None:
        while_loading()
      step, traced = pending.result()
  return state, step, traced, init_end
