"""Multi-objective discrete search: Pareto fronts, constraints and an NSGA-II ask/tell strategy.

Every objective is *maximized*; a cost (latency, parameters) is negated by the caller. Point
``a`` dominates ``b`` when it is at least as good in every objective and better in one::

    a > b  <=>  all_m a_m >= b_m  and  any_m a_m > b_m

- ``pareto_front``: the non-dominated mask; ``non_dominated_sort``: the front index (rank) of
  every point, 0 for the non-dominated ones; ``crowding_distance``: NSGA-II's density estimate
  within each front. All three are from Deb, Pratap, Agarwal & Meyarivan, "A Fast and Elitist
  Multiobjective Genetic Algorithm: NSGA-II", IEEE TEC 6(2), 2002 (sections III-A and III-B).
- ``hypervolume_2d``: the area two objectives' points dominate above a reference point
  (Zitzler & Thiele, "Multiobjective Evolutionary Algorithms: A Comparative Case Study and the
  Strength Pareto Approach", IEEE TEC 3(4), 1999, the "size of the space covered").
- ``parse_constraint`` / ``feasible_mask``: constraints such as ``"pixel3_ms<=5"`` over a table's
  columns.
- ``nsga2``: a steady-state NSGA-II ask/tell strategy (registered as ``"nsga2"``) whose ``tell``
  takes a vector of objectives; ``run_multi_on_table`` runs it (or any strategy that ignores
  its scores, such as ``random_search``) against a table, ``lax.scan`` over the budget and
  ``vmap`` over runs.
- ``plot_front``: all evaluated points, their front and a chosen point, as PNG or PDF.

Example::

    table = benchmarks.load_nb201()
    space = blackbox.nb201_space(table)
    objectives = np.stack([table.column("cifar10_valid"), -table.column("pixel3_ms")], 1)
    history = run_multi_on_table(nsga2(), space, objectives, 200, jax.random.split(key, 20))
    front = front_of_history(history.objectives)          # [20, 200] bool
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from dnas import io
from dnas.blackbox import registry
from dnas.blackbox.base import NEG_INF, Strategy, uniform_codes
from dnas.blackbox.strategies import _mutation_draws, mutate

Maximize = Union[bool, Sequence[bool]]

# Rows compared at once by the numpy front (memory: chunk x rows x objectives booleans).
_CHUNK = 1024


def _is_jax(x: Any) -> bool:
  return isinstance(x, jax.Array)


def _signs(maximize: Maximize, m: int) -> np.ndarray:
  """+1 for a maximized objective, -1 for a minimized one, as a ``[m]`` float array."""
  if isinstance(maximize, (bool, np.bool_)):
    return np.full(m, 1.0 if maximize else -1.0)
  flags = list(maximize)
  if len(flags) != m or not all(isinstance(f, (bool, np.bool_)) for f in flags):
    raise ValueError(f"maximize must be a bool or {m} bools (one per objective), got "
                     f"{maximize!r}")
  return np.where(flags, 1.0, -1.0)


def _as_points(objectives: Any, maximize: Maximize, name: str = "objectives"):
  """``objectives`` as ``[N, M]`` floats oriented so that every column is maximized."""
  xp = jnp if _is_jax(objectives) else np
  f = xp.asarray(objectives, dtype=xp.float32 if xp is jnp else np.float64)
  if f.ndim != 2:
    raise ValueError(f"{name} must be [points, objectives], got shape {f.shape}")
  if xp is np and np.isnan(f).any():
    row = int(np.argwhere(np.isnan(f))[0, 0])
    raise ValueError(f"{name} row {row} is NaN: {f[row].tolist()}")
  return f * xp.asarray(_signs(maximize, f.shape[1]), f.dtype)


def _dominance(a, b):
  """``[len(a), len(b)]``: ``a[i]`` dominates ``b[j]`` (maximizing), numpy or jnp."""
  xp = jnp if _is_jax(a) or _is_jax(b) else np
  ge = xp.all(a[:, None, :] >= b[None, :, :], axis=-1)
  gt = xp.any(a[:, None, :] > b[None, :, :], axis=-1)
  return ge & gt


def pareto_front(objectives: Any, maximize: Maximize = True) -> Any:
  """The non-dominated points: ``mask[i]`` is True when no point dominates point ``i``.

  Equal points do not dominate each other, so duplicates of a front point are all on it.
  A numpy input is compared in chunks (memory ``O(1024 * N)``); a ``jax.Array`` all at once
  (``O(N^2)``, for populations; runs under ``jit`` and ``vmap``).

  Args:
    objectives: ``[N, M]`` numpy or jax array.
    maximize: True (every objective maximized), False, or one bool per objective.

  Returns:
    ``[N]`` bool, of the input's kind.

  Example::

    pareto_front(np.array([[1, 3], [2, 2], [1, 1]]))   # [True, True, False]
  """
  f = _as_points(objectives, maximize)
  if _is_jax(f):
    return ~jnp.any(_dominance(f, f), axis=0)
  out = np.ones(f.shape[0], bool)
  for start in range(0, f.shape[0], _CHUNK):
    out &= ~np.any(_dominance(f[start:start + _CHUNK], f), axis=0)
  return out


def _ranks_jax(f: jax.Array) -> jax.Array:
  """NSGA-II's fronts by peeling: front ``r`` is what only fronts ``< r`` dominate."""
  dom = _dominance(f, f)
  n = f.shape[0]

  def body(carry):
    ranks, r = carry
    open_ = ranks < 0
    dominated = jnp.any(dom & open_[:, None], axis=0)
    return jnp.where(open_ & ~dominated, r, ranks), r + 1

  ranks, _ = jax.lax.while_loop(lambda c: jnp.any(c[0] < 0), body,
                                (jnp.full((n,), -1, jnp.int32), jnp.zeros((), jnp.int32)))
  return ranks


def non_dominated_sort(objectives: Any, maximize: Maximize = True) -> Any:
  """The front index of every point (Deb et al., 2002, section III-A): 0 for the Pareto front,
  1 for the front of what remains without it, and so on.

  Args:
    objectives: ``[N, M]`` numpy or jax array (a jax array runs under ``jit`` and ``vmap``).
    maximize: True, False, or one bool per objective.

  Returns:
    ``[N]`` int32 ranks, of the input's kind.

  Example::

    non_dominated_sort(np.array([[1, 3], [2, 2], [1, 1], [0, 0]]))   # [0, 0, 1, 2]
  """
  f = _as_points(objectives, maximize)
  if _is_jax(f):
    return _ranks_jax(f)
  ranks = np.full(f.shape[0], -1, np.int32)
  left = np.arange(f.shape[0])
  r = 0
  while left.size:
    front = pareto_front(f[left])
    ranks[left[front]] = r
    left = left[~front]
    r += 1
  return ranks


def _crowding_jax(f: jax.Array, ranks: jax.Array) -> jax.Array:
  n, m = f.shape
  total = jnp.zeros((n,), f.dtype)
  for j in range(m):
    # Sort by (rank, value): each front is one contiguous run, ordered by objective j.
    order = jnp.lexsort((f[:, j], ranks))
    v, r = f[order, j], ranks[order]
    lo = jax.ops.segment_min(v, r, num_segments=n)[r]
    hi = jax.ops.segment_max(v, r, num_segments=n)[r]
    prev_same = jnp.concatenate([jnp.zeros((1,), bool), r[1:] == r[:-1]])
    next_same = jnp.concatenate([r[:-1] == r[1:], jnp.zeros((1,), bool)])
    v_prev = jnp.concatenate([v[:1], v[:-1]])
    v_next = jnp.concatenate([v[1:], v[-1:]])
    gap = (v_next - v_prev) / (hi - lo)
    # Equal or infinite values (an infeasible front at -inf) add nothing instead of NaN.
    gap = jnp.where(jnp.isfinite(gap), gap, 0.0)
    d = jnp.where(prev_same & next_same, gap, jnp.inf)
    total = total.at[order].add(d)
  return total


def crowding_distance(objectives: Any, ranks: Any = None, maximize: Maximize = True) -> Any:
  """NSGA-II's crowding distance of every point within its front (Deb et al., 2002, III-B).

  Per objective ``m``, the points of a front sorted by it; the two ends get ``inf`` and each
  other point the gap between its neighbours over the front's range::

      d_i = sum_m (f_m[next(i)] - f_m[prev(i)]) / (max_front f_m - min_front f_m)

  A front whose range in ``m`` is zero (or infinite) adds 0 for ``m`` to its inner points.

  Args:
    objectives: ``[N, M]`` numpy or jax array.
    ranks: ``[N]`` front indices (``non_dominated_sort``); None computes them.
    maximize: True, False, or one bool per objective (it does not change the distances).

  Returns:
    ``[N]`` distances (``inf`` at the ends of each front), of the input's kind.

  Example::

    crowding_distance(np.array([[0., 6.], [1., 5.], [2., 2.], [5., 1.], [6., 0.]]))
    # [inf, 2/6 + 4/6, 4/6 + 4/6, 4/6 + 2/6, inf] = [inf, 1, 4/3, 1, inf]
  """
  f = _as_points(objectives, maximize)
  r = non_dominated_sort(f) if ranks is None else ranks
  if np.shape(r) != (f.shape[0],):
    raise ValueError(f"ranks must be [{f.shape[0]}], got shape {np.shape(r)}")
  out = jax.jit(_crowding_jax)(jnp.asarray(f, jnp.float32), jnp.asarray(r, jnp.int32))
  return out if _is_jax(objectives) else np.asarray(out, np.float64)


def hypervolume_2d(points: Any, reference: Sequence[float],
                   maximize: Maximize = True) -> Any:
  """The area of the region the points dominate and that dominates ``reference`` (2 objectives).

  Sweeping the points by the first objective, best first, each adds the rectangle between
  it, the reference and the best second objective seen so far::

      HV = sum_i (x_i - r_x) * max(0, y_i - max_{j before i} y_j),   y_{before first} = r_y.

  Points that do not dominate ``reference`` (and ``-inf`` points) add nothing. Pure ``jnp``:
  runs under ``jit`` and ``vmap`` (over runs); a numpy input gives a Python float.

  Args:
    points: ``[N, 2]``.
    reference: two numbers, worse than the points of interest in both objectives.
    maximize: True, False, or two bools.

  Returns:
    The hypervolume (in the objectives' units, product of both).

  Example::

    hypervolume_2d(np.array([[3., 1.], [1., 3.]]), (0., 0.))   # 5.0
  """
  as_numpy = not _is_jax(points)
  f = _as_points(jnp.asarray(points, jnp.float32) if as_numpy else points, maximize, "points")
  if f.shape[1] != 2:
    raise ValueError(f"hypervolume_2d needs 2 objectives, got points of shape {f.shape}")
  if as_numpy and np.isnan(np.asarray(points, np.float64)).any():
    raise ValueError("hypervolume_2d: points contain NaN")
  ref = jnp.asarray(reference, jnp.float32).reshape(2) * jnp.asarray(_signs(maximize, 2),
                                                                      jnp.float32)
  g = jnp.maximum(f, ref)
  order = jnp.lexsort((-g[:, 1], -g[:, 0]))
  x, y = g[order, 0], g[order, 1]
  seen = jnp.concatenate([ref[1:], jax.lax.cummax(y)[:-1]])
  hv = jnp.sum((x - ref[0]) * jnp.maximum(0.0, y - seen))
  return float(hv) if as_numpy else hv


# --- Constraints -----------------------------------------------------------------------------

OPERATORS = ("<=", ">=", "<", ">", "==")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+?)\s*(<=|>=|==|<|>)\s*(\S.*?)\s*$")


class Constraint(NamedTuple):
  """A bound on one table column, such as ``pixel3_ms <= 5``.

  Attributes:
    column: the column's name.
    op: one of ``OPERATORS``.
    bound: the number compared against.
    text: the text it was parsed from (for messages).
  """
  column: str
  op: str
  bound: float
  text: str

  def holds(self, values: Any) -> Any:
    """Where ``values`` (of ``column``) satisfy the constraint (numpy or jnp)."""
    v = values
    return {"<=": v <= self.bound, ">=": v >= self.bound, "<": v < self.bound,
            ">": v > self.bound, "==": v == self.bound}[self.op]


def parse_constraint(text: str, columns: Sequence[str]) -> Constraint:
  """Parses ``"<column><op><number>"``, e.g. ``"pixel3_ms<=5"`` or ``"cifar10_valid >= 80"``.

  Args:
    text: the constraint.
    columns: the valid column names (``table.column_names``).

  Returns:
    A ``Constraint``.

  Raises:
    ValueError: naming ``text`` and what is wrong: no operator (listing ``OPERATORS``), an
      unknown column (listing ``columns``), or a bound that is not a finite number.
  """
  if not isinstance(text, str):
    raise ValueError(f"constraint {text!r}: expected a string like 'pixel3_ms<=5'")
  match = _CONSTRAINT.match(text)
  if match is None:
    raise ValueError(f"constraint {text!r}: expected '<column><operator><number>' with an "
                     f"operator among {', '.join(OPERATORS)} (e.g. 'pixel3_ms<=5')")
  column, op, number = match.groups()
  if column not in columns:
    raise ValueError(f"constraint {text!r}: unknown column {column!r}; columns: "
                     f"{', '.join(columns)}")
  try:
    bound = float(number)
  except ValueError:
    bound = float("nan")
  if not np.isfinite(bound):
    raise ValueError(f"constraint {text!r}: the bound {number!r} is not a finite number")
  return Constraint(column, op, bound, text)


def feasible_mask(table: Any, constraints: Sequence[Union[str, Constraint]]) -> np.ndarray:
  """The rows of ``table`` that satisfy every constraint (all rows when there are none).

  Args:
    table: a ``dnas.benchmarks.Table`` (anything with ``column_names`` and ``column(name)``).
    constraints: strings (``parse_constraint``) or ``Constraint``s.

  Returns:
    ``[rows]`` bool numpy array.

  Example::

    ok = feasible_mask(table, ["pixel3_ms<=5", "cifar10_valid>=80"])
  """
  if isinstance(constraints, (str, Constraint)):
    constraints = [constraints]
  names = tuple(table.column_names)
  mask = np.ones(len(table.column(names[0])), bool)
  for c in constraints:
    c = c if isinstance(c, Constraint) else parse_constraint(c, names)
    if c.column not in names:
      raise ValueError(f"constraint {c.text!r}: unknown column {c.column!r}; columns: "
                       f"{', '.join(names)}")
    mask &= np.asarray(c.holds(table.column(c.column)), bool)
  return mask


# --- NSGA-II, steady state -------------------------------------------------------------------


class NSGA2State(NamedTuple):
  """The state of ``nsga2``.

  Attributes:
    key: the PRNG key.
    cardinalities: ``[D]`` int32.
    population: ``[P, D]`` int32 members.
    objectives: ``[P, M]`` float32, their objectives (``-inf`` in unfilled slots).
    ranks: ``[P]`` int32, their front indices within the population.
    crowding: ``[P]`` float32, their crowding distances within their fronts.
    count: how many architectures were told so far.
  """
  key: jax.Array
  cardinalities: jax.Array
  population: jax.Array
  objectives: jax.Array
  ranks: jax.Array
  crowding: jax.Array
  count: jax.Array


def _rank_and_crowding(f: jax.Array) -> Tuple[jax.Array, jax.Array]:
  ranks = _ranks_jax(f)
  return ranks, _crowding_jax(f, ranks)


def _lexi_best(ranks: jax.Array, crowd: jax.Array, among: jax.Array) -> jax.Array:
  """Of the indices ``among``, the one of lowest rank, then largest crowding (Deb's ``<_n``)."""
  r, c = ranks[among], crowd[among]
  return among[jnp.argmax(jnp.where(r == r.min(), c, -1.0))]


@registry.register("nsga2")
def nsga2(num_objectives: int = 2, population_size: int = 20, sample_size: int = 2,
          replacement: str = "worst", mutation_rate: Optional[float] = None) -> Strategy:
  """Steady-state NSGA-II: one child per ask, selected and kept by (rank, crowding).

  NSGA-II (Deb et al., IEEE TEC 2002) compares two members by the crowded-comparison order
  ``<_n``: the lower front index (``non_dominated_sort``) wins, and within a front the larger
  ``crowding_distance``. Here it is run one child at a time, as regularized evolution (Real et
  al., AAAI 2019) is, so it fits the ask/tell loop; the steady-state form of NSGA-II is studied
  by Durillo, Nebro, Luna & Alba, "On the Effect of the Steady-State Selection Scheme in
  Multi-Objective Genetic Algorithms", EMO 2009:

  - the first ``population_size`` asks are uniform random;
  - ``ask``: a tournament of ``sample_size`` members drawn with replacement, won by ``<_n``;
    the child is the winner with one dimension changed (NAS-Bench-201's mutation, as
    ``regularized_evolution``);
  - ``tell``: ``replacement="worst"`` (elitist, NSGA-II's (mu + 1) truncation): the child
    joins and the worst member of the ``P + 1`` by ``<_n`` leaves (possibly the child);
    ``"oldest"``: the child replaces the oldest member (aging, regularized evolution).

  ``tell`` takes ``[num_objectives]`` objectives, all maximized (negate costs); ``-inf`` marks
  an infeasible architecture, which every feasible one dominates.

  Args:
    num_objectives: ``M``, the length of the objective vectors ``tell`` receives.
    population_size: ``P``.
    sample_size: the tournament size (NSGA-II: 2, binary tournament).
    replacement: ``"worst"`` or ``"oldest"``.
    mutation_rate: as ``regularized_evolution``'s (None: one dimension per child).

  Returns:
    A ``Strategy`` with ``NSGA2State``.

  Example::

    strategy = nsga2(num_objectives=2, population_size=20)
    history = run_multi_on_table(strategy, space, objectives, 200, keys)
  """
  for field, value in (("num_objectives", num_objectives), ("population_size", population_size),
                       ("sample_size", sample_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"nsga2: {field} must be a positive int, got {value!r}")
  if replacement not in ("worst", "oldest"):
    raise ValueError(f"nsga2: replacement must be 'worst' or 'oldest', got {replacement!r}")
  if mutation_rate is not None and not 0.0 <= float(mutation_rate) <= 1.0:
    raise ValueError(f"nsga2: mutation_rate must be in [0, 1] or None, got {mutation_rate!r}")
  p, m = population_size, num_objectives

  def init(key, space):
    cards = jnp.asarray(space.cardinalities, jnp.int32)
    return NSGA2State(key, cards, jnp.zeros((p, cards.shape[0]), jnp.int32),
                      jnp.full((p, m), NEG_INF, jnp.float32), jnp.zeros((p,), jnp.int32),
                      jnp.full((p,), jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))

  def ask(state):
    key, k_rand, k_sample, k_mut = jax.random.split(state.key, 4)
    sample = jax.random.randint(k_sample, (sample_size,), 0, p)
    winner = _lexi_best(state.ranks, state.crowding, sample)
    flip, offsets = _mutation_draws(k_mut, state.cardinalities, mutation_rate)
    child = mutate(state.population[winner], flip, offsets, state.cardinalities)
    codes = jnp.where(state.count < p, uniform_codes(k_rand, state.cardinalities), child)
    return state._replace(key=key), codes

  def tell(state, codes, objectives):
    codes = jnp.asarray(codes, jnp.int32)
    f = jnp.asarray(objectives, jnp.float32)
    if f.shape != (m,):
      raise ValueError(f"nsga2: tell expects {m} objectives (num_objectives), got shape "
                       f"{f.shape}")
    if replacement == "oldest":
      slot = state.count % p
      objs = state.objectives.at[slot].set(f)
      ranks, crowd = _rank_and_crowding(objs)
      return state._replace(population=state.population.at[slot].set(codes), objectives=objs,
                            ranks=ranks, crowding=crowd, count=state.count + 1)
    pool = jnp.concatenate([state.objectives, f[None]], axis=0)
    pool_ranks = _ranks_jax(pool)
    crowd = _crowding_jax(pool, pool_ranks)
    # The last front's most crowded member leaves; of equals, the newest (the child first).
    # While filling, the unfilled slots (-inf, so in the last front) are the first ones, and
    # the first of them leaves instead.
    worst = jnp.lexsort((-jnp.arange(p + 1), crowd, -pool_ranks))[0]
    drop = jnp.where(state.count < p, 0, worst)
    members = jnp.nonzero(jnp.arange(p + 1) != drop, size=p)[0]
    objs = pool[members]
    # Removing a member of the last front leaves every other rank as it was.
    ranks = pool_ranks[members]
    return state._replace(
        population=jnp.concatenate([state.population, codes[None]], axis=0)[members],
        objectives=objs, ranks=ranks, crowding=_crowding_jax(objs, ranks),
        count=state.count + 1)

  return Strategy(init, ask, tell)


# --- Running against a table -----------------------------------------------------------------


class MultiHistory(NamedTuple):
  """What a multi-objective search evaluated, in order (a leading ``[runs]`` axis).

  Attributes:
    codes: ``[..., budget, num_dims]`` int32, the architectures asked.
    objectives: ``[..., budget, M]`` float32, their table objectives (whatever feasibility).
    feasible: ``[..., budget]`` bool, whether each satisfied the constraints.
  """
  codes: Any
  objectives: Any
  feasible: Any


def run_multi_on_table(strategy: Strategy, space: Any, objectives_matrix: Any, budget: int,
                       keys: jax.Array, feasible: Any = None) -> MultiHistory:
  """Runs ``len(keys)`` independent multi-objective searches against a table, in JAX.

  Each evaluation gathers the row ``space.table_index(codes)`` of ``objectives_matrix``. An
  infeasible row (``feasible`` False) is told to the strategy as ``-inf`` in every objective
  (the death penalty: any feasible point dominates it, and it never enters a front); the
  history keeps its true objectives and marks it in ``feasible``.

  Args:
    strategy: a ``Strategy`` whose ``tell`` takes ``[M]`` objectives (``nsga2``), or one that
      ignores its scores (``random_search``).
    space: a ``Space`` bound to the table (``nb201_space(table)``).
    objectives_matrix: ``[rows, M]``, all maximized (negate costs).
    budget: evaluations per run.
    keys: ``[runs]`` PRNG keys.
    feasible: ``[rows]`` bool (``feasible_mask``), or None for no constraints.

  Returns:
    A ``MultiHistory`` with a leading ``[runs]`` axis.
  """
  if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
    raise ValueError(f"budget must be a positive int (evaluations), got {budget!r}")
  table = jnp.asarray(objectives_matrix, jnp.float32)
  if table.ndim != 2:
    raise ValueError(f"objectives_matrix must be [rows, objectives], got shape {table.shape}")
  if feasible is None:
    ok = jnp.ones(table.shape[0], bool)
  else:
    ok = jnp.asarray(feasible, bool)
    if ok.shape != table.shape[:1]:
      raise ValueError(f"feasible must be [{table.shape[0]}] bool (one per row), got shape "
                       f"{ok.shape}")
  told = jnp.where(ok[:, None], table, NEG_INF)

  def one(key):
    def step(state, _):
      state, codes = strategy.ask(state)
      row = space.table_index(codes)
      return strategy.tell(state, codes, told[row]), (codes, table[row], ok[row])

    _, out = jax.lax.scan(step, strategy.init(key, space), None, length=budget)
    return MultiHistory(*out)

  return jax.jit(jax.vmap(one))(keys)


def front_of_history(objectives: Any, feasible: Any = None, maximize: Maximize = True) -> Any:
  """The evaluated points on their run's Pareto front (infeasible ones never are).

  Args:
    objectives: ``[..., budget, M]`` (``MultiHistory.objectives``), numpy or jax.
    feasible: ``[..., budget]`` bool, or None (all feasible).
    maximize: True, False, or one bool per objective.

  Returns:
    ``[..., budget]`` bool numpy array.
  """
  f = np.asarray(objectives, np.float64)
  if f.ndim < 2:
    raise ValueError(f"objectives must be [..., budget, objectives], got shape {f.shape}")
  lead = f.shape[:-2]
  ok = np.ones(f.shape[:-1], bool) if feasible is None else np.asarray(feasible, bool)
  if ok.shape != f.shape[:-1]:
    raise ValueError(f"feasible must be {f.shape[:-1]}, got shape {ok.shape}")
  sign = _signs(maximize, f.shape[-1])
  f = np.where(ok[..., None], f * sign, -np.inf).reshape((-1,) + f.shape[-2:])
  flat_ok = ok.reshape((-1, f.shape[1]))
  out = np.stack([pareto_front(run) & o for run, o in zip(f, flat_ok)])
  return out.reshape(lead + f.shape[1:2])


# --- Drawing ---------------------------------------------------------------------------------


def plot_front(points: Any, front_mask: Any, path: str, chosen: Optional[int] = None,
               labels: Sequence[str] = ("objective 0", "objective 1"),
               title: Optional[str] = None) -> str:
  """Draws two objectives' points, their front (as a staircase) and a chosen point.

  Args:
    points: ``[N, 2]`` in the units to show (a cost may be drawn positive).
    front_mask: ``[N]`` bool, the front's points (``pareto_front``).
    path: the file to write, ``.png`` or ``.pdf``; written atomically (a temporary file,
      then ``os.replace``).
    chosen: the index of a point to mark (e.g. the best feasible one), or None.
    labels: the axes' labels.
    title: the figure's title, or None.

  Returns:
    ``path``.
  """
  pts = np.asarray(points, np.float64)
  mask = np.asarray(front_mask, bool)
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f"plot_front: points must be [N, 2], got shape {pts.shape}")
  if mask.shape != pts.shape[:1]:
    raise ValueError(f"plot_front: front_mask must be [{pts.shape[0]}], got shape {mask.shape}")
  if chosen is not None and not 0 <= int(chosen) < pts.shape[0]:
    raise ValueError(f"plot_front: chosen={chosen!r} is not a point index in [0, "
                     f"{pts.shape[0]})")
  if len(labels) != 2:
    raise ValueError(f"plot_front: labels must be two strings, got {labels!r}")
  fmt = path.rsplit(".", 1)[-1].lower() if "." in path else ""
  if fmt not in ("png", "pdf"):
    raise ValueError(f"plot_front: {path}: use the extension .png or .pdf")
  # A bare Agg figure: no pyplot, no global state, no GUI backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  import io as _io  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5.0, 4.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  finite = np.all(np.isfinite(pts), axis=1)
  ax.scatter(pts[finite & ~mask, 0], pts[finite & ~mask, 1], s=8, c="#b0b0b0",
             label="evaluated")
  front = pts[mask & finite]
  front = front[np.argsort(front[:, 0])]
  ax.plot(front[:, 0], front[:, 1], "o-", ms=4, c="#1f77b4", drawstyle="steps-post",
          label="Pareto front")
  if chosen is not None:
    ax.scatter([pts[chosen, 0]], [pts[chosen, 1]], s=120, marker="*", c="#d62728", zorder=3,
               label="chosen")
  ax.set_xlabel(labels[0])
  ax.set_ylabel(labels[1])
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  buf = _io.BytesIO()
  fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=150)
  io.atomic_write_bytes(path, buf.getvalue())
  return path


__all__ = ["Constraint", "MultiHistory", "NSGA2State", "OPERATORS", "crowding_distance",
           "feasible_mask", "front_of_history", "hypervolume_2d", "non_dominated_sort", "nsga2",
           "parse_constraint", "pareto_front", "plot_front", "run_multi_on_table"]
