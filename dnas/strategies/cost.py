"""A differentiable hardware cost for gradient strategies: expected latency of the op weights.

With per-op costs ``c[e, k]`` (ms, FLOPs, parameters) and op weights ``w[e, k]`` (each edge's
weights summing to one), the expected cost of a cell type is the sum over its edges of the
weighted op costs, and of the network the sum over cell types plus a fixed ``offset``::

    E[cost] = offset + sum_types sum_e sum_k w[e, k] * c[e, k]

ProxylessNAS (Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task
and Hardware", ICLR 2019, section 3.3) models a network's latency so, as a sum of per-op latencies
weighted by the architecture's probabilities, and adds ``lambda * E[latency]`` to the loss;
FBNet (Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural
Architecture Search", CVPR 2019, section 3) builds the same sum from a latency lookup table.

``with_cost`` wraps a strategy so that its ``regularizer`` (added to alpha's gradient by
``dnas.search``) also holds a cost term, a penalty or a target (see there). Per-op costs come
from a user's lookup (``op_costs``) or are fitted to a benchmark table's latency column by
least squares (``fit_op_costs``; ``fit_report`` gives every device column's R^2).

Example::

    table = benchmarks.load_nb201()
    costs, intercept, r2 = fit_op_costs(table, "pixel3_ms")          # [6, 5]
    strategy = with_cost(darts(), {"cell": costs}, weight=0.1, target=5.0, mode="target",
                         offset=intercept)
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from dnas.genotypes import GenotypeError, NB201Genotype
from dnas.ops import sets
from dnas.strategies.base import Strategy, derive_weights

MODES = ("penalty", "target")
# NB201's edges in arch-string order, the order of the rows of its alpha ``{"cell": [6, K]}``.
_NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def _cost_of(name: str, weights: Any, cost: Any) -> jax.Array:
  if not hasattr(weights, "ndim") or weights.ndim != 2:
    raise TypeError(f"expected_cost: op weights of cell type {name!r} must be a dense [E, K] "
                    f"array (use the strategy's derive weights), got {type(weights).__name__}")
  c = jnp.asarray(cost, weights.dtype)
  if c.shape not in ((weights.shape[1],), tuple(weights.shape)):
    raise ValueError(f"expected_cost: per_op_cost[{name!r}] must be [K]={weights.shape[1:]} or "
                     f"[E, K]={tuple(weights.shape)}, got shape {c.shape}")
  return jnp.sum(weights * c)


def expected_cost(op_weights: Mapping[str, Any], per_op_cost: Union[Mapping[str, Any], Any]
                  ) -> jax.Array:
  """``sum_types sum_e sum_k w[e, k] c[e, k]``: the cost the op weights expect (module doc).

  Args:
    op_weights: cell type -> ``[E, K]`` op weights (``{"cell": ...}`` for NB201,
      ``{"normal": ..., "reduce": ...}`` for DARTS).
    per_op_cost: cell type -> ``[K]`` (one cost per op, every edge) or ``[E, K]`` (per edge);
      or one array used for every cell type. A type's costs include how many cells of it the
      network holds.

  Returns:
    A scalar.

  Example::

    expected_cost({"cell": jnp.full((6, 5), 0.2)}, {"cell": jnp.arange(5.)})   # 6 * 2 = 12
  """
  if not isinstance(op_weights, Mapping):
    raise TypeError(f"expected_cost: op_weights must be a dict cell type -> [E, K], got "
                    f"{type(op_weights).__name__}")
  if isinstance(per_op_cost, Mapping):
    missing = sorted(set(op_weights) - set(per_op_cost))
    if missing:
      raise ValueError(f"expected_cost: per_op_cost has no costs for cell type(s) {missing}; "
                       f"it has {sorted(per_op_cost)}")
    costs = per_op_cost
  else:
    costs = {name: per_op_cost for name in op_weights}
  return sum(_cost_of(name, op_weights[name], costs[name]) for name in sorted(op_weights))


def with_cost(strategy: Strategy, per_op_cost: Union[Mapping[str, Any], Any], weight: float,
              target: Optional[float] = None, mode: str = "penalty",
              offset: float = 0.0) -> Strategy:
  """``strategy`` with a cost term added to its regularizer (alpha's upper-level loss).

  With ``C = offset + expected_cost(derive_weights(alpha), per_op_cost)``:

  - ``mode="penalty"``: ``weight * C``, ProxylessNAS' expected-latency term (Cai et al., ICLR
    2019, section 3.3, ``lambda_2 E[LAT]``);
  - ``mode="target"``: ``weight * max(0, C / target - 1)``, a hinge on the relative excess over
    the budget: no pull below the target, a constant one above it. It keeps MnasNet's idea of a
    soft target relative to ``T`` (Tan et al., "MnasNet: Platform-Aware Neural Architecture
    Search for Mobile", CVPR 2019, the reward ``ACC * (LAT / T)^w``), in additive form, since a
    regularizer sees alpha and not the loss it would scale (FBNet's ``alpha log(LAT)^beta``
    factor, Wu et al., CVPR 2019, multiplies the loss).

  A regularizer sees alpha alone, so the op weights are the strategy's key-free derive weights
  at its initial state, ``derive_weights(strategy, alpha, strategy.init(alpha))``: softmax for
  DARTS, GDAS and SNAS, the Dirichlet mean for DrNAS (without its pruning mask), the
  expected weights for SPOS. The strategy's own regularizer, if any, is kept and added to.

  Args:
    strategy: a ``Strategy``.
    per_op_cost: as ``expected_cost``'s.
    weight: the cost term's coefficient, >= 0.
    target: the budget ``T`` of ``mode="target"`` (in the cost's units, including ``offset``).
    mode: ``"penalty"`` or ``"target"``.
    offset: the cost of everything alpha does not choose (``fit_op_costs``' intercept).

  Returns:
    A ``Strategy``; ``metrics`` also reports ``expected_cost``.

  Example::

    strategy = with_cost(darts(), {"cell": costs}, weight=1.0, target=8.0, mode="target",
                         offset=intercept)
  """
  if not isinstance(strategy, Strategy):
    raise TypeError(f"with_cost: expected a dnas.strategies.Strategy, got "
                    f"{type(strategy).__name__}")
  if mode not in MODES:
    raise ValueError(f"with_cost: mode must be one of {list(MODES)}, got {mode!r}")
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
    raise ValueError(f"with_cost: weight must be a number >= 0, got {weight!r}")
  if mode == "target":
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not target > 0:
      raise ValueError(f"with_cost: mode='target' needs a target > 0, got {target!r}")
  elif target is not None:
    raise ValueError(f"with_cost: target={target!r} is only used with mode='target'")

  def cost(arch):
    weights = derive_weights(strategy, arch, strategy.init(arch))
    return offset + expected_cost(weights, per_op_cost)

  def cost_term(arch):
    c = cost(arch)
    if mode == "penalty":
      return weight * c
    return weight * jnp.maximum(0.0, c / target - 1.0)

  def regularizer(arch):
    base = strategy.regularizer(arch) if strategy.regularizer is not None else 0.0
    return base + cost_term(arch)

  def metrics(arch, state):
    out = dict(strategy.metrics(arch, state)) if strategy.metrics is not None else {}
    out["expected_cost"] = cost(arch)
    return out

  return strategy._replace(regularizer=regularizer, metrics=metrics)


# --- Per-op costs ----------------------------------------------------------------------------


def _ops_of(ops: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  return tuple(sets.get(ops).ops) if isinstance(ops, str) else tuple(ops)


def op_costs(lookup: Mapping[str, float], ops: Union[str, Sequence[str]] = "nb201") -> np.ndarray:
  """A ``[K]`` cost vector in the op set's order from a user's table ``op name -> cost``.

  Args:
    lookup: every op of the set -> its cost (ms, FLOPs, ...).
    ops: an op set's name (``dnas.ops.sets``) or the ops in alpha's order.

  Returns:
    ``[K]`` float32.

  Raises:
    ValueError: an op of the set is missing, an op is not in the set, or a cost is not a
      finite number (naming the op).

  Example::

    op_costs({"none": 0, "skip_connect": 0, "nor_conv_1x1": 1, "nor_conv_3x3": 3,
              "avg_pool_3x3": 0.5})
  """
  names = _ops_of(ops)
  unknown = sorted(set(lookup) - set(names))
  missing = [op for op in names if op not in lookup]
  if unknown or missing:
    raise ValueError(f"op_costs: the lookup must give a cost for each op of {list(names)}; "
                     f"missing {missing}, unknown {unknown}")
  out = []
  for op in names:
    v = lookup[op]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
      raise ValueError(f"op_costs: the cost of {op!r} must be a finite number, got {v!r}")
    out.append(float(v))
  return np.asarray(out, np.float32)


def nb201_codes(archs: Sequence[str], ops: Union[str, Sequence[str]] = "nb201") -> np.ndarray:
  """``[N, 6]`` int32: the op index on each NB201 edge (alpha's row order) of each arch string.

  Raises:
    ValueError: an arch that is not a 4-node NB201 cell over ``ops`` (naming it).
  """
  names = _ops_of(ops)
  index = {op: i for i, op in enumerate(names)}
  out = np.empty((len(archs), len(_NB201_EDGES)), np.int32)
  for row, arch in enumerate(archs):
    try:
      g = NB201Genotype.from_arch(arch)
    except GenotypeError as e:
      raise ValueError(f"row {row}: {e}") from None
    edges = {(i + 1, src): op for i, node in enumerate(g.nodes) for op, src in node}
    if set(edges) != set(_NB201_EDGES) or any(op not in index for op in edges.values()):
      raise ValueError(f"row {row}: {arch!r} is not a 4-node NB201 cell over ops {list(names)}")
    out[row] = [index[edges[e]] for e in _NB201_EDGES]
  return out


def _design(codes: np.ndarray, k: int, per_edge: bool, reference: int) -> np.ndarray:
  """Features of the linear model: one-hot ops per edge (or op counts), minus the reference
  op's columns (they equal the intercept's), plus a column of ones."""
  n, e = codes.shape
  onehot = np.zeros((n, e, k))
  onehot[np.arange(n)[:, None], np.arange(e)[None, :], codes] = 1.0
  feats = onehot if per_edge else onehot.sum(axis=1, keepdims=True)
  feats = np.delete(feats, reference, axis=2).reshape(n, -1)
  return np.concatenate([feats, np.ones((n, 1))], axis=1)


def fit_op_costs(table: Any, column: str, per_edge: bool = True,
                 ops: Union[str, Sequence[str]] = "nb201", reference_op: str = "none"
                 ) -> Tuple[np.ndarray, float, float]:
  """Per-op costs fitted by least squares to an NB201 table's cost column.

  The linear model of a cell's cost is an intercept plus one cost per (edge, op), or per op
  shared by all edges (``per_edge=False``), the additive latency model of ProxylessNAS and
  FBNet (module docstring)::

      cost(cell) ~ b + sum_e c[e, op_e]         (or  b + sum_e c[op_e])

  Adding a constant to an edge's costs and subtracting it from ``b`` changes nothing, so the
  reference op's costs are fixed at 0 (``b`` is then the all-``reference_op`` cell's cost);
  ``expected_cost``'s gradient does not depend on that choice.

  Args:
    table: a ``dnas.benchmarks.Table`` keyed by NB201 arch strings (``load_nb201()``).
    column: the cost column, e.g. ``"pixel3_ms"``.
    per_edge: one cost per edge and op (``[6, K]``), else per op (``[K]``).
    ops: the op set's name or its ops (alpha's order).
    reference_op: the op whose costs are 0.

  Returns:
    ``(costs, intercept, r2)``: ``[6, K]`` or ``[K]`` float32, ``b``, and the fit's
    coefficient of determination on the table's rows, ``1 - SS_res / SS_tot``.

  Example::

    costs, b, r2 = fit_op_costs(load_nb201(), "pixel3_ms")
  """
  names = _ops_of(ops)
  if reference_op not in names:
    raise ValueError(f"fit_op_costs: reference_op {reference_op!r} is not one of {list(names)}")
  ref = names.index(reference_op)
  codes = nb201_codes(table.archs, names)
  return _fit(table, column, _design(codes, len(names), per_edge, ref), codes.shape[1],
              len(names), per_edge, ref)


def _fit(table: Any, column: str, x: np.ndarray, edges: int, k: int, per_edge: bool,
         ref: int) -> Tuple[np.ndarray, float, float]:
  y = np.asarray(table.column(column), np.float64)
  if not np.all(np.isfinite(y)):
    raise ValueError(f"fit_op_costs: column {column!r} has {int(np.sum(~np.isfinite(y)))} "
                     f"non-finite values")
  coef, *_ = np.linalg.lstsq(x, y, rcond=None)
  resid = y - x @ coef
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else 1.0
  rows = edges if per_edge else 1
  costs = np.insert(coef[:-1].reshape(rows, k - 1), ref, 0.0, axis=1)
  costs = costs if per_edge else costs[0]
  return costs.astype(np.float32), float(coef[-1]), r2


def fit_report(table: Any, per_edge: bool = True, suffix: str = "_ms",
               ops: Union[str, Sequence[str]] = "nb201", reference_op: str = "none"
               ) -> Dict[str, float]:
  """The R^2 of ``fit_op_costs`` for every column of ``table`` whose name ends in ``suffix``.

  Returns:
    column -> R^2, in the table's column order.

  Example::

    for column, r2 in fit_report(load_nb201()).items():
      print(f"{column:20s} {r2:.3f}")
  """
  columns = [c for c in table.column_names if c.endswith(suffix)]
  if not columns:
    raise ValueError(f"fit_report: no column of {getattr(table, 'name', 'the table')!r} ends "
                     f"in {suffix!r}; columns: {', '.join(table.column_names)}")
  names = _ops_of(ops)
  if reference_op not in names:
    raise ValueError(f"fit_report: reference_op {reference_op!r} is not one of {list(names)}")
  ref = names.index(reference_op)
  codes = nb201_codes(table.archs, names)
  x = _design(codes, len(names), per_edge, ref)
  return {c: _fit(table, c, x, codes.shape[1], len(names), per_edge, ref)[2] for c in columns}


__all__ = ["MODES", "expected_cost", "fit_op_costs", "fit_report", "nb201_codes", "op_costs",
           "with_cost"]
