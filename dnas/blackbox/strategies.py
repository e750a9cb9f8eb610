"""Built-in ask/tell strategies: random search, regularized evolution, local search.

Each factory takes hyperparameters and returns a ``Strategy`` of pure functions; see
``dnas.blackbox.base``. References:

- Random search: the baseline of NAS-Bench-201 (Dong & Yang, ICLR 2020, section 5).
- Regularized evolution: Real et al., "Regularized Evolution for Image Classifier Architecture
  Search", AAAI 2019 (Algorithm 1), with NAS-Bench-201's mutation (one edge's op changed).
- Local search: White et al., "Local Search is State of the Art for Neural Architecture Search
  Benchmarks", ICML AutoML workshop 2021 (Algorithm 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dnas.blackbox import registry
from dnas.blackbox.base import NEG_INF, Strategy, uniform_codes, where_tree


def _cards(space: Any) -> jax.Array:
  return jnp.asarray(space.cardinalities, jnp.int32)


# --- Random search ---------------------------------------------------------------------------


class RandomSearchState(NamedTuple):
  key: jax.Array
  cardinalities: jax.Array


class UniqueRandomState(NamedTuple):
  """Random search without replacement: ``order`` is a random permutation of the space's
  ``flat_index`` numbers, ``count`` the asks so far."""
  cardinalities: jax.Array
  order: jax.Array
  count: jax.Array


def _digits(flat: jax.Array, cardinalities: jax.Array) -> jax.Array:
  """The code vector of mixed-radix number ``flat`` (dimension 0 most significant)."""
  rest, digits = flat, []
  for c in reversed(range(cardinalities.shape[0])):
    digits.append(rest % cardinalities[c])
    rest = rest // cardinalities[c]
  return jnp.stack(digits[::-1]).astype(jnp.int32)


@registry.register("random_search")
def random_search(unique: bool = False) -> Strategy:
  """Random search: every ``ask`` draws each dimension uniformly and independently.

  Args:
    unique: draw without replacement (a random permutation of the whole space, so ``size``
      asks visit every architecture once; for spaces of at most 10^7 architectures, such as
      NAS-Bench-201's 15,625); after the last, the permutation starts again.

  Returns:
    A ``Strategy``; ``tell`` keeps nothing (the runner records the history).
  """

  def init(key, space):
    if not unique:
      return RandomSearchState(key, _cards(space))
    if space.size > 10 ** 7:
      raise ValueError(f"random_search: unique=True needs a space of at most 10^7 "
                       f"architectures; {space.name!r} has {space.size}")
    return UniqueRandomState(_cards(space), jax.random.permutation(key, space.size),
                             jnp.zeros((), jnp.int32))

  def ask(state):
    if unique:
      flat = state.order[state.count % state.order.shape[0]]
      return state._replace(count=state.count + 1), _digits(flat, state.cardinalities)
    key, sub = jax.random.split(state.key)
    return state._replace(key=key), uniform_codes(sub, state.cardinalities)

  def tell(state, codes, score):
    del codes, score
    return state

  return Strategy(init, ask, tell)


# --- Regularized evolution -------------------------------------------------------------------


class EvolutionState(NamedTuple):
  """Regularized evolution's state: an aging population kept as a ring buffer.

  Attributes:
    key: the PRNG key.
    cardinalities: ``[D]`` int32.
    population: ``[P, D]`` int32; slot ``count % P`` holds the oldest member once full.
    scores: ``[P]`` float32 scores of the population.
    count: how many architectures were told so far.
  """
  key: jax.Array
  cardinalities: jax.Array
  population: jax.Array
  scores: jax.Array
  count: jax.Array


def tournament(scores: jax.Array, sample: jax.Array) -> jax.Array:
  """The population slot of the best of the sampled slots ``sample`` (first on ties)."""
  return sample[jnp.argmax(scores[sample])]


def mutate(codes: jax.Array, flip: jax.Array, offsets: jax.Array,
           cardinalities: jax.Array) -> jax.Array:
  """``codes`` with every dimension where ``flip`` moved by ``offsets`` (mod cardinality).

  An offset in ``[1, cardinality)`` makes the new value differ from the old one.
  """
  moved = (codes + offsets) % jnp.maximum(cardinalities, 1)
  return jnp.where(flip, moved, codes).astype(jnp.int32)


def _mutation_draws(key, cardinalities, mutation_rate):
  """Which dimensions change and by how much; at least one dimension (of cardinality > 1)."""
  k_dim, k_off, k_flip = jax.random.split(key, 3)
  free = cardinalities > 1
  d = cardinalities.shape[0]
  dim = jax.random.choice(k_dim, d, p=free / jnp.maximum(jnp.sum(free), 1))
  one = (jnp.arange(d) == dim) & free
  offsets = jax.random.randint(k_off, (d,), 1, jnp.maximum(cardinalities, 2), jnp.int32)
  if mutation_rate is None:
    return one, offsets
  flip = jax.random.bernoulli(k_flip, mutation_rate, (d,)) & free
  return jnp.where(jnp.any(flip), flip, one), offsets


@registry.register("regularized_evolution")
def regularized_evolution(population_size: int = 10, sample_size: int = 3,
                          mutation_rate: Optional[float] = None,
                          crossover: bool = False) -> Strategy:
  """Regularized (aging) evolution (Real et al., AAAI 2019, Algorithm 1).

  The first ``population_size`` asks are uniform random. Then each ask draws ``sample_size``
  members uniformly with replacement (as Algorithm 1), takes the best as the parent and returns
  a mutated copy; each tell adds the child and removes the *oldest* member (not the worst)::

      parent = argmax_{m in sample} score(m);  child = mutate(parent)
      population <- population + {child} - {oldest}

  Mutation follows NAS-Bench-201's REA (Dong & Yang, ICLR 2020): one dimension, chosen
  uniformly, is set to a different value chosen uniformly.

  Args:
    population_size: ``P``, the members kept.
    sample_size: ``S``, the tournament size.
    mutation_rate: None for the one-dimension mutation; a float ``r`` to change each dimension
      independently with probability ``r`` (e.g. ``1 / num_dims``), and one dimension when
      none is drawn, so a child always differs from its parent.
    crossover: before mutating, mix the parent with the winner of a second tournament,
      dimension by dimension with probability 1/2 (uniform crossover).

  Returns:
    A ``Strategy`` with ``EvolutionState``.
  """
  for field, value in (("population_size", population_size), ("sample_size", sample_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"regularized_evolution: {field} must be a positive int, got {value!r}")
  if mutation_rate is not None and not 0.0 <= float(mutation_rate) <= 1.0:
    raise ValueError(f"regularized_evolution: mutation_rate must be in [0, 1] or None, got "
                     f"{mutation_rate!r}")

  def init(key, space):
    cards = _cards(space)
    return EvolutionState(key, cards, jnp.zeros((population_size, cards.shape[0]), jnp.int32),
                          jnp.full((population_size,), NEG_INF, jnp.float32),
                          jnp.zeros((), jnp.int32))

  def ask(state):
    key, k_rand, k_s1, k_s2, k_mix, k_mut = jax.random.split(state.key, 6)
    cards = state.cardinalities
    sample = jax.random.randint(k_s1, (sample_size,), 0, population_size)
    parent = state.population[tournament(state.scores, sample)]
    if crossover:
      sample2 = jax.random.randint(k_s2, (sample_size,), 0, population_size)
      other = state.population[tournament(state.scores, sample2)]
      parent = jnp.where(jax.random.bernoulli(k_mix, 0.5, parent.shape), parent, other)
    flip, offsets = _mutation_draws(k_mut, cards, mutation_rate)
    child = mutate(parent, flip, offsets, cards)
    codes = jnp.where(state.count < population_size, uniform_codes(k_rand, cards), child)
    return state._replace(key=key), codes

  def tell(state, codes, score):
    slot = state.count % population_size
    return state._replace(
        population=state.population.at[slot].set(jnp.asarray(codes, jnp.int32)),
        scores=state.scores.at[slot].set(jnp.asarray(score, jnp.float32)),
        count=state.count + 1)

  return Strategy(init, ask, tell)


# --- Local search ----------------------------------------------------------------------------


class LocalSearchState(NamedTuple):
  """Local search's state.

  Attributes:
    key: the PRNG key.
    cardinalities: ``[D]`` int32.
    neighbour_dim: ``[N]`` the dimension neighbour ``j`` changes (``N = sum(card - 1)``).
    neighbour_offset: ``[N]`` by how much (mod cardinality), in ``[1, card)``.
    order: ``[N]`` the random order in which the current neighbourhood is tried.
    position: how many neighbours of ``center`` were told.
    started: False until the first (random) point of a climb is told.
    center, center_score: the current point of the climb.
    sweep_best, sweep_best_score: the best neighbour of ``center`` seen so far.
  """
  key: jax.Array
  cardinalities: jax.Array
  neighbour_dim: jax.Array
  neighbour_offset: jax.Array
  order: jax.Array
  position: jax.Array
  started: jax.Array
  center: jax.Array
  center_score: jax.Array
  sweep_best: jax.Array
  sweep_best_score: jax.Array


@registry.register("local_search")
def local_search(first_improvement: bool = False) -> Strategy:
  """Hill climbing over one-dimension neighbours with random restarts (White et al., 2021).

  From a uniform random start, evaluate the neighbours of the current point (every code vector
  that differs in one dimension) in random order; move to the best of them if it beats the
  current point, otherwise the point is a local optimum and the climb restarts from a new
  random point (White et al., Algorithm 1, with restarts while budget remains).

  Args:
    first_improvement: move as soon as a neighbour beats the current point, instead of after
      the whole neighbourhood.

  Returns:
    A ``Strategy`` with ``LocalSearchState``.
  """

  def init(key, space):
    cards = _cards(space)
    dims = [d for d, c in enumerate(space.cardinalities) for _ in range(c - 1)]
    offsets = [o for c in space.cardinalities for o in range(1, c)]
    if not dims:
      raise ValueError(f"local_search: space {space.name!r} has one architecture; nothing to "
                       f"search")
    key, sub = jax.random.split(key)
    n = len(dims)
    d = cards.shape[0]
    return LocalSearchState(
        key, cards, jnp.asarray(dims, jnp.int32), jnp.asarray(offsets, jnp.int32),
        jax.random.permutation(sub, n).astype(jnp.int32), jnp.zeros((), jnp.int32),
        jnp.zeros((), bool), jnp.zeros((d,), jnp.int32), jnp.full((), NEG_INF, jnp.float32),
        jnp.zeros((d,), jnp.int32), jnp.full((), NEG_INF, jnp.float32))

  def neighbour(state):
    j = state.order[state.position]
    flip = jnp.arange(state.center.shape[0]) == state.neighbour_dim[j]
    return mutate(state.center, flip, state.neighbour_offset[j], state.cardinalities)

  def ask(state):
    key, sub = jax.random.split(state.key)
    codes = jnp.where(state.started, neighbour(state),
                      uniform_codes(sub, state.cardinalities))
    return state._replace(key=key), codes

  def move_to(state, codes, score, key):
    """A new climb step from ``codes``: a fresh neighbourhood order, an empty sweep."""
    return state._replace(
        order=jax.random.permutation(key, state.order.shape[0]).astype(jnp.int32),
        position=jnp.zeros((), jnp.int32), started=jnp.ones((), bool), center=codes,
        center_score=score, sweep_best=codes, sweep_best_score=jnp.full((), NEG_INF))

  def tell(state, codes, score):
    codes = jnp.asarray(codes, jnp.int32)
    score = jnp.asarray(score, jnp.float32)
    key, k_order = jax.random.split(state.key)
    state = state._replace(key=key)
    better = score > state.sweep_best_score
    swept = state._replace(
        position=state.position + 1,
        sweep_best=jnp.where(better, codes, state.sweep_best),
        sweep_best_score=jnp.where(better, score, state.sweep_best_score))
    done = swept.position == state.order.shape[0]
    improved = swept.sweep_best_score > state.center_score
    if first_improvement:
      move_now = score > state.center_score
    else:
      move_now = done & improved
    moved = move_to(swept, swept.sweep_best, swept.sweep_best_score, k_order)
    restarted = swept._replace(started=jnp.zeros((), bool), position=jnp.zeros((), jnp.int32))
    climbing = where_tree(move_now, moved,
                          where_tree(done & ~improved, restarted, swept))
    started = move_to(state, codes, score, k_order)
    return where_tree(state.started, climbing, started)

  return Strategy(init, ask, tell)


# --- Exhaustive search -----------------------------------------------------------------------


class ExhaustiveState(NamedTuple):
  """``count``: the architectures asked so far; ask ``t`` is the ``t``-th in ``flat_index``
  order (wrapping around after the last)."""
  cardinalities: jax.Array
  count: jax.Array


@registry.register("exhaustive")
def exhaustive() -> Strategy:
  """Every architecture once, in mixed-radix order (dimension 0 most significant).

  The reference every strategy is measured against on a table: with the whole space as budget
  it finds the table's argmax. Draws nothing (the key is unused).
  """

  def init(key, space):
    del key
    return ExhaustiveState(_cards(space), jnp.zeros((), jnp.int32))

  def ask(state):
    # The digits of `count` in the mixed radix of the cardinalities, last dimension fastest.
    return state._replace(count=state.count + 1), _digits(state.count, state.cardinalities)

  def tell(state, codes, score):
    del codes, score
    return state

  return Strategy(init, ask, tell)
