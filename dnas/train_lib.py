"""The loop: the only library code that touches disk, clocks and logs.

``run_search(config, workdir)`` reads a config (see ``experiments/darts_cifar10.py``), loads the
data, builds the supernet, strategy and optimizers, and steps ``make_search_step`` until
``search.epochs`` are done. The run folder holds::

    config.json          the resolved config
    metrics.jsonl        one line per log interval, and at every epoch's end one
                         ``"split": "val"`` line: the whole validation split evaluated with
                         BatchNorm in eval mode (``val_acc``, ``val_loss``, ``n``, genotype)
    checkpoint.msgpack   the whole SearchState, written atomically every few steps and per epoch
    alpha_history.json   softmax(alpha) per epoch, per cell type
    events.out.tfevents.*  TensorBoard scalars, one write per log interval (tensorboardX)
    genotype.json        the derived genotype, updated every epoch
    plots/               the cells (PNG, PDF, DOT) and the op-weight heatmap

Running it again on the same folder resumes from the checkpoint, under the config (and, for
retraining, the genotype) that wrote it: a value that changes the run is refused before anything
is written (``RESUMABLE_KEYS`` may change: paths, logging, checkpoint interval, compiler
settings). Batches are pure functions of ``(seed, step)``, so a resumed run ends where an
uninterrupted one does, bit for bit, however it was stopped (``tests/test_robustness.py`` kills
it). Every file is written atomically; what a killed run logged after its last checkpoint is
dropped on resume and logged again. SIGTERM or SIGINT stops the loop after the current step,
checkpoints, prints how to resume and returns normally (``dnas search`` and ``dnas train`` exit
with status 0).
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import importlib.util
import json
import math
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization, traverse_util

from dnas import data as data_lib
from dnas import aot, compiler, discretize, genotypes, io, plot, search
from dnas.ops import registry, sets
from dnas.spaces import DartsSearchNet, NB201SearchNet
from dnas.data import splits
from dnas import strategies
from dnas.strategies import darts
from dnas.strategies.darts import VIRTUAL_STEPS


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def load_config(path: str, variant: Optional[str] = None) -> ml_collections.ConfigDict:
  """``get_config(variant)`` of the experiment config file at ``path`` (as ``--config`` reads).

  Raises:
    FileNotFoundError: naming ``path``.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if variant is None else module.get_config(variant)


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class CheckpointError(RuntimeError):
  """A checkpoint that does not fit the run resuming it (or is damaged); names the file."""


# Config keys a resumed run may change: where data and caches live, how often it logs,
# checkpoints and evaluates, and compiler settings (XLA's CPU presets give the same step to
# float32 rounding). Any other change would make the resumed run a mix of two runs.
RESUMABLE_KEYS = frozenset({
    "data.path", "data.data_dir", "data.cache_dir", "data.workers", "data.eval_batch_size",
    "log_every_steps", "checkpoint_every_steps", "eval_every_epochs", "max_bad_steps",
    "compilation_cache_dir", "xla_cpu_preset", "xla_cpu_ynn_fusions"})
# Config keys no trace depends on: those above, and the seed, which reaches the initialiser and
# the batches as an argument (a key), never as a constant. So a search repeated under other
# seeds (as DARTS reports its results) loads the first seed's saved traces and executables.
TRACE_FREE_KEYS = RESUMABLE_KEYS | {"seed"}
# Optional `config.model` switches of the supernet's layout (booleans; when a config leaves one
# out, the supernet's default applies).
LAYOUT_KEYS = ("scan_inputs", "remat", "pack")


@jax.jit
def _streak(streak, worst, skipped):
  streak = jnp.where(skipped > 0, streak + 1, 0)
  return streak, jnp.maximum(worst, streak)


OP_SETS = {"darts": sets.DARTS, "nb201": sets.NB201}
# data.split: "seeded" (a seeded permutation, DARTS' train_portion) or "nb201" (NAS-Bench-201's
# published split, where the data come in the order its indices refer to).
SEARCH_SPLITS = ("seeded", "nb201")
SPACES = ("darts", "nb201")


def _check(cond: bool, key: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"config.{key}: {msg}")


def _value(c: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    c = c[part]
  return c


def _int(c, key: str, low: int, why: str = "") -> int:
  """An int (not a bool, not a float) >= ``low``."""
  v = _value(c, key)
  _check(isinstance(v, (int, np.integer)) and not isinstance(v, bool), key,
         f"must be an int, got {v!r}")
  _check(v >= low, key, f"must be >= {low}{why}, got {v}")
  return v


def _real(c, key: str, low: float, high: float = float("inf"), *, low_open: bool = False,
          high_open: bool = True) -> float:
  """A finite number in the interval from ``low`` to ``high``, ends open or closed as told."""
  v = _value(c, key)
  _check(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool), key,
         f"must be a number, got {v!r}")
  ok = math.isfinite(v) and (v > low if low_open else v >= low) and (
      v < high if high_open else v <= high)
  interval = "{}{}, {}{}".format("(" if low_open else "[", low, high, ")" if high_open else "]")
  _check(ok, key, f"must be finite and in {interval}, got {v}")
  return v


def _choice(c, key: str, valid) -> str:
  v = _value(c, key)
  _check(isinstance(v, str) and v in valid, key, f"unknown value {v!r}; valid: {list(valid)}")
  return v


def _type(c, key: str, kind: type, name: str) -> None:
  v = _value(c, key)
  _check(isinstance(v, kind), key, f"must be {name}, got {v!r}")


def _validate_common(c: ml_collections.ConfigDict) -> None:
  _int(c, "seed", -2**63)
  _type(c, "data.name", str, "a string")
  _type(c, "data.path", str, "a string (empty: TFDS)")
  _int(c, "data.batch_size", 1)
  _int(c, "data.train_size", 0)
  _int(c, "data.crop_padding", 0)
  _type(c, "data.flip", bool, "True or False")
  _int(c, "model.channels", 1)
  _int(c, "log_every_steps", 1)
  _int(c, "checkpoint_every_steps", 1)
  _type(c, "compilation_cache_dir", str, "a string (empty: default, 'none': off)")
  if "precision" in c:
    _choice(c, "precision", compiler.PRECISIONS)
  _choice(c, "xla_cpu_preset", sorted(compiler.CPU_PRESETS))
  if "xla_cpu_ynn_fusions" in c:
    _type(c, "xla_cpu_ynn_fusions", bool, "True or False")


def _tfds_name(c: ml_collections.ConfigDict, valid, what: str) -> None:
  """Without ``data.path``, ``data.name`` must be a TFDS dataset the input path can read."""
  if not c.data.path:
    _check(c.data.name in valid, "data.name",
           f"unknown {what} {c.data.name!r}; valid: {list(valid)}, or set data.path to a "
           f"local archive or folder")


def validate_search_config(c: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the key, on values no search can run with (wrong types included)."""
  _validate_common(c)
  _tfds_name(c, data_lib.TFDS_NAMES, "dataset")
  _real(c, "data.train_portion", 0.0, 1.0, low_open=True)
  if "split" in c.data:
    split = _choice(c, "data.split", SEARCH_SPLITS)
    _check(split != "nb201" or c.data.train_portion == 0.5, "data.train_portion",
           f"must be 0.5 with data.split='nb201' (NAS-Bench-201's halves), got "
           f"{c.data.train_portion}")
  if "eval_batch_size" in c.data:
    _int(c, "data.eval_batch_size", 1)
  space = _choice(c, "model.space", SPACES)
  _choice(c, "model.op_set", sorted(OP_SETS))
  _int(c, "model.nodes", 1)
  if space == "darts":
    _int(c, "model.layers", 3, " (the DARTS space needs two reductions and a normal cell)")
  else:
    _int(c, "model.layers", 1)
  for key in LAYOUT_KEYS:
    if key in c.model:
      _type(c, f"model.{key}", bool, "True or False")
  order = _int(c, "search.order", 1)
  _check(order <= 2, "search.order", f"must be 1 or 2, got {order}")
  _choice(c, "search.hessian", ("exact", "finite_difference"))
  if "virtual_step" in c.search:
    _choice(c, "search.virtual_step", VIRTUAL_STEPS)
  if "update_order" in c.search:
    _choice(c, "search.update_order", search.UPDATE_ORDERS)
  _int(c, "search.epochs", 1)
  _real(c, "search.learning_rate", 0.0, low_open=True)
  _real(c, "search.min_learning_rate", 0.0)
  _real(c, "search.momentum", 0.0, 1.0)
  if "nesterov" in c.search:
    _type(c, "search.nesterov", bool, "True or False")
  _real(c, "search.weight_decay", 0.0)
  _real(c, "search.grad_clip", 0.0)  # 0: no clipping
  _real(c, "search.arch_learning_rate", 0.0, low_open=True)
  _real(c, "search.arch_weight_decay", 0.0)
  _int(c, "max_bad_steps", 1)


def _trace_key(c: ml_collections.ConfigDict, **extra) -> str:
  """What a step's trace depends on in ``c`` (all but ``TRACE_FREE_KEYS``) and ``extra``."""
  flat = traverse_util.flatten_dict(c.to_dict(), sep=".")
  kept = {k: v for k, v in flat.items() if k not in TRACE_FREE_KEYS}
  return json.dumps({**kept, **extra}, sort_keys=True, default=repr)


def _builtin_ops(names) -> bool:
  """Whether every op named is built by ``dnas``'s own code (its source is in the key of a saved
  trace; a user's op is not, so a changed op would not be noticed)."""
  return all(getattr(registry.get(name), "__module__", "").startswith("dnas.") for name in names)


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


def _add_scalars(writer, prefix: str, line: Dict[str, Any], step: int) -> None:
  for k, v in line.items():
    if k not in ("step", "epoch", "split") and isinstance(v, (int, float)):
      writer.add_scalar(f"{prefix}/{k}", v, step)


def search_weight_optimizer(c: ml_collections.ConfigDict, total_steps: int):
  """``search.darts_weight_optimizer``, with Nesterov momentum if ``search.nesterov``.

  NAS-Bench-201's DARTS runs use Nesterov SGD (``configs/nas-benchmark/algos/DARTS.config``).
  """
  s = c.search
  tx, schedule = search.darts_weight_optimizer(
      s.learning_rate, s.min_learning_rate, total_steps, s.momentum, s.weight_decay,
      s.grad_clip)
  if s.get("nesterov", False):
    tx = optax.chain(
        optax.clip_by_global_norm(s.grad_clip) if s.grad_clip else optax.identity(),
        optax.add_decayed_weights(s.weight_decay),
        optax.sgd(schedule, momentum=s.momentum, nesterov=True))
  return tx, schedule


def make_strategy(c: ml_collections.ConfigDict, schedule):
  """The strategy ``config.search`` describes; ``schedule``: the weight learning rate's."""
  s = c.search
  return darts(order=s.order, hessian=s.hessian, learning_rate=schedule,
               virtual_step=s.get("virtual_step", "paper"), momentum=s.momentum,
               weight_decay=s.weight_decay)


def search_indices(c: ml_collections.ConfigDict, n: int):
  """The search's ``(train_idx, val_idx, description)`` for ``n`` training examples.

  ``data.split="nb201"`` takes NAS-Bench-201's published halves (``dnas.data.splits``) when the
  data are the whole CIFAR training set in its original order (TFDS' ``cifar10``/``cifar100``,
  read without ``data.path`` or ``data.train_size``); otherwise, as for ``"seeded"``, a seeded
  permutation split by ``data.train_portion``. ``description`` says which, and why.
  """
  want = c.data.get("split", "seeded")
  if want == "nb201":
    why = None
    if c.data.path:
      why = (f"data.path={c.data.path!r} is a local copy, whose image order is not CIFAR's "
             f"original one")
    elif c.data.name not in splits.NB201_DATASETS:
      why = f"data.name={c.data.name!r} is not one of {list(splits.NB201_DATASETS)}"
    elif c.data.train_size:
      why = f"data.train_size={c.data.train_size} takes a subset"
    elif n != splits.NB201_CIFAR_SIZE:
      why = f"the training set has {n} images, not {splits.NB201_CIFAR_SIZE}"
    if why is None:
      tr, va = splits.nb201_cifar_split()
      return tr, va, (f"nb201 (NAS-Bench-201's cifar-split.txt: {len(tr)} weight-training / "
                      f"{len(va)} validation images)")
  tr, va = data_lib.search_split(n, c.data.train_portion, c.seed)
  desc = (f"seeded (seed {c.seed}, train_portion {c.data.train_portion}: {len(tr)} "
          f"weight-training / {len(va)} validation images)")
  if want == "nb201":
    desc += f"; NAS-Bench-201's split needs TFDS' CIFAR in its original order, but {why}"
  return tr, va, desc


def build_search_model(c: ml_collections.ConfigDict, num_classes: int):
  op_set = OP_SETS[c.model.op_set]
  layout = {k: c.model[k] for k in LAYOUT_KEYS if k in c.model}
  if c.model.space == "darts":
    return DartsSearchNet(num_classes=num_classes, channels=c.model.channels,
                          layers=c.model.layers, nodes=c.model.nodes,
                          multiplier=c.model.nodes, op_set=op_set, **layout)
  return NB201SearchNet(num_classes=num_classes, channels=c.model.channels,
                        cells_per_stage=c.model.layers, nodes=c.model.nodes, op_set=op_set,
                        **layout)


class _Progress:
  """A one-line progress bar on a terminal; silent otherwise (the epoch summary still prints)."""

  def __init__(self, stream=sys.stderr):
    self.stream = stream
    self.tty = stream.isatty()

  def update(self, epoch, i, n, metrics, ips, eta):
    if not self.tty:
      return
    bar = "#" * int(20 * i / n) + "." * (20 - int(20 * i / n))
    self.stream.write(f"\repoch {epoch} [{bar}] {i}/{n} loss {metrics.get('train_loss', 0):.3f}"
                      f" acc {metrics.get('train_acc', 0):.3f} {ips:.0f} img/s ETA {eta:.0f}s  ")
    self.stream.flush()

  def summary(self, line):
    if self.tty:
      self.stream.write("\r" + " " * 100 + "\r")
    print(line, flush=True)


class _Stopper:
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


def _start_clean(workdir: str, step: int) -> None:
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


def _check_resume(workdir: str, c: ml_collections.ConfigDict, genotype=None) -> None:
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


def _restore_state(template, state_dict):
  """``template`` (arrays or ``jax.ShapeDtypeStruct``s, key included) filled from a checkpoint.

  Every array must have the template's shape and dtype: Flax's ``from_state_dict`` only checks
  the tree's keys, and a wrong-shaped weight would otherwise fail much later, or not at all.
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
  state = jax.device_put(state)
  return state._replace(key=jax.random.wrap_key_data(state.key))


def _checkpoint_error(path: str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f"{path}: checkpoint cannot be read ({e}). It was written by a run with another model "
      f"(config.model: space, op_set, channels, layers, nodes, scan_inputs must match), or it "
      f"is damaged; resume with that run's config, or delete it to start over")


def _save_checkpoint(path: str, state, history: Dict[str, list]) -> None:
  state = state._replace(key=jax.random.key_data(state.key))
  payload = {"state": serialization.to_state_dict(jax.device_get(state)),
             "history": {k: np.asarray(v, np.float32) for k, v in history.items()}}
  io.atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _load_checkpoint(path: str, template) -> Any:
  with open(path, "rb") as f:
    raw = f.read()
  try:
    payload = serialization.msgpack_restore(raw)
    state = _restore_state(template, payload["state"])
    history = {k: [np.asarray(x) for x in v] for k, v in payload["history"].items()}
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(path, e) from e
  return state, history


def _write_artifacts(workdir, model, op_weights, history, op_set):
  g = discretize.derive(model, op_weights)
  genotypes.save(g, os.path.join(workdir, "genotype.json"))
  io.atomic_write_json(os.path.join(workdir, "alpha_history.json"),
                       {"ops": list(op_set.ops),
                        "epochs": {k: np.asarray(v).tolist() for k, v in history.items()}})
  return g


def draw(workdir: str) -> list:
  """Draws a run folder's genotype and alpha history into ``workdir/plots``."""
  g = genotypes.load(os.path.join(workdir, "genotype.json"))
  out = os.path.join(workdir, "plots")
  files = plot.draw_genotype(g, out, stem="genotype")
  hist_path = os.path.join(workdir, "alpha_history.json")
  if os.path.exists(hist_path):
    with open(hist_path) as f:
      h = json.load(f)
    hist = {k: np.asarray(v) for k, v in h["epochs"].items() if len(v)}
    nb201 = isinstance(g, genotypes.NB201Genotype)
    # Edges as "node<-source", numbered as the genotype's nodes (DARTS' inputs are 0 and 1).
    first = 1 if nb201 else 2
    labels = [f"{first + i}<-{src}" for i in range(len(g.nodes) if nb201 else g.nodes)
              for src in range(first + i)]
    if hist:
      if any(v.shape[1] != len(labels) for v in hist.values()):
        labels = None
      for ext in ("png", "pdf"):
        files.append(plot.draw_alpha_history(hist, h["ops"],
                                             os.path.join(out, f"alpha_history.{ext}"),
                                             edge_labels=labels, none_competes=nb201))
  return files


def run_search(config: ml_collections.ConfigDict, workdir: str,
               stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """Runs (or resumes) a search; returns the final metrics and genotype.

  Args:
    config: a search config (``experiments/darts_cifar10.py``).
    workdir: the run folder; an existing checkpoint there is resumed.
    stop_after_steps: stop (checkpointing) once the global step reaches this; for tests.

  Returns:
    ``{"genotype": ..., "step": ..., "val_acc": ...}`` (``val_acc``: the last evaluation of the
    whole validation split); a run stopped early (checkpointed), ``{"step": ..., "stopped":
    True, "signal": ...}`` (the signal's number, or None).
  """
  validate_search_config(config)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _run_search(config, workdir, stop_after_steps)


def _run_search(config: ml_collections.ConfigDict, workdir: str,
                stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  # XLA's process flags, as `dnas search` sets them: effective only if JAX has not started.
  compiler.low_memory_schedule()
  compiler.no_triton_gemm()
  c = config
  validate_search_config(c)
  os.makedirs(workdir, exist_ok=True)
  _check_resume(workdir, c)
  cache_dir = enable_compilation_cache(c.compilation_cache_dir)
  io.atomic_write_text(os.path.join(workdir, "config.json"), c.to_json_best_effort(indent=2))

  ds = data_lib.load(c.data.name, path=c.data.path or None, data_dir=c.data.data_dir or None,
                     cache_dir=c.data.cache_dir or None)
  images, labels = ds.train_images, ds.train_labels
  # A seeded random subset: archives list their images class by class.
  keep = _subset(jax.random.fold_in(jax.random.key(c.seed), 1), len(labels), c.data.train_size)
  if keep is not None:
    images, labels = images[keep], labels[keep]
  tr_idx, va_idx, split_desc = search_indices(c, len(labels))
  print(f"data split: {split_desc}", flush=True)
  data_split = split_desc.split(" ", 1)[0]
  train = data_lib.to_device(images[tr_idx], labels[tr_idx])
  val = data_lib.to_device(images[va_idx], labels[va_idx])
  bs = c.data.batch_size
  spe = data_lib.steps_per_epoch(min(len(tr_idx), len(va_idx)), bs)
  total = spe * c.search.epochs

  model = build_search_model(c, ds.num_classes)
  op_set = OP_SETS[c.model.op_set]
  weight_tx, schedule = search_weight_optimizer(c, total)
  arch_tx = search.darts_arch_optimizer(c.search.arch_learning_rate,
                                        weight_decay=c.search.arch_weight_decay)
  strategy = make_strategy(c, schedule)
  key = jax.random.key(c.seed)
  init_key, train_key, val_key = jax.random.split(key, 3)

  t0 = time.time()
  preset = c.xla_cpu_preset
  ynn = c.get("xla_cpu_ynn_fusions", False)
  # Saved traces (dnas.aot) live next to XLA's cache, keyed on the config and the step count.
  traces = cache_dir if _builtin_ops(op_set.ops) else None
  trace_key = _trace_key(c, total=total, num_classes=ds.num_classes)
  init = functools.partial(search.init_search_state, model, strategy, weight_tx, arch_tx,
                           sample_images=jnp.zeros((2,) + images.shape[1:]))
  # The state's shapes come from the initialiser's trace (a saved one needs no tracing).
  init_trace = aot.trace(init, (init_key,), cache_dir=traces, key="search_init\n" + trace_key,
                         cpu_preset=preset, ynn_fusions=ynn)
  ckpt = os.path.join(workdir, "checkpoint.msgpack")
  state, history = None, None
  if os.path.exists(ckpt):  # the checkpoint holds every array
    state, history = _load_checkpoint(ckpt, init_trace.out_specs)
    print(f"resuming {workdir} from step {int(state.step)}", flush=True)
  sharding = data_lib.batch_sharding(bs)
  batch_fn = jax.jit(functools.partial(
      data_lib.get_batch, batch_size=bs, mean=ds.mean, std=ds.std,
      crop_padding=c.data.crop_padding, flip=c.data.flip, sharding=sharding))
  mix = jax.jit(functools.partial(strategies.derive_weights, strategy))
  step_fn = search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False,
                                    update_order=c.search.get("update_order", "arch_first"))
  batch_spec = _placed(jax.eval_shape(batch_fn, train, train_key, 0), sharding)
  examples = (init_trace.out_specs, batch_spec, batch_spec)
  tc = time.time()
  state, step_fn, traced, init_end = _init_and_compile(
      init_trace, state, total, step_fn, examples, cache_dir=traces,
      key="search_step\n" + trace_key, cpu_preset=preset, ynn_fusions=ynn, donate_argnums=(0,),
      while_loading=lambda: batch_fn(train, train_key, 0))  # compiles the batch function
  if history is None:  # a new run
    history = {k: [] for k in state.arch}
  _start_clean(workdir, int(state.step))
  init_s, compile_s = init_end - t0, None
  if step_fn is not None:
    compile_s = time.time() - tc
    print(f"init {init_s:.1f}s, compile {compile_s:.1f}s (alongside init)"
          f"{'' if traced else ' (saved trace)'}, {total} steps ({spe} per epoch)", flush=True)

  eval_step = search.make_eval_step(model, strategy, cpu_preset=preset)
  val_images, val_labels = images[va_idx], labels[va_idx]
  ebs = c.data.get("eval_batch_size", bs)

  def evaluate(state):
    """The whole validation split, unaugmented, BatchNorm in eval mode."""
    t = time.time()
    tot = None
    for b in data_lib.eval_batches(val_images, val_labels, ebs, ds.mean, ds.std, pad=True):
      m = eval_step(state, b)
      tot = m if tot is None else jax.tree.map(jnp.add, tot, m)
    tot = jax.device_get(tot)
    n = int(tot["n"])
    return {"val_acc": float(tot["correct"]) / n, "val_loss": float(tot["loss_sum"]) / n, "n": n,
            "eval_s": round(time.time() - t, 3)}

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  progress = _Progress()
  step = int(state.step)
  acc, acc_n = None, 0
  streak = worst = jnp.zeros((), jnp.int32)
  t_log, n_log = time.time(), 0
  last, last_val = {}, {}
  with _Stopper() as stopper, open(metrics_path, "a") as mfile, \
      summary_writer(workdir, step) as tb:
    while step < total:
      bt = batch_fn(train, train_key, step)
      bv = batch_fn(val, val_key, step)
      state, m = step_fn(state, bt, bv)
      step += 1
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      streak, worst = _streak(streak, worst, m["skipped"])
      acc_n += 1
      n_log += 1
      epoch_end = step % spe == 0
      if step % c.log_every_steps == 0 or epoch_end or step == total:
        host, worst_host = jax.device_get((acc, worst))
        skipped = int(host.pop("skipped"))
        host = {k: float(v) / acc_n for k, v in host.items()}
        host["skipped_steps"] = skipped
        if skipped:
          print(f"warning: {skipped} of steps {step - acc_n + 1}..{step} had a non-finite loss "
                f"or gradient and were skipped", file=sys.stderr, flush=True)
        if int(worst_host) >= c.max_bad_steps:
          raise NonFiniteError(
              f"{int(worst_host)} consecutive steps (up to step {step}) had a non-finite loss or "
              f"gradient (config.max_bad_steps={c.max_bad_steps}); stopping. The last good "
              f"checkpoint is {ckpt}; lower the learning rates or check the data, then run the "
              f"same command to resume.")
        worst = jnp.zeros((), jnp.int32)
        dt = time.time() - t_log
        ips = n_log * bs * 2 / max(dt, 1e-9)
        epoch = (step - 1) // spe
        last = dict(step=step, epoch=epoch, **host, learning_rate=float(schedule(step)),
                    images_per_s=ips)
        mfile.write(json.dumps(last) + "\n")
        mfile.flush()
        _add_scalars(tb, "search", last, step)
        eta = (total - step) * dt / max(n_log, 1)
        progress.update(epoch, step - epoch * spe, spe, host, ips, eta)
        acc, acc_n, t_log, n_log = None, 0, time.time(), 0
      if epoch_end:
        w = jax.device_get(mix(state.arch, state.strategy_state))
        for k in history:
          history[k].append(np.asarray(w[k]))
        g = _write_artifacts(workdir, model, w, history, op_set)
        # NAS-Bench-201's valid_func (exps/algos/DARTS-V1.py) after every epoch; the line goes
        # before the checkpoint, so a run killed in between logs it again on resume.
        last_val = {"split": "val", "epoch": epoch, "step": step, **evaluate(state),
                    "genotype": g.to_json(), "data_split": data_split}
        mfile.write(json.dumps(last_val) + "\n")
        mfile.flush()
        _add_scalars(tb, "val", last_val, step)
        _save_checkpoint(ckpt, state, history)
        progress.summary(f"epoch {step // spe}/{c.search.epochs} step {step} "
                         f"train_loss {last['train_loss']:.4f} train_acc {last['train_acc']:.3f} "
                         f"val_loss {last_val['val_loss']:.4f} val_acc {last_val['val_acc']:.4f} "
                         f"genotype {json.dumps(g.to_json())}")
      elif step % c.checkpoint_every_steps == 0:
        _save_checkpoint(ckpt, state, history)
      if stopper.signal is not None or (stop_after_steps and step >= stop_after_steps):
        _save_checkpoint(ckpt, state, history)
        if stopper.signal is not None:
          print(f"stopped by signal {stopper.signal} at step {step}; run the same command again "
                f"to resume from {ckpt}", flush=True)
        return {"step": step, "stopped": True, "signal": stopper.signal}

  w = jax.device_get(mix(state.arch, state.strategy_state))
  g = _write_artifacts(workdir, model, w, history, op_set)
  draw(workdir)
  return {"step": step, "genotype": g.to_json(), "val_acc": last_val.get("val_acc"),
          "compile_s": compile_s, "init_s": init_s,
          "op_weights": {k: np.asarray(v) for k, v in w.items()}}


# --------------------------------------------------------------------------------------------
# Retraining a genotype from scratch.

TRAIN_SPACES = ("darts_cifar", "darts_imagenet", "nb201")
OPTIMIZERS = ("darts_cifar", "darts_imagenet", "nb201")


def validate_train_config(c: ml_collections.ConfigDict, genotype) -> None:
  """Fails fast, naming the key, on values no retraining can run with (wrong types included)."""
  _validate_common(c)
  _int(c, "data.eval_batch_size", 1)
  _int(c, "data.test_size", 0)
  _int(c, "data.cutout", 0)
  if "streaming" in c.data:
    _type(c, "data.streaming", bool, "True or False")
    _int(c, "data.image_size", 0)
    _int(c, "data.workers", 1)
    for key in ("mean", "std"):
      value = c.data[key]
      _check(isinstance(value, (tuple, list)) and len(value) in (0, 1, 3)
             and all(isinstance(v, (int, float)) for v in value), f"data.{key}",
             "must be () (estimated from the training images) or one number per channel")
    _check(all(float(v) > 0 for v in c.data.std), "data.std", "must be positive")
    _check(bool(len(c.data.mean)) == bool(len(c.data.std)), "data.mean",
           "data.mean and data.std are given together, or both () to estimate both")
    if c.data.image_size and not c.data.streaming:
      raise ConfigError("data.image_size: resizing is done by the streaming pipeline only; set "
                        "data.streaming=True, or data.image_size=0")
  if c.data.get("streaming", False):
    from dnas.data import stream  # pylint: disable=g-import-not-at-top
    _tfds_name(c, stream.TFDS_STREAM_NAMES, "streamed dataset")
  else:
    _tfds_name(c, data_lib.TFDS_NAMES, "dataset")
  space = _choice(c, "model.space", TRAIN_SPACES)
  if space == "nb201":
    _int(c, "model.layers", 1)
  else:
    _int(c, "model.layers", 3, " (two reductions and a normal cell)")
  _type(c, "model.auxiliary", bool, "True or False")
  _int(c, "train.epochs", 1)
  _choice(c, "train.optimizer", OPTIMIZERS)
  _real(c, "train.learning_rate", 0.0, low_open=True)
  _real(c, "train.min_learning_rate", 0.0)
  if "lr_decay_rate" in c.train:
    _real(c, "train.lr_decay_rate", 0.0, 1.0, low_open=True, high_open=False)
  _real(c, "train.momentum", 0.0, 1.0)
  _real(c, "train.weight_decay", 0.0)
  _real(c, "train.grad_clip", 0.0)  # 0: no clipping
  _type(c, "train.nesterov", bool, "True or False")
  _real(c, "train.aux_weight", 0.0)
  _real(c, "train.drop_path_prob", 0.0, 1.0)
  _real(c, "train.label_smoothing", 0.0, 1.0)
  _choice(c, "train.compute_dtype", ("auto", "float32", "bfloat16"))
  _int(c, "eval_every_epochs", 1)
  want = "nb201" if space == "nb201" else "darts"
  if genotype.space != want:
    raise ConfigError(f"genotype is of the {genotype.space!r} space but config.model.space="
                      f"{c.model.space!r} builds a {want!r}-space network")


def build_train_model(c: ml_collections.ConfigDict, genotype, num_classes: int):
  from dnas import eval_net  # pylint: disable=g-import-not-at-top
  if c.model.space == "darts_cifar":
    return eval_net.CifarNetwork(genotype, num_classes=num_classes, channels=c.model.channels,
                                 layers=c.model.layers, auxiliary=c.model.auxiliary)
  if c.model.space == "darts_imagenet":
    return eval_net.ImageNetNetwork(genotype, num_classes=num_classes,
                                    channels=c.model.channels, layers=c.model.layers,
                                    auxiliary=c.model.auxiliary)
  return eval_net.NB201Network(genotype, num_classes=num_classes, channels=c.model.channels,
                               cells_per_stage=c.model.layers)


def train_optimizer(c, total_steps, steps_per_epoch):
  """The retraining optimizer ``train.optimizer`` names and its learning-rate schedule."""
  from dnas import retrain  # pylint: disable=g-import-not-at-top
  t = c.train
  kw = dict(learning_rate=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
            grad_clip=t.grad_clip or None, nesterov=t.nesterov)
  if t.optimizer == "darts_imagenet":
    decay = t.get("lr_decay_rate", 0.97)
    return (retrain.darts_imagenet_optimizer(steps_per_epoch, decay_rate=decay, **kw),
            retrain.darts_imagenet_schedule(steps_per_epoch, t.learning_rate, decay))
  fn = retrain.darts_cifar_optimizer if t.optimizer == "darts_cifar" else retrain.nb201_optimizer
  return (fn(total_steps, min_learning_rate=t.min_learning_rate, **kw),
          retrain.cosine_schedule(total_steps, t.learning_rate, t.min_learning_rate))


def compute_dtype(name: str):
  """``train.compute_dtype`` as a dtype: ``auto`` is float32 on the CPU, bfloat16 elsewhere."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _save_train_checkpoint(path, state):
  state = state._replace(key=jax.random.key_data(state.key))
  io.atomic_write_bytes(path, serialization.msgpack_serialize(
      serialization.to_state_dict(jax.device_get(state))))


def _load_train_checkpoint(path, template):
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return _restore_state(template, serialization.msgpack_restore(raw))
  except Exception as e:  # pylint: disable=broad-except
    raise _checkpoint_error(path, e) from e


def _subset(key, n: int, size: int) -> Optional[np.ndarray]:
  """The sorted first ``size`` of a seeded permutation of ``range(n)``, or None for all."""
  if not size:
    return None
  return np.sort(np.asarray(jax.random.permutation(key, n))[:size])


def _placed(specs, sharding):
  """``jax.ShapeDtypeStruct``s of ``specs``' shapes and dtypes, laid out with ``sharding``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      specs)


def _init_and_compile(init_trace: aot.Trace, state, total: int, step_fn, examples, *,
                      while_loading: Optional[Any] = None, **compile_kwargs):
  """The run's state and its compiled step, the step compiled or loaded on a second thread.

  XLA compiles and loads without holding Python's lock, so the step's compilation (or its load
  from the caches) overlaps the initialisation. ``state``: a restored state, or None to run
  ``init_trace`` on its example arguments. A finished run (resumed to redo its artifacts) gets
  no step.

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
    init_end = time.time()
    if pending is not None:
      if while_loading is not None:
        while_loading()
      step, traced = pending.result()
  return state, step, traced, init_end


class _MemoryFeed:
  """Retraining data held on the device: batches drawn and augmented inside jit."""

  def __init__(self, c, sub_key, data_key):
    ds = data_lib.load(c.data.name, path=c.data.path or None, data_dir=c.data.data_dir or None,
                       cache_dir=c.data.cache_dir or None)
    images, labels = ds.train_images, ds.train_labels
    keep = _subset(sub_key, len(labels), c.data.train_size)
    if keep is not None:
      images, labels = images[keep], labels[keep]
    self.test_images, self.test_labels = ds.test_images, ds.test_labels
    keep = _subset(jax.random.fold_in(sub_key, 1), len(self.test_labels), c.data.test_size)
    if keep is not None:
      self.test_images, self.test_labels = self.test_images[keep], self.test_labels[keep]
    self.n_train, self.num_classes = len(labels), ds.num_classes
    self.image_shape = tuple(images.shape[1:])
    self.mean, self.std, self.eval_batch_size = ds.mean, ds.std, c.data.eval_batch_size
    self.train = data_lib.to_device(images, labels)
    self.data_key = data_key
    self.sharding = data_lib.batch_sharding(c.data.batch_size)
    self.batch_fn = jax.jit(functools.partial(
        data_lib.get_batch, batch_size=c.data.batch_size, mean=ds.mean, std=ds.std,
        crop_padding=c.data.crop_padding, flip=c.data.flip, cutout=c.data.cutout,
        sharding=self.sharding))

  def train_batch(self, step: int):
    return self.batch_fn(self.train, self.data_key, step)

  def batch_spec(self):
    """Shapes, dtypes and sharding of ``train_batch``'s batches, computing none."""
    return _placed(jax.eval_shape(self.batch_fn, self.train, self.data_key, 0), self.sharding)

  def test_batches(self):
    return data_lib.eval_batches(self.test_images, self.test_labels, self.eval_batch_size,
                                 self.mean, self.std)


class _StreamFeed:
  """Retraining data read from disk a batch at a time (``data.streaming=True``).

  Host threads decode (and for ``data.image_size`` crop and resize) each batch; a background
  thread copies the next batches to the device; crop-from-padding, flip, normalisation and
  cutout run in jit as in ``_MemoryFeed``. Batch ``s`` depends only on the seed and ``s``, so a
  resumed run reads the batches an uninterrupted one would.
  """

  def __init__(self, c, sub_key, data_key):
    from dnas.data import stream  # pylint: disable=g-import-not-at-top
    self.stream = stream
    if c.data.path:
      self.train_src, self.test_src = stream.open_local(c.data.path)
    else:
      self.train_src, self.test_src = stream.open_tfds(c.data.name, c.data.data_dir or None)
    self.c = c
    self.num_classes = len(self.train_src.class_names)
    self.train_idx = _subset(sub_key, len(self.train_src), c.data.train_size)
    self.test_idx = _subset(jax.random.fold_in(sub_key, 1), len(self.test_src),
                            c.data.test_size)
    self.n_train = len(self.train_src) if self.train_idx is None else len(self.train_idx)
    size = c.data.image_size
    first = self.train_src.read(0)[0]
    self.image_shape = (size, size, 3) if size else tuple(first.shape)
    if len(c.data.mean):
      self.mean = np.broadcast_to(np.asarray(c.data.mean, np.float32), self.image_shape[-1:])
      self.std = np.broadcast_to(np.asarray(c.data.std, np.float32), self.image_shape[-1:])
    else:
      self.mean, self.std = stream.estimate_stats(self.train_src, image_size=size, seed=c.seed)
    self.data_key = data_key
    self.sharding = data_lib.batch_sharding(c.data.batch_size)
    self.augment = jax.jit(functools.partial(
        data_lib.augment, mean=self.mean, std=self.std, crop_padding=c.data.crop_padding,
        flip=c.data.flip, cutout=c.data.cutout, sharding=self.sharding))
    self.normalize = jax.jit(functools.partial(data_lib.normalize, mean=self.mean,
                                               std=self.std))
    self._it, self._next_step = None, None
    self.total_steps = None  # set by the caller: the stream then ends with the run

  def train_batch(self, step: int):
    if self._it is None or step != self._next_step:
      batches = self.stream.train_batches(
          self.train_src, self.c.data.batch_size, seed=self.c.seed, start_step=step,
          num_steps=(self.total_steps - step) if self.total_steps else None,
          image_size=self.c.data.image_size, workers=self.c.data.workers, indices=self.train_idx)
      self._it = self.stream.prefetch_to_device(batches, 2, self.sharding)
    images, labels = next(self._it)
    self._next_step = step + 1
    return self.augment(images, labels, self.data_key, step)

  def batch_spec(self):
    """Shapes, dtypes and sharding of ``train_batch``'s batches, reading none."""
    bs = self.c.data.batch_size
    host = (jax.ShapeDtypeStruct((bs,) + self.image_shape, jnp.uint8),  # stream.train_batches'
            jax.ShapeDtypeStruct((bs,), jnp.int32))
    return _placed(jax.eval_shape(self.augment, *host, self.data_key, 0), self.sharding)

  def test_batches(self):
    batches = self.stream.test_batches(self.test_src, self.c.data.eval_batch_size,
                                       image_size=self.c.data.image_size,
                                       workers=self.c.data.workers, indices=self.test_idx)
    for images, labels in self.stream.prefetch_to_device(batches, 2):
      yield {"image": self.normalize(images), "label": labels}


def run_train(config: ml_collections.ConfigDict, genotype, workdir: str,
              stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """Trains ``genotype``'s network from scratch (or resumes); returns the final metrics.

  Writes ``config.json``, ``genotype.json``, ``metrics.jsonl`` (training lines and one
  ``"split": "test"`` line per evaluation), TensorBoard event files (the same scalars),
  ``checkpoint.msgpack`` and, at the end, ``final_metrics.json`` to ``workdir``. A run stopped
  early (checkpointed) returns ``{"step": ..., "stopped": True, "signal": ...}`` (the signal's
  number, or None). Matmuls and convolutions run at ``config.precision``.
  """
  validate_train_config(config, genotype)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _run_train(config, genotype, workdir, stop_after_steps)


def _run_train(config: ml_collections.ConfigDict, genotype, workdir: str,
               stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """``run_train``'s body, at the config's precision."""
  from dnas import retrain  # pylint: disable=g-import-not-at-top
  compiler.no_triton_gemm()  # as `dnas train` sets it: effective only if JAX has not started
  c = config
  validate_train_config(c, genotype)
  os.makedirs(workdir, exist_ok=True)
  _check_resume(workdir, c, genotype)
  cache_dir = enable_compilation_cache(c.compilation_cache_dir)
  io.atomic_write_text(os.path.join(workdir, "config.json"), c.to_json_best_effort(indent=2))
  genotypes.save(genotype, os.path.join(workdir, "genotype.json"))

  key = jax.random.key(c.seed)
  init_key, data_key, sub_key = jax.random.split(key, 3)
  bs = c.data.batch_size
  if c.data.get("streaming", False):
    feed = _StreamFeed(c, sub_key, data_key)
  else:
    feed = _MemoryFeed(c, sub_key, data_key)
  spe = data_lib.steps_per_epoch(feed.n_train, bs)
  total = spe * c.train.epochs
  feed.total_steps = total

  model = build_train_model(c, genotype, feed.num_classes)
  dtype = compute_dtype(c.train.compute_dtype)
  tx, schedule = train_optimizer(c, total, spe)
  t0 = time.time()
  ynn = c.get("xla_cpu_ynn_fusions", True)
  traces = cache_dir if _builtin_ops(genotype.ops) else None
  trace_key = _trace_key(c, total=total, num_classes=feed.num_classes,
                         genotype=genotype.to_json())
  init = functools.partial(retrain.init_train_state, model, tx,
                           sample_images=jnp.zeros((2,) + feed.image_shape), jit=False)
  init_trace = aot.trace(init, (init_key,), cache_dir=traces,
                         key="train_init\n" + trace_key, cpu_preset=c.xla_cpu_preset,
                         ynn_fusions=ynn)
  ckpt = os.path.join(workdir, "checkpoint.msgpack")
  state = None
  if os.path.exists(ckpt):  # shapes only: the checkpoint holds every array
    state = _load_train_checkpoint(ckpt, init_trace.out_specs)
    print(f"resuming {workdir} from step {int(state.step)}", flush=True)
  train_step = retrain.make_train_step(model, tx, aux_weight=c.train.aux_weight,
                                       label_smoothing=c.train.label_smoothing,
                                       compute_dtype=dtype, jit=False)
  dpp_spec = _placed(jax.ShapeDtypeStruct((), jnp.float32),
                     jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  examples = (init_trace.out_specs, feed.batch_spec(), dpp_spec)
  state, compiled, _, init_end = _init_and_compile(
      init_trace, state, total, train_step, examples, cache_dir=traces,
      key="train_step\n" + trace_key, cpu_preset=c.xla_cpu_preset, ynn_fusions=ynn,
      donate_argnums=(0,))
  _start_clean(workdir, int(state.step))
  init_s = init_end - t0
  eval_step = retrain.make_eval_step(model, compute_dtype=dtype, cpu_preset=c.xla_cpu_preset)

  def evaluate():
    tot = None
    for b in feed.test_batches():
      m = eval_step(state, b)
      tot = m if tot is None else jax.tree.map(jnp.add, tot, m)
    tot = jax.device_get(tot)
    return {"test_loss": float(tot["loss"]) / float(tot["n"]),
            "test_acc": float(tot["correct"]) / float(tot["n"])}

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  progress = _Progress()
  step = int(state.step)
  acc, acc_n, t_log, n_log, last = None, 0, time.time(), 0, {}
  with _Stopper() as stopper, open(metrics_path, "a") as mfile, \
      summary_writer(workdir, step) as tb:
    while step < total:
      epoch = step // spe
      dpp = c.train.drop_path_prob * epoch / c.train.epochs  # DARTS' linear schedule
      batch, dpp_array = feed.train_batch(step), jnp.float32(dpp)
      state, m = compiled(state, batch, dpp_array)
      step += 1
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      acc_n += 1
      n_log += 1
      epoch_end = step % spe == 0
      if step % c.log_every_steps == 0 or epoch_end:
        host = {k: float(v) / acc_n for k, v in jax.device_get(acc).items()}
        dt = time.time() - t_log
        last = dict(step=step, epoch=epoch, **host, drop_path_prob=dpp,
                    learning_rate=float(schedule(step - 1)),  # the interval's last step's
                    images_per_s=n_log * bs / max(dt, 1e-9))
        mfile.write(json.dumps(last) + "\n")
        mfile.flush()
        _add_scalars(tb, "train", last, step)
        progress.update(epoch, step - epoch * spe, spe,
                        {"train_loss": host["loss"], "train_acc": host["accuracy"]},
                        last["images_per_s"], (total - step) * dt / max(n_log, 1))
        acc, acc_n, t_log, n_log = None, 0, time.time(), 0
      if epoch_end:
        line = {"step": step, "epoch": epoch, "split": "test"}
        if (epoch + 1) % c.eval_every_epochs == 0 or step == total:
          line.update(evaluate())
          mfile.write(json.dumps(line) + "\n")
          mfile.flush()
          _add_scalars(tb, "test", line, step)
        _save_train_checkpoint(ckpt, state)
        progress.summary(f"epoch {epoch + 1}/{c.train.epochs} step {step} "
                         f"loss {last['loss']:.4f} acc {last['accuracy']:.3f}"
                         + (f" test_acc {line['test_acc']:.4f}" if "test_acc" in line else ""))
      elif step % c.checkpoint_every_steps == 0:
        _save_train_checkpoint(ckpt, state)
      if stopper.signal is not None or (stop_after_steps and step >= stop_after_steps):
        _save_train_checkpoint(ckpt, state)
        if stopper.signal is not None:
          print(f"stopped by signal {stopper.signal} at step {step}; run the same command again "
                f"to resume from {ckpt}", flush=True)
        return {"step": step, "stopped": True, "signal": stopper.signal}

  final = {"step": step, "epochs": c.train.epochs, **evaluate(), "init_s": init_s,
           "n_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))}
  io.atomic_write_json(os.path.join(workdir, "final_metrics.json"), final)
  return final
