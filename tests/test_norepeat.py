"""``no_repeat``: every strategy, given the whole space as budget, evaluates each architecture
once and so finds the argmax."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import benchmarks, blackbox, explore
from dnas.blackbox.base import Strategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))

pytestmark = pytest.mark.usefixtures("fast_compile")

CARDS = (3, 4, 5)
OPTIONS = {"bananas": dict(encoding="onehot", capacity=60, num_init=5, num_members=2,
                           hidden=(8,), fit_steps=20, num_candidates=20, num_random=5,
                           queries_per_fit=5),
           "regularized_evolution": dict(population_size=5, sample_size=2)}


def _grid_space(cards=CARDS):
  space = blackbox.categorical_space({f"d{i}": list(range(c)) for i, c in enumerate(cards)})
  return dataclasses.replace(space, lookup=jnp.arange(space.size, dtype=jnp.int32))


def _scores(space, seed=0):
  return np.random.default_rng(seed).permutation(space.size).astype(np.float32)


def _single_objective_names():
  return [n for n in blackbox.names() if n != "nsga2"]


@pytest.mark.parametrize("name", _single_objective_names())
def test_every_strategy_visits_each_architecture_once(name):
  space = _grid_space()
  scores = _scores(space)
  strategy = blackbox.no_repeat(blackbox.get(name, **OPTIONS.get(name, {})))
  hist = jax.device_get(blackbox.run_on_table(
      strategy, space, scores, space.size, jax.random.split(jax.random.key(1), 2)))
  flat = np.asarray(space.flat_index(hist.codes))
  for run in flat:
    assert sorted(run.tolist()) == list(range(space.size)), name
  np.testing.assert_array_equal(hist.best[:, -1], scores.max())
  np.testing.assert_array_equal(hist.scores, scores[flat])


def test_without_the_wrapper_evolution_repeats_and_can_miss_the_argmax():
  # The contrast the wrapper exists for: plain REA spends the same budget on repeats.
  space = _grid_space()
  scores = _scores(space)
  strategy = blackbox.get("regularized_evolution", **OPTIONS["regularized_evolution"])
  hist = jax.device_get(blackbox.run_on_table(
      strategy, space, scores, space.size, jax.random.split(jax.random.key(1), 2)))
  flat = np.asarray(space.flat_index(hist.codes))
  assert all(len(set(run.tolist())) < space.size for run in flat)


def test_nsga2_visits_each_architecture_once():
  space = _grid_space()
  objectives = np.stack([_scores(space, 0), _scores(space, 1)], -1)
  strategy = blackbox.no_repeat(blackbox.nsga2(population_size=6), score_shape=(2,))
  hist = jax.device_get(blackbox.run_multi_on_table(
      strategy, space, objectives, space.size, jax.random.split(jax.random.key(2), 2)))
  for run in np.asarray(space.flat_index(hist.codes)):
    assert sorted(run.tolist()) == list(range(space.size))




def _stuck_strategy():
  """Always proposes [0, 0, 0]; its state counts the tells and sums the scores told."""
  def init(key, space):
    del key, space
    return jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), jnp.zeros((3,), jnp.int32)

  def ask(state):
    return state, jnp.zeros((3,), jnp.int32)

  def tell(state, codes, score):
    tells, total, _ = state
    return tells + 1, total + score, jnp.asarray(codes, jnp.int32)

  return Strategy(init, ask, tell)


def test_repeats_are_told_from_memory_then_replaced_by_hand():
  space = _grid_space()
  strategy = blackbox.no_repeat(_stuck_strategy(), max_retries=3)
  state = strategy.init(jax.random.key(0), space)
  state, codes = strategy.ask(state)
  assert codes.tolist() == [0, 0, 0]            # new: passed through
  state = strategy.tell(state, codes, 7.0)
  assert int(state.count) == 1 and float(state.cache[0]) == 7.0
  state, codes = strategy.ask(state)
  # [0,0,0] again: told its remembered 7.0 three times (max_retries), then replaced.
  tells, total, _ = state.inner
  assert int(tells) == 1 + 3 and float(total) == 7.0 * 4
  assert codes.tolist() != [0, 0, 0]
  state = strategy.tell(state, codes, 1.0)
  # The inner strategy is told the replacement as the answer to its proposal.
  np.testing.assert_array_equal(state.inner[2], codes)
  assert int(state.count) == 2
  # Once every architecture is told, proposals pass through (repeats are unavoidable).
  full = state._replace(visited=jnp.ones_like(state.visited), count=jnp.asarray(space.size))
  _, codes = strategy.ask(full)
  assert codes.tolist() == [0, 0, 0]
  # max_retries=0: replaced at once, the inner strategy told nothing extra.
  zero = blackbox.no_repeat(_stuck_strategy(), max_retries=0)
  state = zero.tell(zero.init(jax.random.key(0), space), jnp.zeros(3, jnp.int32), 1.0)
  state, codes = zero.ask(state)
  assert int(state.inner[0]) == 1 and codes.tolist() != [0, 0, 0]


def test_fallback_draws_uniformly_among_the_unvisited():
  space = _grid_space()
  strategy = blackbox.no_repeat(_stuck_strategy(), max_retries=0)
  state = strategy.init(jax.random.key(0), space)
  visited = np.ones(space.size, bool)
  visited[[5, 17, 42]] = False
  state = state._replace(visited=jnp.asarray(visited), count=jnp.asarray(space.size - 3))
  keys = jax.random.split(jax.random.key(3), 600)
  asks = jax.vmap(lambda k: strategy.ask(state._replace(key=k))[1])(keys)
  counts = np.bincount(np.asarray(space.flat_index(asks)), minlength=space.size)
  assert set(np.nonzero(counts)[0].tolist()) == {5, 17, 42}
  assert counts[[5, 17, 42]].min() > 150, counts[[5, 17, 42]]


def test_errors():
  with pytest.raises(ValueError, match="max_retries must be a non-negative int"):
    blackbox.no_repeat(blackbox.random_search(), max_retries=-1)
  with pytest.raises(ValueError, match=r"at most 10\^7 .*'darts4'"):
    blackbox.no_repeat(blackbox.random_search()).init(jax.random.key(0), blackbox.darts_space())


def test_state_resumes_bit_for_bit():
  space = _grid_space()
  scores = jnp.asarray(_scores(space))
  strategy = blackbox.no_repeat(blackbox.get("regularized_evolution",
                                             **OPTIONS["regularized_evolution"]))

  ask, tell = jax.jit(strategy.ask), jax.jit(strategy.tell)

  def steps(state, n):
    out = []
    for _ in range(n):
      state, codes = ask(state)
      state = tell(state, codes, scores[space.flat_index(codes)])
      out.append(np.asarray(codes))
    return state, out

  state0 = strategy.init(jax.random.key(5), space)
  _, whole = steps(state0, 30)
  half, first = steps(state0, 12)
  leaves, treedef = jax.tree.flatten(half)
  saved = [np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
           else np.asarray(x) for x in leaves]
  restored = jax.tree.unflatten(treedef, [
      jax.random.wrap_key_data(s) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
      else jnp.asarray(s) for s, x in zip(saved, leaves)])
  _, rest = steps(restored, 18)
  np.testing.assert_array_equal(np.stack(first + rest), np.stack(whole))


def test_explore_no_repeat_finds_the_nb201_argmax():
  table = benchmarks.load_nb201(NB201_DIR, latency=False)
  col = table.column("cifar10_valid")
  result = explore.explore("regularized_evolution", table, metric="cifar10_valid",
                           budget=len(table),
                           runs=1, options={"population_size": 10, "sample_size": 3},
                           no_repeat=True)
  assert result["no_repeat"] is True
  assert result["runs"][0]["cifar10_valid"] == pytest.approx(float(col.max()))
