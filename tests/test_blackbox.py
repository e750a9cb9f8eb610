"""Ask/tell search: spaces, strategies checked by hand, runners, NAS-Bench-201's protocol."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import benchmarks, blackbox, genotypes, published
from dnas.blackbox import strategies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))

# These tests compile far more than they run.
pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def table():
  return benchmarks.load_nb201(NB201_DIR, latency=False)


@pytest.fixture(scope="module")
def nb201(table):
  return blackbox.nb201_space(table)


def _grid_space(cards):
  """A categorical space whose table rows are its flat (mixed-radix) indices."""
  space = blackbox.categorical_space({f"d{i}": list(range(c)) for i, c in enumerate(cards)})
  return dataclasses.replace(space, lookup=jnp.arange(space.size, dtype=jnp.int32))


# --- Spaces ----------------------------------------------------------------------------------


def test_nb201_table_index_is_a_bijection_onto_matching_rows(table, nb201):
  codes = nb201.all_codes()
  assert codes.shape == (15625, 6)
  rows = np.asarray(jax.jit(nb201.table_index)(codes))
  np.testing.assert_array_equal(np.sort(rows), np.arange(15625))
  for i, (c, r) in enumerate(zip(codes, rows)):
    arch = nb201.decode(c)
    assert table.archs[r] == arch
    if i % 50 == 0:  # encode parses the arch string: a sample is enough
      np.testing.assert_array_equal(nb201.encode(arch), c)
  # NAS-Bench-201's index is not a base-5 numbering of the codes: the lookup array is needed.
  assert not np.array_equal(rows, np.asarray(nb201.flat_index(codes)))


def test_nb201_decode_by_hand():
  space = blackbox.nb201_space()
  # ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3; edges 1<-0, 2<-0, ...
  assert space.decode([3, 3, 3, 1, 2, 3]) == (
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
      "|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
  g = genotypes.NB201Genotype.from_arch(space.decode([0, 1, 2, 3, 4, 0]))
  assert g.ops == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "none")
  with pytest.raises(blackbox.SpaceError, match=r"dimension 2 \(edge_2<-1\) is 5"):
    space.decode([0, 0, 5, 0, 0, 0])
  with pytest.raises(blackbox.SpaceError, match="not bound to a table"):
    space.table_index(jnp.zeros(6, jnp.int32))


def test_darts_space_decodes_to_valid_genotypes():
  space = blackbox.darts_space(nodes=4)
  assert space.num_dims == 24
  assert space.cardinalities[:12] == (7, 7, 1, 7, 7, 3, 7, 7, 6, 7, 7, 10)
  codes = np.asarray(jax.vmap(lambda k: blackbox.base.uniform_codes(
      k, jnp.asarray(space.cardinalities)))(jax.random.split(jax.random.key(0), 200)))
  for c in codes:
    g = genotypes.validate(space.decode(c))
    assert "none" not in g.ops
    for cell in (g.normal, g.reduce):
      for i in range(4):
        assert cell[2 * i][1] < cell[2 * i + 1][1]  # distinct inputs, lower one first
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    np.testing.assert_array_equal(space.encode(g), c)
  v2 = published.get("DARTS_V2")
  assert space.decode(space.encode(v2)).normal == tuple(
      sorted(v2.normal[i:i + 2], key=lambda e: e[1])[j] for i in range(0, 8, 2) for j in (0, 1))
  same = genotypes.darts([("sep_conv_3x3", 0), ("sep_conv_3x3", 0)] * 4,
                         [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4)
  with pytest.raises(blackbox.SpaceError, match="'normal' node 0 takes input 0 twice"):
    space.encode(same)


def test_categorical_space():
  space = blackbox.categorical_space({"width": [16, 32, 64], "act": ["relu", "gelu"]})
  assert space.cardinalities == (3, 2)
  assert space.decode([2, 0]) == {"width": 64, "act": "relu"}
  np.testing.assert_array_equal(space.encode({"width": 32, "act": "gelu"}), [1, 1])
  with pytest.raises(blackbox.SpaceError, match=r"width=48 is not one of \[16, 32, 64\]"):
    space.encode({"width": 48, "act": "relu"})
  with pytest.raises(blackbox.SpaceError, match=r"choices\['act'\] must be a non-empty list"):
    blackbox.categorical_space({"act": []})


# --- Strategies by hand ----------------------------------------------------------------------


def test_tournament_and_mutation_by_hand():
  scores = jnp.array([1.0, 5.0, 3.0, 4.0])
  assert int(strategies.tournament(scores, jnp.array([0, 2, 3]))) == 3
  assert int(strategies.tournament(scores, jnp.array([0, 0, 2]))) == 2
  assert int(strategies.tournament(scores, jnp.array([1, 3, 1]))) == 1
  cards = jnp.array([5, 5, 2])
  codes = jnp.array([4, 1, 1])
  np.testing.assert_array_equal(
      strategies.mutate(codes, jnp.array([True, False, False]), jnp.array([2, 3, 1]), cards),
      [1, 1, 1])  # (4 + 2) % 5
  np.testing.assert_array_equal(
      strategies.mutate(codes, jnp.array([False, True, True]), jnp.array([2, 4, 1]), cards),
      [4, 0, 0])


def test_mutation_draws_change_exactly_one_dimension():
  cards = jnp.array([5, 1, 3, 2])
  draws = jax.jit(jax.vmap(lambda k: strategies._mutation_draws(k, cards, None)))(
      jax.random.split(jax.random.key(1), 500))
  flip, offsets = map(np.asarray, draws)
  assert (flip.sum(axis=1) == 1).all() and not flip[:, 1].any()  # never the 1-choice dim
  assert set(np.flatnonzero(flip.sum(axis=0))) == {0, 2, 3}
  for d, c in ((0, 5), (2, 3), (3, 2)):
    assert set(offsets[:, d]) == set(range(1, c))


def test_regularized_evolution_random_start_then_aging():
  space = blackbox.categorical_space({"a": list(range(4)), "b": list(range(4))})
  rea = blackbox.regularized_evolution(population_size=3, sample_size=2)
  state = rea.init(jax.random.key(0), space)
  told = [(jnp.array([i % 4, i // 4], jnp.int32), float(s)) for i, s in
          enumerate([9.0, 1.0, 2.0, 3.0, 4.0])]
  for i, (codes, score) in enumerate(told):
    state = rea.tell(state, codes, score)
    if i == 2:
      np.testing.assert_array_equal(state.scores, [9.0, 1.0, 2.0])
  # The best (9.0, the oldest) died first, then 1.0: aging, not removal of the worst.
  np.testing.assert_array_equal(state.scores, [3.0, 4.0, 2.0])
  np.testing.assert_array_equal(state.population, [[3, 0], [0, 1], [2, 0]])
  assert int(state.count) == 5


def test_regularized_evolution_child_is_a_one_step_mutant_of_the_winner():
  space = blackbox.categorical_space({"a": list(range(4)), "b": list(range(4)),
                                      "c": list(range(4))})
  rea = blackbox.regularized_evolution(population_size=3, sample_size=64)
  empty = rea.init(jax.random.key(0), space)
  members = jnp.array([[0, 0, 0], [1, 2, 3], [3, 3, 3]], jnp.int32)
  full = empty._replace(population=members, scores=jnp.array([1.0, 5.0, 3.0]),
                        count=jnp.array(3, jnp.int32))
  asks = jax.jit(jax.vmap(lambda s, k: rea.ask(s._replace(key=k))[1], in_axes=(None, 0)))
  keys = jax.random.split(jax.random.key(2), 40)
  # 64 draws with replacement miss the best of 3 with probability (2/3)^64 < 1e-11.
  children = np.asarray(asks(full, keys))
  assert ((children != np.asarray(members[1])).sum(axis=1) == 1).all(), children
  # Before the population is full, asks are uniform random (not mutants of slot 0).
  firsts = np.asarray(asks(full._replace(count=jnp.array(2, jnp.int32)), keys))
  assert len({tuple(f) for f in firsts.tolist()}) > 20


def test_regularized_evolution_options():
  space = blackbox.categorical_space({f"d{i}": list(range(3)) for i in range(6)})
  for rate, xo in ((0.5, False), (0.0, True)):
    rea = blackbox.regularized_evolution(2, 2, mutation_rate=rate, crossover=xo)
    members = jnp.array([[0] * 6, [1 if xo else 0] * 6], jnp.int32)
    state = rea.init(jax.random.key(0), space)._replace(
        population=members, scores=jnp.ones(2), count=jnp.array(2, jnp.int32))
    kids = np.asarray(jax.jit(jax.vmap(lambda k, s=state, f=rea.ask: f(s._replace(key=k))[1]))(
        jax.random.split(jax.random.key(3), 200)))
    if xo:  # one mutation on a uniform mix of parents 000000 and 111111
      assert ((kids == 2).sum(axis=1) <= 1).all()
      mixed = ((kids == 0).sum(axis=1) >= 2) & ((kids == 1).sum(axis=1) >= 2)
      # Parents differ with probability 1/2 (equal scores: the first sampled wins), and then
      # a uniform mix holds at least two of each with probability 50/64: about 0.39.
      assert 0.25 < mixed.mean() < 0.55, mixed.mean()
    else:  # each of 6 dimensions mutated with probability 1/2, at least one: mean 3 / (1 - 2^-6)
      changed = (kids != 0).sum(axis=1)
      assert changed.min() >= 1 and abs(changed.mean() - 3.05) < 0.3, changed.mean()
  with pytest.raises(ValueError, match="sample_size must be a positive int"):
    blackbox.regularized_evolution(sample_size=0)


def test_random_search_covers_a_3x3_space():
  space = blackbox.categorical_space({"a": [0, 1, 2], "b": ["x", "y", "z"]})
  hist = blackbox.run(blackbox.random_search(), space, lambda c: 0.0, 90, jax.random.key(0))
  counts = np.bincount(hist.codes[:, 0] * 3 + hist.codes[:, 1], minlength=9)
  assert counts.shape == (9,) and counts.min() >= 3, counts


def test_local_search_reaches_the_optimum_of_a_unimodal_table():
  space = _grid_space((5, 5, 5))
  target = np.array([4, 0, 2])
  scores = -((space.all_codes() - target) ** 2).sum(axis=1).astype(np.float32)
  # Best improvement moves each dimension to its best value in one step: at most 1 start,
  # 3 moves + 1 final sweep of sum(card - 1) = 12 neighbours, so 1 + 4 * 12 = 49 evaluations.
  hist = blackbox.run_on_table(blackbox.local_search(), space, scores, 60,
                               jax.random.split(jax.random.key(0), 8))
  best = np.asarray(hist.best)
  assert (best[:, 48] == 0).all(), best[:, 48]
  # After the optimum's sweep finds nothing better it restarts: a non-neighbour comes next.
  codes = np.asarray(hist.codes[0])
  hit = int(np.argmax(np.asarray(hist.scores[0]) == 0))
  jumps = [(codes[t] != codes[t - 1]).sum() for t in range(1, 60)]
  assert max(jumps) >= 1 and hit < 49


def test_local_search_by_hand():
  space = _grid_space((3, 2))
  ls = blackbox.local_search()
  state = ls.init(jax.random.key(0), space)
  assert state.neighbour_dim.tolist() == [0, 0, 1]
  assert state.neighbour_offset.tolist() == [1, 2, 1]
  state = ls.tell(state, jnp.array([0, 0]), 1.0)  # the random start
  asked = []
  for score in (0.0, 2.0, 0.5):  # its three neighbours; the one scoring 2.0 wins
    state, codes = ls.ask(state)
    asked.append(np.asarray(codes).tolist())
    state = ls.tell(state, codes, score)
  assert sorted(asked) == [[0, 1], [1, 0], [2, 0]]
  np.testing.assert_array_equal(state.center, asked[1])
  assert float(state.center_score) == 2.0 and int(state.position) == 0
  # First improvement moves at once, here on the first neighbour asked.
  first = blackbox.local_search(first_improvement=True)
  state = first.tell(first.init(jax.random.key(0), space), jnp.array([0, 0]), 1.0)
  state, codes = first.ask(state)
  state = first.tell(state, codes, 1.5)
  np.testing.assert_array_equal(state.center, codes)
  assert int(state.position) == 0 and bool(state.started)
  # A local optimum (no neighbour better) restarts the climb from a random point.
  for _ in range(3):
    state, codes = first.ask(state)
    state = first.tell(state, codes, 0.0)
  assert not bool(state.started)


# --- Runners ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random_search", "regularized_evolution", "local_search"])
def test_vmapped_table_runs_equal_python_loop_runs(nb201, table, name):
  strategy = blackbox.get(name)
  # Two traces of ask and of tell in all (one inside the scan, one jitted for the loop), not
  # one per step or per run: fixed shapes and dtypes.
  strategy = strategy._replace(ask=chex.assert_max_traces(strategy.ask, n=2),
                               tell=chex.assert_max_traces(strategy.tell, n=2))
  col = table.column("cifar10_valid")
  keys = jax.random.split(jax.random.key(7), 2)
  batch = blackbox.run_on_table(strategy, nb201, col, 30, keys)
  lookup = np.asarray(nb201.lookup)
  strides = 5 ** np.arange(5, -1, -1)
  for i in range(2):
    one = blackbox.run(strategy, nb201, lambda c: col[lookup[c @ strides]], 30, keys[i])
    for a, b in zip(one, batch):
      np.testing.assert_array_equal(a, np.asarray(b)[i])
    assert all(table.query(nb201.decode(c), "cifar10_valid") == pytest.approx(s, abs=1e-4)
               for c, s in zip(one.codes[:5], one.scores[:5]))
  np.testing.assert_array_equal(np.maximum.accumulate(batch.scores, axis=1), batch.best)


def test_run_rejects_nan_scores():
  space = blackbox.categorical_space({"a": [0, 1]})
  with pytest.raises(ValueError, match=r"evaluate\(\[\d\]\) returned NaN"):
    blackbox.run(blackbox.random_search(), space, lambda c: float("nan"), 3, jax.random.key(0))


def test_evolution_beats_random_search_on_nb201(table, nb201):
  keys = jax.random.split(jax.random.key(2020), 50)
  out = {}
  for name in ("random_search", "regularized_evolution"):
    res = blackbox.nb201_protocol(blackbox.get(name), table, 100, keys, space=nb201)
    # The pick is each run's best cifar10_valid; its cifar10_test is what is reported.
    for r in (0, 49):
      step = int(np.argmax(res.histories.scores[r]))
      arch = nb201.decode(res.histories.codes[r, step])
      assert res.searched[r] == table.query(arch, "cifar10_valid")
      assert res.reported[r] == table.query(arch, "cifar10_test")
    out[name] = blackbox.summarize(res.histories, res.reported)
    assert out[name]["reported_mean"] == pytest.approx(np.mean(res.reported))
    assert out[name]["best_mean"] == pytest.approx(np.mean(res.searched), abs=1e-4)
  rs, rea = out["random_search"], out["regularized_evolution"]
  assert rea["best_mean"] > rs["best_mean"] + 0.2, (rea, rs)
  assert rea["reported_mean"] > rs["reported_mean"], (rea, rs)


def test_registry():
  assert {"random_search", "regularized_evolution", "local_search"} <= set(blackbox.names())
  with pytest.raises(KeyError, match="unknown blackbox strategy 'evolution'.*local_search"):
    blackbox.get("evolution")
  with pytest.raises(ValueError, match="takes no option.*'population'.*population_size"):
    blackbox.get("regularized_evolution", population=5)

  @blackbox.register("always_zero")
  def always_zero():
    rs = blackbox.random_search()
    return rs._replace(ask=lambda s: (s, jnp.zeros_like(s.cardinalities)))

  try:
    space = blackbox.categorical_space({"a": [0, 1]})
    hist = blackbox.run(blackbox.get("always_zero"), space, lambda c: 1.0, 3, jax.random.key(0))
    assert hist.codes.tolist() == [[0]] * 3
    with pytest.raises(ValueError, match="already registered"):
      blackbox.register("always_zero")(always_zero)
  finally:
    blackbox.registry.unregister("always_zero")
