"""Evaluators: how a proposed architecture gets its score, registered by name.

An evaluator is a plain callable ``evaluate(codes) -> float`` (higher is better) over a space's
code vectors, for ``dnas.blackbox.run`` (the Python-loop runner; a table column can also be
searched entirely in JAX with ``run_on_table``). Built in, for the NAS-Bench-201 cell space:

* ``table``: a benchmark table's column (``dnas.benchmarks``);
* ``one_shot``: the accuracy of the path on a trained weight-sharing supernet (SPOS, RSPS),
  its BatchNorm statistics recalibrated for the path first (Guo et al., ECCV 2020;
  ``dnas.oneshot``);
* ``low_fidelity``: the cell trained from scratch by dnas' retraining loop on a short budget
  (fewer epochs, channels or images, as the config says), scored on training images held out
  of its training (``data.holdout``), never on the test set; each architecture's run folder is
  kept, so a search that is stopped and run again trains nothing twice;
* ``zero_cost``: a zero-cost proxy of the untrained network on one minibatch
  (``dnas.proxies``: NASWOT, synflow, grad-norm, snip).

A user's evaluator is one more factory: ``@register_evaluator("mine")``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Iterable, List

import jax
import numpy as np

from dnas.blackbox import spaces as spaces_lib

Evaluate = Callable[[Any], float]
_EVALUATORS: Dict[str, Callable[..., Evaluate]] = {}


class UnknownEvaluatorError(KeyError):
  def __str__(self):
    return str(self.args[0])


def register_evaluator(name: str, *, overwrite: bool = False):
  """Registers a factory ``(**options) -> evaluate`` under ``name``; a decorator."""
  def decorator(factory):
    if name in _EVALUATORS and not overwrite:
      raise ValueError(f"evaluator {name!r} is already registered; pass overwrite=True to "
                       f"replace it")
    _EVALUATORS[name] = factory
    return factory
  return decorator


def get_evaluator(name: str, **options: Any) -> Evaluate:
  """The evaluator ``name`` built with ``options``; unknown names list the registered ones."""
  try:
    factory = _EVALUATORS[name]
  except KeyError:
    raise UnknownEvaluatorError(f"unknown evaluator {name!r}; registered: "
                                f"{', '.join(sorted(_EVALUATORS))}") from None
  return factory(**options)


def evaluator_names() -> List[str]:
  return sorted(_EVALUATORS)


def _nb201(space):
  return space if space is not None else spaces_lib.nb201_space()


@register_evaluator("table")
def table_evaluator(table: Any, column: str, space: Any = None) -> Evaluate:
  """``table``'s ``column`` for the decoded architecture (``table.query``)."""
  space = _nb201(space)
  table.column(column)  # fails now, naming the table's columns, if there is no such column

  def evaluate(codes):
    return float(table.query(space.decode(codes), column))

  return evaluate


def supernet_path(model: Any, space: Any = None) -> Callable[[Any], Dict[str, np.ndarray]]:
  """``codes -> {"cell": [E] op indices}``: an NB201 code vector as a path of ``model``.

  The supernet's edge order is read off its own ``genotype``: each edge in turn is given op 1
  over op 0 everywhere else, and the derived cell says which edge that was.
  """
  space = _nb201(space)
  shapes = model.arch_shapes()
  if set(shapes) != {"cell"} or shapes["cell"] != (len(space.cardinalities),
                                                    space.cardinalities[0]):
    raise ValueError(f"supernet_path: the supernet's alpha {shapes} is not NB201's "
                     f"{{'cell': ({len(space.cardinalities)}, {space.cardinalities[0]})}}")
  e, k = shapes["cell"]
  order = []
  for row in range(e):
    w = np.zeros((e, k), np.float32)
    w[:, 0] = 1.0
    w[row] = np.eye(k, dtype=np.float32)[1]
    marked = space.encode(model.genotype({"cell": w}).arch)
    order.append(int(np.flatnonzero(marked == 1)[0]))
  order = np.asarray(order)
  if sorted(order.tolist()) != list(range(e)):
    raise ValueError(f"supernet_path: could not match the supernet's edges to the space's "
                     f"({order.tolist()})")

  def path(codes):
    return {"cell": np.asarray(space.check(codes))[order]}

  return path


@register_evaluator("one_shot")
def one_shot_evaluator(model: Any, params: Any, batch_stats: Any, val_batches: Iterable[Any],
                       calibration_batches: Iterable[Any] = (), space: Any = None
                       ) -> Evaluate:
  """Top-1 accuracy of the path on ``val_batches`` with the supernet's shared weights.

  Args:
    model: a trained NB201 supernet (``NB201SearchNet``), e.g. a SPOS run's.
    params, batch_stats: its weights and running statistics.
    val_batches: held-out batches (``dnas.data.eval_batches``); listed once, reused.
    calibration_batches: training batches to recompute the path's BatchNorm statistics from
      (SPOS; ``dnas.oneshot.recalibrate_batch_stats``); empty: the supernet's own statistics.
    space: the NB201 space (built if None).
  """
  from dnas import oneshot  # pylint: disable=g-import-not-at-top
  val_batches, calibration_batches = list(val_batches), list(calibration_batches)
  path = supernet_path(model, space)
  shapes = model.arch_shapes()

  def evaluate(codes):
    w = oneshot.path_weights(path(codes), shapes)
    stats = batch_stats
    if calibration_batches:
      stats = oneshot.recalibrate_batch_stats(model, params, batch_stats, w,
                                              calibration_batches)
    return float(oneshot.evaluate_path(model, params, stats, w, val_batches))

  return evaluate


def _arch_folder(root: str, arch: str) -> str:
  return os.path.join(root, hashlib.sha256(arch.encode()).hexdigest()[:16])


@register_evaluator("low_fidelity")
def low_fidelity_evaluator(config: Any, workdir: str, space: Any = None) -> Evaluate:
  """Holdout accuracy of the cell trained from scratch by ``dnas.train_loop.run_train``.

  Args:
    config: a retraining config for the NB201 network (``experiments/train_cifar10.py:nb201``)
      cut down to the fidelity wanted (``train.epochs``, ``model.channels``, ``model.layers``,
      ``data.train_size``) with ``data.holdout`` > 0 training images held out to score on.
    workdir: one folder per architecture is kept under it (``arch.txt`` names the cell); an
      architecture whose run finished is read back, one that was stopped resumes.
    space: the NB201 space (built if None).
  """
  from dnas import genotypes  # pylint: disable=g-import-not-at-top
  from dnas.train_loop import run_train  # pylint: disable=g-import-not-at-top
  from dnas import io  # pylint: disable=g-import-not-at-top
  space = _nb201(space)
  if not config.data.get("holdout", 0):
    raise ValueError("low_fidelity: config.data.holdout must hold out training images to score "
                     "on (the test set is never used to choose architectures)")

  def evaluate(codes):
    arch = space.decode(codes)
    folder = _arch_folder(workdir, arch)
    final = os.path.join(folder, "final_metrics.json")
    if not os.path.exists(final):
      os.makedirs(folder, exist_ok=True)
      io.atomic_write_text(os.path.join(folder, "arch.txt"), arch + "\n")
      result = run_train(config, genotypes.NB201Genotype.from_arch(arch), folder)
      if result.get("stopped"):
        raise KeyboardInterrupt(f"training of {arch} stopped at step {result['step']}; run "
                                f"again to resume it")
    with open(final) as f:
      return float(json.load(f)["holdout_acc"])

  return evaluate


@register_evaluator("zero_cost")
def zero_cost_evaluator(proxy: str, batch: Dict[str, Any], channels: int = 16,
                        cells_per_stage: int = 5, num_classes: int = 10, seed: int = 0,
                        space: Any = None) -> Evaluate:
  """A zero-cost proxy (``dnas.proxies``) of the untrained NB201 network on one minibatch.

  Args:
    proxy: a registered proxy (``dnas.proxies.names()``).
    batch: ``{"image": [B, H, W, 3], "label": [B]}``, normalised as for training.
    channels, cells_per_stage, num_classes: the network (NB201: 16, 5, 10).
    seed: the initialisation's seed, the same for every architecture.
    space: the NB201 space (built if None).
  """
  from dnas import proxies  # pylint: disable=g-import-not-at-top
  from dnas.eval_net import NB201Network  # pylint: disable=g-import-not-at-top
  space = _nb201(space)
  proxies.get(proxy)  # fails now, listing the proxies, if there is no such proxy

  def evaluate(codes):
    model = NB201Network(space.decode(codes), num_classes=num_classes, channels=channels,
                         cells_per_stage=cells_per_stage)
    variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
        jax.random.key(seed), batch["image"][:1])
    return float(proxies.score(proxy, proxies.flax_apply_fn(model), variables, batch))

  return evaluate


@register_evaluator("latency")
def latency_evaluator(batch_size: int = 1, channels: int = 16, cells_per_stage: int = 5,
                      repeats: int = 20, warmup: int = 3, sign: float = -1.0,
                      space: Any = None) -> Evaluate:
  """The NB201 network's inference latency measured on the local device (``dnas.latency``).

  Each architecture is compiled and timed once (remembered after); the score is
  ``sign * median_ms``: by default the negated latency, so that higher is better as the
  runners expect. Measure on a quiet machine; for many cells, ``dnas.latency.measure_csv``
  keeps the measurements on disk.
  """
  from dnas import latency  # pylint: disable=g-import-not-at-top
  space = _nb201(space)
  seen: Dict[str, float] = {}

  def evaluate(codes):
    arch = space.decode(codes)
    if arch not in seen:
      seen[arch] = latency.measure(arch, batch_size=batch_size, channels=channels,
                                   cells_per_stage=cells_per_stage, repeats=repeats,
                                   warmup=warmup)["median_ms"]
    return sign * seen[arch]

  return evaluate


__all__ = ["Evaluate", "UnknownEvaluatorError", "evaluator_names", "get_evaluator",
           "latency_evaluator", "low_fidelity_evaluator", "one_shot_evaluator",
           "register_evaluator", "supernet_path", "table_evaluator", "zero_cost_evaluator"]
