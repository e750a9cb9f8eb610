"""Config resolution: validating a run's config and building what it names.

``validate_search_config`` and ``validate_train_config`` fail fast, naming the key, before a
run writes anything; ``build_search_model``, ``make_strategy``, ``search_weight_optimizer``,
``search_indices``, ``build_train_model`` and ``train_optimizer`` turn a valid config into the
objects the loops (``dnas.search_loop``, ``dnas.train_loop``) run. What a config names is looked
up in its registry: spaces (``dnas.spaces.registry``), op sets (``dnas.ops.sets``) and ops
(``dnas.ops.registry``), strategies (``dnas.strategies.registry``); a config's ``imports``
(``dnas.plugins``) bring in the user's.

A search config's ``search.strategy`` names the strategy (default ``"darts"``) and
``search.<strategy>`` holds its options, e.g. ``search.darts.order``; the weight and alpha
optimizers' keys (``search.learning_rate``, ``search.arch_learning_rate``, ...) are shared by
every strategy.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dnas import compiler, perturbation, plugins, search
from dnas import data as data_lib
from dnas.data import splits
from dnas.ops import sets
from dnas.spaces import registry as space_registry
from dnas.strategies import registry as strategy_registry


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def load_module(path: str):
  """The experiment config file at ``path`` as a module (its ``get_config``, ``VARIANTS``).

  Raises:
    FileNotFoundError: naming ``path``.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, variant: Optional[str] = None) -> ml_collections.ConfigDict:
  """``get_config(variant)`` of the experiment config file at ``path`` (as ``--config`` reads).

  Raises:
    FileNotFoundError: naming ``path``.
  """
  module = load_module(path)
  c = module.get_config() if variant is None else module.get_config(variant)
  if "imports" in c:  # relative .py paths: from the working directory, else the config's folder
    c.imports = tuple(plugins.load(c.imports, base_dir=os.path.dirname(os.path.abspath(path))))
  return c


# Config keys a resumed run may change: where data and caches live, how often it logs,
# checkpoints and evaluates, and compiler settings (XLA's CPU presets give the same step to
# float32 rounding). Any other change would make the resumed run a mix of two runs.
RESUMABLE_KEYS = frozenset({
    "data.path", "data.data_dir", "data.cache_dir", "data.workers", "data.eval_batch_size",
    "log_every_steps", "checkpoint_every_steps", "checkpoint_keep", "eval_every_epochs",
    "max_bad_steps",
    "compilation_cache_dir", "xla_cpu_preset", "xla_cpu_ynn_fusions"})
# Config keys no trace depends on: those above, and the seed, which reaches the initialiser and
# the batches as an argument (a key), never as a constant. So a search repeated under other
# seeds (as DARTS reports its results) loads the first seed's saved traces and executables.
# Nor does the discretizer, which runs after the search step (dnas.perturbation).
TRACE_FREE_KEYS = RESUMABLE_KEYS | {"seed", "search.discretizer"} | {
    f"search.perturbation.{k}" for k in perturbation.PERTURBATION_DEFAULTS}
LAYOUT_KEYS = space_registry.LAYOUT_KEYS


# data.split: "seeded" (a seeded permutation, DARTS' train_portion) or "nb201" (NAS-Bench-201's
# published split, where the data come in the order its indices refer to).
SEARCH_SPLITS = ("seeded", "nb201")
# DARTS' options, which live under `search.darts` (with `search.strategy="darts"`).
DARTS_KEYS = ("order", "hessian", "virtual_step", "fd_epsilon", "neumann_steps")


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
  if "imports" in c:
    _check(isinstance(c.imports, (tuple, list)) and all(isinstance(m, str) for m in c.imports),
           "imports", f"must be a list of module names or .py paths, got {c.imports!r}")
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
  if "checkpoint_keep" in c:
    _int(c, "checkpoint_keep", 1)
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
  _choice(c, "model.space", space_registry.names())
  op_set = resolve_op_set(c)
  try:
    build_search_model(c, 10, op_set)
  except ValueError as e:
    raise ConfigError(str(e) if str(e).startswith("config.") else f"config.model: {e}") from e
  name = strategy_name(c)
  for key in DARTS_KEYS:
    _check(key not in c.search, f"search.{key}",
           f"DARTS' options live under config.search.darts (config.search.darts.{key}), "
           f"with config.search.strategy='darts'")
  if "update_order" in c.search:
    _choice(c, "search.update_order", search.UPDATE_ORDERS)
  if "discretizer" in c.search:  # the genotype: argmax of the op weights, or DARTS-PT's
    if _choice(c, "search.discretizer", perturbation.DISCRETIZERS) == "perturbation":
      try:
        perturbation.resolve_settings(c.search.get("perturbation"))
      except ValueError as e:
        raise ConfigError(f"config.search.perturbation.{e}") from e
  _int(c, "search.epochs", 1)
  if "num_seeds" in c.search:  # searches of seeds seed .. seed + num_seeds - 1 (dnas.seeds)
    _int(c, "search.num_seeds", 1)
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
  try:  # the strategy's options, and the values its factory refuses
    # One step per epoch stands in for the data: schedules set per epoch check out.
    strategy = make_strategy(c, c.search.learning_rate, total_steps=c.search.epochs,
                             steps_per_epoch=1)
  except ValueError as e:
    msg = str(e)
    if not msg.startswith("config."):  # the factory's message names the option first
      first = msg.split(" ", 1)[0]
      where = f"config.search.{name}" + (f".{first}" if first in strategy_options(c) else "")
      msg = f"{where}: {msg[len(first) + 1:] if first in strategy_options(c) else msg}"
    raise ConfigError(msg) from e
  if c.search.get("discretizer", "argmax") == "perturbation" and not strategy.learns_arch:
    raise ConfigError(
        f"config.search.discretizer: 'perturbation' (DARTS-PT) selects from learned op weights; "
        f"strategy {name!r} learns none (its genotype comes from its own selection)")


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


def strategy_name(c: ml_collections.ConfigDict) -> str:
  """``search.strategy`` (``"darts"`` when the config has none), checked against the registry."""
  name = c.search.get("strategy", "darts")
  _check(isinstance(name, str) and name in strategy_registry.names(), "search.strategy",
         f"unknown strategy {name!r}; registered strategies: {strategy_registry.names()} (a "
         f"user's strategy is registered by a module listed in config.imports)")
  return name


def strategy_options(c: ml_collections.ConfigDict) -> dict:
  """The strategy's options: ``search.<strategy>`` completed by its registered defaults."""
  name = strategy_name(c)
  options = c.search.get(name)
  options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else options
  try:
    return strategy_registry.resolve_options(name, options)
  except ValueError as e:
    raise ConfigError(str(e)) from e


def make_strategy(c: ml_collections.ConfigDict, schedule, total_steps: int,
                  steps_per_epoch: int):
  """The strategy ``search.strategy`` names, built from its options ``search.<name>``.

  Args:
    c: the search config.
    schedule: the weight optimizer's learning rate (a float or its schedule).
    total_steps, steps_per_epoch: the run's length (temperature schedules).
  """
  name = strategy_name(c)
  s = c.search
  options = strategy_options(c)
  context = strategy_registry.StrategyContext(
      learning_rate=schedule, momentum=s.momentum, weight_decay=s.weight_decay,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  strategy = strategy_registry.build(name, options, context)
  if "cost" in s and s.cost.get("weight", 0.0):
    strategy = _with_cost(c, strategy)
  return strategy


COST_KEYS = {"weight": 0.0, "mode": "penalty", "target": 0.0, "per_op": {}, "fit": "",
             "benchmark": ""}


def op_cost_vector(c: ml_collections.ConfigDict):
  """``search.cost``'s per-op costs as ``(costs [K], offset, r2)`` in the op set's order.

  ``per_op`` (op name -> cost) gives them directly (offset 0, r2 None); ``fit`` names a latency
  column of the NAS-Bench-201 tables (``benchmark``: their folder, default
  ``$DNAS_NB201_DIR``) to fit one cost per op to by least squares
  (``dnas.strategies.cost.fit_op_costs``, shared by every edge; its intercept is the offset).
  """
  from dnas.strategies import cost as cost_lib  # pylint: disable=g-import-not-at-top
  cc = c.search.cost
  ops = resolve_op_set(c).ops
  if cc.get("per_op") and cc.get("fit"):
    raise ConfigError("config.search.cost: give per_op or fit, not both")
  if cc.get("per_op"):
    try:
      return cost_lib.op_costs(dict(cc.per_op), ops), 0.0, None
    except ValueError as e:
      raise ConfigError(f"config.search.cost.per_op: {e}") from None
  if cc.get("fit"):
    from dnas import benchmarks  # pylint: disable=g-import-not-at-top
    if tuple(ops) != tuple(sets.get("nb201").ops):
      raise ConfigError("config.search.cost.fit: fitting to the NAS-Bench-201 latency tables needs "
                        "NAS-Bench-201's op set; give search.cost.per_op instead")
    try:
      table = benchmarks.load_nb201(cc.get("benchmark") or None)
      costs, intercept, r2 = cost_lib.fit_op_costs(table, cc.fit, per_edge=False)
    except (benchmarks.TableError, ValueError) as e:
      raise ConfigError(f"config.search.cost.fit: {e}") from None
    return costs, float(intercept), float(r2)
  raise ConfigError("config.search.cost: a weight > 0 needs per_op (op -> cost) or fit (a latency "
                    "column of the NAS-Bench-201 tables)")


def _with_cost(c: ml_collections.ConfigDict, strategy):
  from dnas.strategies import cost as cost_lib  # pylint: disable=g-import-not-at-top
  cc = c.search.cost
  unknown = sorted(set(cc) - set(COST_KEYS))
  if unknown:
    raise ConfigError(f"config.search.cost: unknown key(s) {unknown}; keys: {sorted(COST_KEYS)}")
  costs, offset, _ = op_cost_vector(c)
  mode = cc.get("mode", "penalty")
  target = float(cc.get("target", 0.0)) if mode == "target" else None
  try:
    return cost_lib.with_cost(strategy, costs, float(cc.weight), target=target, mode=mode,
                              offset=offset)
  except ValueError as e:
    raise ConfigError(f"config.search.cost: {str(e).replace('with_cost: ', '')}") from None


def search_indices(c: ml_collections.ConfigDict, n: int):
  """The search's ``(train_idx, val_idx, name, description)`` for ``n`` training examples.

  ``data.split="nb201"`` takes NAS-Bench-201's published halves (``dnas.data.splits``) when the
  data are the whole CIFAR training set in its original order (TFDS' ``cifar10``/``cifar100``,
  read without ``data.path`` or ``data.train_size``); otherwise, as for ``"seeded"``, a seeded
  permutation split by ``data.train_portion``. ``name`` is the split used (``"nb201"`` or
  ``"seeded"``); ``description`` says which, and why.
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
      return tr, va, "nb201", (f"nb201 (NAS-Bench-201's cifar-split.txt: {len(tr)} "
                               f"weight-training / {len(va)} validation images)")
  tr, va = data_lib.search_split(n, c.data.train_portion, c.seed)
  desc = (f"seeded (seed {c.seed}, train_portion {c.data.train_portion}: {len(tr)} "
          f"weight-training / {len(va)} validation images)")
  if want == "nb201":
    desc += f"; NAS-Bench-201's split needs TFDS' CIFAR in its original order, but {why}"
  return tr, va, "seeded", desc


def resolve_op_set(c: ml_collections.ConfigDict) -> sets.OpSet:
  """The op set of ``model.ops`` (a list of registered op names) or else ``model.op_set``.

  ``model.bn_after`` (optional, with ``model.ops``) lists the ops followed by an affine-free
  BatchNorm inside the mixed op (DARTS' pooling ops).
  """
  if c.model.get("ops"):
    ops, bn_after = c.model.ops, c.model.get("bn_after", ())
    _check(isinstance(ops, (tuple, list)) and all(isinstance(o, str) for o in ops), "model.ops",
           f"must be a list of op names, got {ops!r}")
    _check(isinstance(bn_after, (tuple, list)), "model.bn_after",
           f"must be a list of op names, got {bn_after!r}")
    try:
      return sets.OpSet("ops", tuple(ops), tuple(bn_after)).validate()
    except (KeyError, ValueError) as e:
      raise ConfigError(f"config.model.ops: {e}") from e
  try:
    return sets.get(c.model.op_set).validate()
  except (KeyError, ValueError) as e:
    raise ConfigError(str(e) if str(e).startswith("config.") else f"config.model.op_set: {e}") \
        from e


def build_search_model(c: ml_collections.ConfigDict, num_classes: int,
                       op_set: Optional[sets.OpSet] = None):
  """The supernet of the space ``model.space`` names (``dnas.spaces.registry``)."""
  op_set = op_set if op_set is not None else resolve_op_set(c)
  return space_registry.build(c.model.space, c.model, op_set, num_classes)


TRAIN_SPACES = ("darts_cifar", "darts_imagenet", "nb201")
OPTIMIZERS = ("darts_cifar", "darts_imagenet", "nb201")


def validate_train_config(c: ml_collections.ConfigDict, genotype) -> None:
  """Fails fast, naming the key, on values no retraining can run with (wrong types included)."""
  _validate_common(c)
  _int(c, "data.eval_batch_size", 1)
  _int(c, "data.test_size", 0)
  _int(c, "data.cutout", 0)
  if "holdout" in c.data:
    _int(c, "data.holdout", 0)
    if c.data.holdout and c.data.get("streaming", False):
      raise ConfigError("data.holdout: held-out training images need the data in memory; set "
                        "data.streaming=False, or data.holdout=0")
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
