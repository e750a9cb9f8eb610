"""Picking a path from a trained one-shot supernet: BN recalibration, evaluation, search.

A supernet trained on single paths (``dnas.strategies.spos``: SPOS, RSPS) learns no alpha; its
genotype is chosen afterwards by scoring paths with the shared weights. A *path* picks one op
per edge of every cell type: ``{name: (op index per edge, ...)}``, e.g. ``{"cell": (3, 1, 0, 3,
2, 1)}`` for NAS-Bench-201. This module gives the pieces and two searches over paths:

* ``recalibrate_batch_stats``: BatchNorm's running statistics recomputed for one path on a few
  training batches, as SPOS does before scoring a candidate (``megvii-model/SinglePathOneShot``,
  ``src/Search/tester.py``, ``get_cand_err``: "clear bn statics", then forward passes in train
  mode);
* ``evaluate_path``: a path's accuracy on validation batches, BatchNorm in eval mode; one
  compilation serves every path (the op indices are traced arrays);
* ``random_search``: NAS-Bench-201's RSPS selection (``D-X-Y/AutoDL-Projects``,
  ``exps/algos/RANDOM-NAS.py``, ``search_find_best``);
* ``evolution``: SPOS' evolutionary search with top-k parents, mutation and crossover
  (``megvii-model/SinglePathOneShot``, ``src/Search/search.py``, ``EvolutionSearcher``);
* ``select``: all of it end to end, as the search loop calls it after training, driven by a
  strategy's ``SelectSettings``.

Only ``recalibrate_batch_stats`` and ``evaluate_path`` touch the device (each runs one jitted
function per batch); the searches are plain host loops over paths that draw their random numbers
in bulk from ``key`` and fetch the scores of a whole generation with one ``jax.device_get``.

Example::

    settings = SelectSettings(selection="evolution", calibration_batches=200, eval_batches=40)
    weights, records = select(model, state.params, state.batch_stats, settings,
                              train_batches=lambda i: batch_fn(train, key, i),
                              val_batches=val_list, key=jax.random.key(0))
    genotype = model.genotype(weights)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional
from typing import Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnas.ops import layers
from dnas.types import Batch, BatchStats, OpWeights, Params, PRNGKey, SampledOps

Path = Dict[str, Tuple[int, ...]]  # one op index per edge, per cell type
Record = Tuple[Path, float]  # a path and its score (accuracy in [0, 1] for ``select``)
Shapes = Mapping[str, Tuple[int, int]]  # cell type -> (edges, ops), ``model.arch_shapes()``
ScoreFn = Callable[[Path], Any]  # a path's score (higher is better): a float or a device scalar
BatchSource = Union[Callable[[int], Batch], Iterable[Batch]]

METHODS = ("random", "evolution")


class SelectSettings(NamedTuple):
  """How a one-shot strategy picks its genotype after training (``Strategy.select``).

  The defaults are NAS-Bench-201's RSPS (``scripts-search/algos/RANDOM-NAS.sh``: ``--select_num
  100``, ``--track_running_stats 1``; ``exps/algos/RANDOM-NAS.py``, ``search_find_best``: each
  candidate scored on one validation batch, ``network.eval()``, the running statistics of
  training); the evolution fields are SPOS' (``src/Search/search.py``, ``main``: population 50,
  top 10, 25 mutations, 25 crossovers, ``m_prob`` 0.1, 20 epochs). SPOS scores a candidate after
  recalibrating BatchNorm on 200 training batches (``--max-train-iters``), on 40 validation
  batches of 200 (``--max-test-iters``, ``--test-batch-size``).

  Attributes:
    selection: ``"random"`` (RSPS) or ``"evolution"`` (SPOS).
    candidates: paths ``"random"`` samples, uniformly and with replacement (RSPS: 100).
    calibration_batches: training batches BatchNorm is recalibrated on for every candidate
      (``recalibrate_batch_stats``); 0 keeps the supernet's running statistics (RSPS).
    eval_batches: validation batches every candidate is scored on (RSPS: 1; SPOS: 40). The
      batches continue from candidate to candidate (each sees the next ones, cycling), as both
      references read their loaders.
    eval_batch_size: examples per validation batch, for the loop to build them with (RSPS: the
      config's 64; SPOS: 200). ``select`` takes the batches as given.
    population: paths evaluated per generation of ``"evolution"`` (SPOS: 50).
    parents: the best paths kept as parents (SPOS' ``select_num``: 10).
    mutations: children by mutation per generation (SPOS: 25).
    crossovers: children by crossover per generation (SPOS: 25); random paths fill the rest.
    mutation_prob: the probability that mutation redraws an edge's op (SPOS' ``m_prob``: 0.1).
    generations: generations after the first, random one (SPOS' ``max_epochs``: 20).
  """
  selection: str = "random"
  candidates: int = 100
  calibration_batches: int = 0
  eval_batches: int = 1
  eval_batch_size: int = 64
  population: int = 50
  parents: int = 10
  mutations: int = 25
  crossovers: int = 25
  mutation_prob: float = 0.1
  generations: int = 20


def check_settings(settings: SelectSettings, where: str = "settings") -> SelectSettings:
  """``settings`` if they are valid.

  Raises:
    ValueError: an unknown selection or an out-of-range count or probability, naming
      ``<where>.<field>``.
  """
  if settings.selection not in METHODS:
    raise ValueError(f"{where}.selection: must be one of {list(METHODS)}, got "
                     f"{settings.selection!r}")
  lows = {"candidates": 1, "calibration_batches": 0, "eval_batches": 1, "eval_batch_size": 1,
          "population": 1, "parents": 1, "mutations": 0, "crossovers": 0, "generations": 0}
  for field, low in lows.items():
    value = getattr(settings, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"{where}.{field}: must be an integer >= {low}, got {value!r}")
  if not 0.0 <= settings.mutation_prob <= 1.0:
    raise ValueError(f"{where}.mutation_prob: must be in [0, 1], got {settings.mutation_prob!r}")
  return settings


# ---------------------------------------------------------------------------------------------
# Paths and their op weights.


def path_weights(path: Mapping[str, Any], shapes: Shapes, sampled: bool = True) -> OpWeights:
  """The op weights that run ``path`` on a supernet.

  Args:
    path: ``{name: [E] op indices}`` (tuples, numpy or traced arrays).
    shapes: ``{name: (E, K)}``, the supernet's ``arch_shapes()``.
    sampled: give ``dnas.types.SampledOps`` (the supernet computes only the picked op on each
      edge); False gives dense one-hot ``[E, K]`` arrays (every op computed, the others weighted
      0: the same outputs, for supernets that take no ``SampledOps``).

  Returns:
    ``{name: SampledOps(index, one_hot)}`` or ``{name: one_hot}``, float32.
  """
  out = {}
  for name, (_, k) in shapes.items():
    index = jnp.asarray(path[name], jnp.int32)
    one_hot = jax.nn.one_hot(index, k, dtype=jnp.float32)
    out[name] = SampledOps(index, one_hot) if sampled else one_hot
  return out


def one_hot_weights(path: Path, shapes: Shapes) -> Dict[str, np.ndarray]:
  """``path`` as dense one-hot ``[E, K]`` numpy weights, the form ``model.genotype`` reads."""
  return {name: np.eye(k, dtype=np.float32)[np.asarray(path[name], np.int64)]
          for name, (_, k) in shapes.items()}


def _path_key(path: Path) -> Tuple:
  return tuple((name, tuple(path[name])) for name in sorted(path))


@functools.partial(jax.jit, static_argnums=1)
def _bits(key: PRNGKey, n: int) -> jax.Array:
  return jax.random.bits(key, (n,), jnp.uint32)


class _Draws:
  """Random numbers from ``key`` for a host loop: one device draw of ``n`` 32-bit words, dealt
  out in order as uniform integers (``word % k``: uniform to within ``k / 2**32``) and coin
  flips (``word < p * 2**32``). One draw per stage keeps the searches from dispatching (and
  compiling) a random op per path."""

  def __init__(self, key: PRNGKey, n: int):
    self.words, self.used = np.asarray(jax.device_get(_bits(key, n)), np.uint64), 0

  def _take(self, shape) -> np.ndarray:
    n = int(np.prod(shape))
    if self.used + n > self.words.size:
      raise AssertionError("_Draws: drew more words than allocated")
    out = self.words[self.used:self.used + n].reshape(shape)
    self.used += n
    return out

  def ints(self, shape, k: int) -> np.ndarray:
    return (self._take(shape) % k).astype(np.int64)

  def coins(self, shape, p: float) -> np.ndarray:
    return self._take(shape) < np.uint64(min(int(p * 2 ** 32), 2 ** 32))


def _draw_paths(key: PRNGKey, shapes: Shapes, n: int) -> List[Path]:
  """``n`` paths drawn uniformly: every edge's op uniform and independent of the others."""
  draws = _Draws(key, n * sum(e for e, _ in shapes.values()))
  cols = {name: draws.ints((n, shapes[name][0]), shapes[name][1]) for name in sorted(shapes)}
  return [{name: tuple(int(v) for v in cols[name][t]) for name in shapes} for t in range(n)]


# ---------------------------------------------------------------------------------------------
# BatchNorm recalibration and evaluation: one jitted function per batch, the path traced.


def _bn_momentum(momentum: Optional[float]) -> float:
  if momentum is not None:
    return float(momentum)
  return float(layers.batch_norm(True, affine=False).momentum)  # dnas' BatchNorm: 0.9


@jax.jit
def _zeros(tree):
  return jax.tree.map(jnp.zeros_like, tree)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _add_batch_moments(model: nn.Module, params, batch_stats, op_weights, images, total,
                       momentum: float):
  """``total`` plus every BatchNorm's batch mean and variance on ``images`` (train mode).

  Flax's BatchNorm updates ``ra <- m * ra + (1 - m) * batch_moment``; from ``ra = 0`` that is
  ``(1 - m) * batch_moment`` exactly rounded, so dividing by ``1 - m`` recovers the batch's
  moments to float precision, where inverting the update from other statistics would cancel.
  """
  zero = jax.tree.map(jnp.zeros_like, batch_stats)
  _, updated = model.apply({"params": params, "batch_stats": zero}, images, op_weights,
                           train=True, mutable=["batch_stats"])
  return jax.tree.map(lambda t, s: t + s / (1 - momentum), total, updated["batch_stats"])


@jax.jit
def _divide(tree, n):
  return jax.tree.map(lambda t: t / n, tree)


def recalibrate_batch_stats(model: nn.Module, params: Params, batch_stats: BatchStats,
                            op_weights: OpWeights, batches: Iterable[Batch], *,
                            momentum: Optional[float] = None) -> BatchStats:
  """BatchNorm's running statistics recomputed for one path, as an exact average over batches.

  For every BatchNorm, with ``mu_b`` and ``var_b`` its batch mean and (biased, as Flax computes
  it) variance on batch ``b`` of ``n``, BatchNorm in train mode::

      mean = (1 / n) sum_b mu_b,     var = (1 / n) sum_b var_b.

  This is what PyTorch's cumulative average (``momentum=None``) gives after SPOS' reset
  (``src/Search/tester.py``, ``get_cand_err``: running statistics set to 0 and 1, then
  ``--max-train-iters`` forward passes in train mode). Where dnas may differ: that function
  does not change BatchNorm's momentum, so with PyTorch's default (0.1) its statistics are an
  exponential average of the same batches (the last weigh most; 0.9^200 of the reset value is
  left after 200); the exact average weighs every batch alike, whatever their number. The
  incoming running statistics are not used.

  Args:
    model: the supernet, called as ``model.apply(variables, images, op_weights, train=True)``.
    params: its weights.
    batch_stats: its ``"batch_stats"`` collection (for the tree's structure).
    op_weights: the path's op weights (``path_weights``); one compilation serves every path of
      the same form.
    batches: training batches ``{"image": [B, H, W, C], ...}`` (labels unused), all real
      examples: padding would enter the batch statistics.
    momentum: the model's BatchNorm momentum ``m`` (``ra <- m * ra + (1 - m) * x``); default:
      ``dnas.ops.layers.batch_norm``'s (0.9).

  Returns:
    The recalibrated ``batch_stats``. A BatchNorm the path does not run (an op off the path of a
    supernet given ``SampledOps``) comes back with mean and variance 0.

  Raises:
    ValueError: ``batches`` is empty.
  """
  m = _bn_momentum(momentum)
  total, n = _zeros(batch_stats), 0
  for batch in batches:
    total = _add_batch_moments(model, params, batch_stats, op_weights, batch["image"], total, m)
    n += 1
  if n == 0:
    raise ValueError("recalibrate_batch_stats: no batches")
  return _divide(total, jnp.float32(n))


@functools.partial(jax.jit, static_argnums=(0,))
def _add_counts(model: nn.Module, params, batch_stats, op_weights, images, labels, counts):
  """``counts + [correct, real examples]`` of one batch, BatchNorm in eval mode."""
  logits = model.apply({"params": params, "batch_stats": batch_stats}, images, op_weights,
                       train=False)
  real = labels >= 0
  correct = jnp.sum(real & (jnp.argmax(logits, -1) == labels))
  return counts + jnp.stack([correct, jnp.sum(real)]).astype(counts.dtype)


def evaluate_path(model: nn.Module, params: Params, batch_stats: BatchStats,
                  op_weights: OpWeights, batches: Iterable[Batch]) -> jax.Array:
  """A path's top-1 accuracy on ``batches``, BatchNorm in eval mode (running statistics).

  Examples labelled ``-1`` (``dnas.data.eval_batches(..., pad=True)``) are left out. Nothing is
  fetched from the device: the result is a device scalar, so the caller can queue many paths
  and fetch their scores together.

  Args:
    model: the supernet, called as ``model.apply(variables, images, op_weights, train=False)``.
    params: its weights.
    batch_stats: the statistics BatchNorm normalises with (the supernet's, or a path's from
      ``recalibrate_batch_stats``).
    op_weights: the path's op weights (``path_weights``); the op indices are traced, so one
      compilation (per batch shape) serves every path.
    batches: ``{"image": [B, H, W, C], "label": [B] int32}``.

  Returns:
    ``correct / real examples``, a float32 device scalar (0 when no example is real).

  Raises:
    ValueError: ``batches`` is empty.
  """
  counts, n = jnp.zeros([2], jnp.int32), 0
  for batch in batches:
    counts = _add_counts(model, params, batch_stats, op_weights, batch["image"],
                         jnp.asarray(batch["label"], jnp.int32), counts)
    n += 1
  if n == 0:
    raise ValueError("evaluate_path: no batches")
  return counts[0].astype(jnp.float32) / jnp.maximum(counts[1], 1).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Searches over paths.


def _scores(score_fn: ScoreFn, paths: Sequence[Path]) -> List[float]:
  """Every path's score, fetched from the device together."""
  return [float(s) for s in jax.device_get([score_fn(p) for p in paths])]


def _best(records: Sequence[Record]) -> Path:
  """The first path of highest score (``np.argmax``, as ``search_find_best`` takes it)."""
  return records[int(np.argmax([s for _, s in records]))][0]


def random_search(score_fn: ScoreFn, shapes: Shapes, candidates: int,
                  key: PRNGKey) -> Tuple[Path, List[Record]]:
  """RSPS' selection: the best of ``candidates`` uniformly random paths.

  NAS-Bench-201's ``exps/algos/RANDOM-NAS.py``, ``search_find_best``: ``random_genotype`` (an
  op drawn uniformly per edge, ``lib/models/cell_searchs/search_model_random.py``) ``n_samples``
  times with replacement, each scored once, the first best kept (``np.argmax``).

  Args:
    score_fn: ``score_fn(path) -> score``, higher is better (a float or a device scalar).
    shapes: ``{name: (edges, ops)}``.
    candidates: how many paths to draw and score.
    key: PRNG key of the draws.

  Returns:
    ``(best_path, records)``: ``records`` lists ``(path, score)`` in the order drawn.
  """
  if candidates < 1:
    raise ValueError(f"candidates must be >= 1, got {candidates}")
  paths = _draw_paths(key, shapes, candidates)
  records = list(zip(paths, _scores(score_fn, paths)))
  return _best(records), records


class _Pool:
  """SPOS' bookkeeping: every path is scored once (its ``vis_dict``)."""

  def __init__(self, shapes: Shapes):
    self.shapes = shapes
    self.seen = set()

  def admit(self, path: Path) -> bool:
    k = _path_key(path)
    if k in self.seen:
      return False
    self.seen.add(k)
    return True


def _random_children(pool: _Pool, key: PRNGKey, n: int, chunk: int) -> List[Path]:
  """Up to ``n`` new uniformly random paths (``EvolutionSearcher.get_random``), drawn ``chunk``
  at a time (a fixed shape: the draws compile once)."""
  out = []
  for attempt in range(10):  # the reference retries forever; a small space may run out
    if len(out) >= n:
      break
    for path in _draw_paths(jax.random.fold_in(key, attempt), pool.shapes, chunk):
      if len(out) < n and pool.admit(path):
        out.append(path)
  return out


def _mutants(pool: _Pool, parents: Sequence[Path], key: PRNGKey, n: int,
             prob: float) -> List[Path]:
  """Up to ``n`` new children, each a random parent with every edge's op redrawn (uniformly,
  possibly to the same op) with probability ``prob``, in at most ``10 n`` tries
  (``EvolutionSearcher.get_mutation``)."""
  if n == 0 or not parents:
    return []
  tries, names = 10 * n, sorted(pool.shapes)
  draws = _Draws(key, tries * (1 + 2 * sum(pool.shapes[m][0] for m in names)))
  pick = draws.ints((tries,), len(parents))
  masks = {m: draws.coins((tries, pool.shapes[m][0]), prob) for m in names}
  ops = {m: draws.ints((tries, pool.shapes[m][0]), pool.shapes[m][1]) for m in names}
  out = []
  for t in range(tries):
    if len(out) == n:
      break
    parent = parents[int(pick[t])]
    child = {m: tuple(int(v) for v in np.where(masks[m][t], ops[m][t], parent[m]))
             for m in pool.shapes}
    if pool.admit(child):
      out.append(child)
  return out


def _crossovers(pool: _Pool, parents: Sequence[Path], key: PRNGKey, n: int) -> List[Path]:
  """Up to ``n`` new children, each edge's op taken from one of two random parents (possibly
  the same one) with equal odds, in at most ``10 n`` tries
  (``EvolutionSearcher.get_crossover``)."""
  if n == 0 or not parents:
    return []
  tries, names = 10 * n, sorted(pool.shapes)
  draws = _Draws(key, tries * (2 + sum(pool.shapes[m][0] for m in names)))
  first, second = draws.ints((tries,), len(parents)), draws.ints((tries,), len(parents))
  sides = {m: draws.coins((tries, pool.shapes[m][0]), 0.5) for m in names}
  out = []
  for t in range(tries):
    if len(out) == n:
      break
    p1, p2 = parents[int(first[t])], parents[int(second[t])]
    child = {m: tuple(int(b) if s else int(a) for a, b, s in zip(p1[m], p2[m], sides[m][t]))
             for m in pool.shapes}
    if pool.admit(child):
      out.append(child)
  return out


def evolution(score_fn: ScoreFn, shapes: Shapes, key: PRNGKey, *, population: int = 50,
              parents: int = 10, mutations: int = 25, crossovers: int = 25,
              mutation_prob: float = 0.1, generations: int = 20) -> Tuple[Path, List[Record]]:
  """SPOS' evolutionary search over paths (Guo et al., 2020, section 3.3).

  As ``megvii-model/SinglePathOneShot``, ``src/Search/search.py``, ``EvolutionSearcher.search``:
  the first generation is ``population`` random paths; then, ``generations`` times, the
  ``parents`` best paths seen so far (the previous parents and the last generation, sorted
  stably by score) make the next generation of ``mutations`` mutants (``get_mutation``: each
  edge's op redrawn with probability ``mutation_prob``), ``crossovers`` crossovers
  (``get_crossover``: each edge's op from one of two parents) and random paths up to
  ``population`` (``get_random``). A path is scored only once: children already seen are
  discarded and drawn again (at most ``10 x`` the number wanted).

  Where dnas differs: the best path is the best of every path scored, the last generation
  included (the reference updates its top-k at the start of a generation, so its last
  generation's scores never reach the result); the random fill gives up after a bounded number
  of draws instead of looping forever when the space runs out; mutation and crossover draw
  their random numbers from ``key`` (one device draw per stage), not from NumPy's global
  generator.

  Args:
    score_fn: ``score_fn(path) -> score``, higher is better (a float or a device scalar); the
      scores of a generation are fetched together.
    shapes: ``{name: (edges, ops)}``.
    key: PRNG key of every draw.
    population, parents, mutations, crossovers, mutation_prob, generations: see
      ``SelectSettings`` (SPOS' values by default).

  Returns:
    ``(best_path, records)``: ``records`` lists ``(path, score)`` in the order scored,
    ``population * (generations + 1)`` of them unless the space ran out.
  """
  pool, records, top = _Pool(shapes), [], []
  chunk = 2 * population
  candidates = _random_children(pool, jax.random.fold_in(key, 0), population, chunk)
  for g in range(generations + 1):
    scored = list(zip(candidates, _scores(score_fn, candidates)))
    records.extend(scored)
    if g == generations:
      break
    top = sorted(top + scored, key=lambda r: -r[1])[:parents]  # stable: earlier wins ties
    best = [p for p, _ in top]
    gkey = jax.random.fold_in(key, g + 1)
    candidates = _mutants(pool, best, jax.random.fold_in(gkey, 0), mutations, mutation_prob)
    candidates += _crossovers(pool, best, jax.random.fold_in(gkey, 1), crossovers)
    candidates += _random_children(pool, jax.random.fold_in(gkey, 2),
                                   population - len(candidates), chunk)
  if not records:
    raise ValueError("evolution: nothing was scored (population must be >= 1)")
  return _best(records), records


# ---------------------------------------------------------------------------------------------
# End to end.


class _Stream:
  """Batches in order from a ``BatchSource``, cycling an iterable when it runs out."""

  def __init__(self, source: BatchSource, name: str):
    self.source, self.name, self.count, self.it = source, name, 0, None

  def take(self, n: int) -> List[Batch]:
    out = []
    for _ in range(n):
      if callable(self.source):
        out.append(self.source(self.count))
      else:
        out.append(self._next())
      self.count += 1
    return out

  def _next(self) -> Batch:
    if self.it is not None:
      try:
        return next(self.it)
      except StopIteration:
        pass
    restarted = iter(self.source)
    if restarted is self.it:  # a one-shot iterator (a generator) has nothing left
      raise ValueError(f"{self.name} ran out after {self.count} batches; pass a list, an "
                       f"iterable that restarts, or a function of the batch number")
    self.it = restarted
    try:
      return next(self.it)
    except StopIteration:
      raise ValueError(f"{self.name} gave no batch") from None


def select(model: nn.Module, params: Params, batch_stats: BatchStats,
           settings: SelectSettings, train_batches: BatchSource, val_batches: BatchSource,
           key: PRNGKey, *, sampled: bool = True
           ) -> Tuple[Dict[str, np.ndarray], List[Record]]:
  """Picks a one-shot supernet's genotype by scoring paths with its shared weights.

  Every candidate path is scored as its reference does: ``settings.calibration_batches``
  training batches recalibrate BatchNorm (``recalibrate_batch_stats``; 0 keeps the supernet's
  running statistics, as NAS-Bench-201's RSPS does), then its accuracy on the next
  ``settings.eval_batches`` validation batches (``evaluate_path``) is its score. The paths are
  searched by ``random_search`` (``settings.selection="random"``) or ``evolution``.

  Args:
    model: the supernet; ``model.arch_shapes()`` gives its cell types' ``(edges, ops)``.
    params: its trained weights (``SearchState.params``).
    batch_stats: its BatchNorm statistics (``SearchState.batch_stats``).
    settings: ``SelectSettings`` (``strategy.select`` of a one-shot strategy).
    train_batches: training batches for the recalibration (unused when it is off).
    val_batches: validation batches ``{"image", "label"}``; labels ``-1`` are padding.
      Either source is a function ``fn(i) -> batch`` of the batch's number (counted from 0
      over the whole selection: e.g. ``lambda i: batch_fn(data, key, i)``), or an iterable read
      in order and restarted when it runs out (a list such as
      ``list(dnas.data.eval_batches(images, labels, bs, mean, std, pad=True))``).
    key: PRNG key of the search's draws.
    sampled: run paths as ``SampledOps`` (only the picked op per edge); False gives dense
      one-hot weights, for a supernet that takes no ``SampledOps`` (same scores, slower).

  Returns:
    ``(op_weights, records)``: the best path as dense one-hot ``{name: [E, K]}`` numpy weights
    (``model.genotype(op_weights)`` gives its genotype) and every ``(path, accuracy)`` scored,
    in order.
  """
  check_settings(settings)
  shapes = dict(model.arch_shapes())
  train = _Stream(train_batches, "train_batches")
  val = _Stream(val_batches, "val_batches")

  def score(path: Path) -> jax.Array:
    weights = path_weights(path, shapes, sampled)
    stats = batch_stats
    if settings.calibration_batches:
      stats = recalibrate_batch_stats(model, params, batch_stats, weights,
                                      train.take(settings.calibration_batches))
    return evaluate_path(model, params, stats, weights, val.take(settings.eval_batches))

  if settings.selection == "random":
    best, records = random_search(score, shapes, settings.candidates, key)
  else:
    best, records = evolution(
        score, shapes, key, population=settings.population, parents=settings.parents,
        mutations=settings.mutations, crossovers=settings.crossovers,
        mutation_prob=settings.mutation_prob, generations=settings.generations)
  return one_hot_weights(best, shapes), records


__all__ = ["BatchSource", "METHODS", "Path", "Record", "SelectSettings", "check_settings",
           "evaluate_path", "evolution", "one_hot_weights", "path_weights", "random_search",
           "recalibrate_batch_stats", "select"]
