"""The differentiable hardware cost: expected cost, per-op costs fitted to NB201, with_cost."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas import benchmarks
from dnas.ops import sets
from dnas.strategies import darts
from dnas.strategies.drnas import drnas
from dnas.strategies import cost
from dnas.strategies.base import BilevelProblem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))
OPS = sets.get("nb201").ops
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def test_expected_cost_by_hand():
  w = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
  assert float(cost.expected_cost({"cell": w}, {"cell": jnp.array([1., 2., 4.])})) == 2.5
  per_edge = jnp.array([[1., 2., 4.], [10., 20., 40.]])
  assert float(cost.expected_cost({"cell": w}, {"cell": per_edge})) == 1.0 + 15.0
  both = {"normal": w, "reduce": jnp.array([[0., 0., 1.], [0., 1., 0.]])}
  assert float(cost.expected_cost(both, jnp.array([1., 2., 4.]))) == 2.5 + 6.0
  with pytest.raises(ValueError, match=r"no costs for cell type\(s\) \['reduce'\]"):
    cost.expected_cost(both, {"normal": jnp.ones(3)})
  with pytest.raises(ValueError, match=r"per_op_cost\['cell'\] must be"):
    cost.expected_cost({"cell": w}, {"cell": jnp.ones(4)})


def test_op_costs_from_a_lookup():
  table = {"none": 0, "skip_connect": 0.1, "nor_conv_1x1": 1, "nor_conv_3x3": 3,
           "avg_pool_3x3": 0.5}
  np.testing.assert_allclose(cost.op_costs(table), [0, 0.1, 1, 3, 0.5])
  with pytest.raises(ValueError, match=r"missing \['avg_pool_3x3'\], unknown \['conv'\]"):
    cost.op_costs({**{k: v for k, v in table.items() if k != "avg_pool_3x3"}, "conv": 1})
  with pytest.raises(ValueError, match="'nor_conv_3x3' must be a finite number"):
    cost.op_costs({**table, "nor_conv_3x3": float("nan")})


class _FakeTable:
  def __init__(self, archs, columns):
    self.archs = tuple(archs)
    self.columns = {k: np.asarray(v, float) for k, v in columns.items()}
    self.column_names = tuple(self.columns)

  def column(self, name):
    return self.columns[name]


def _arch(codes):
  nodes = [[] for _ in range(3)]
  for (node, src), c in zip(EDGES, codes):
    nodes[node - 1].append(f"{OPS[c]}~{src}")
  return "+".join("|" + "|".join(n) + "|" for n in nodes)


def test_fit_recovers_synthetic_per_op_costs_exactly():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 5, size=(1500, 6))
  true = rng.uniform(0.5, 3.0, size=(6, 5))
  true[:, 0] = 0.0   # the reference op ("none") costs 0 by the fit's convention
  shared = np.array([0.0, 0.2, 1.0, 3.0, 0.7])
  y_edge = 2.0 + true[np.arange(6), codes].sum(axis=1)
  y_shared = 1.5 + shared[codes].sum(axis=1)
  table = _FakeTable([_arch(c) for c in codes], {"a_ms": y_edge, "b_ms": y_shared,
                                                 "acc": np.zeros(len(codes))})
  c, b, r2 = cost.fit_op_costs(table, "a_ms")
  np.testing.assert_allclose(c, true, atol=1e-5)
  assert b == pytest.approx(2.0) and r2 == pytest.approx(1.0)
  c, b, r2 = cost.fit_op_costs(table, "b_ms", per_edge=False)
  np.testing.assert_allclose(c, shared, atol=1e-5)
  assert b == pytest.approx(1.5) and r2 == pytest.approx(1.0)
  report = cost.fit_report(table)
  assert list(report) == ["a_ms", "b_ms"] and report["b_ms"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="reference_op 'zero'"):
    cost.fit_op_costs(table, "a_ms", reference_op="zero")
  with pytest.raises(ValueError, match="row 0: .*not a 4-node NB201 cell"):
    cost.fit_op_costs(_FakeTable(["|none~0|+|none~0|none~1|"], {"x": [1.0]}), "x")


def test_fit_on_real_device_columns():
  """Measured R^2 of the per-edge fit: pixel3_ms 0.894, 1080ti_1_ms 0.991, eyeriss_ms 1.000,
  pixel2_ms 0.797 (the lowest of the 22 device columns)."""
  table = benchmarks.load_nb201(NB201_DIR)
  got = {c: cost.fit_op_costs(table, c)[2] for c in ("pixel3_ms", "1080ti_1_ms")}
  assert got["pixel3_ms"] > 0.85 and got["1080ti_1_ms"] > 0.97, got
  costs, _, _ = cost.fit_op_costs(table, "1080ti_1_ms")
  assert costs.shape == (6, 5) and np.all(costs[:, 0] == 0)
  # A 3x3 convolution costs more than a 1x1 one on every edge.
  assert np.all(costs[:, OPS.index("nor_conv_3x3")] > costs[:, OPS.index("nor_conv_1x1")])


def _toy_problem(target, n_ops=5):
  """A loss of the op weights alone, lowest when every edge puts all its weight on ``target``."""
  onehot = jax.nn.one_hot(target, n_ops)

  def loss_fn(params, op_weights, batch):
    del params, batch
    loss = jnp.mean(jnp.sum((op_weights["cell"] - onehot) ** 2, axis=-1))
    return loss, (None, jnp.zeros((1, n_ops)))

  return BilevelProblem(loss_fn, optax.identity(), None, None, None)


# The loss prefers op 2; op 1 is the cheapest, op 2 costs 3 per edge.
TOY_COSTS = {"cell": jnp.array([2.0, 0.0, 3.0, 5.0, 1.0])}


def _search(strategy, steps=150):
  problem = _toy_problem(target=2)
  arch = {"cell": 1e-3 * jax.random.normal(jax.random.key(0), (6, 5))}
  tx = optax.adam(0.05, b1=0.5, b2=0.999)
  state = strategy.init(arch)

  @jax.jit
  def step(arch, opt_state, key):
    g, _ = strategy.arch_grad(problem, None, arch, state, key)
    g = jax.tree.map(jnp.add, g, jax.grad(strategy.regularizer)(arch))
    updates, opt_state = tx.update(g, opt_state, arch)
    return optax.apply_updates(arch, updates), opt_state

  opt_state = tx.init(arch)
  for i in range(steps):
    arch, opt_state = step(arch, opt_state, jax.random.fold_in(jax.random.key(1), i))
  return strategy.derive_weights(arch, state) if strategy.derive_weights else \
      strategy.mix(arch, state, None)


def test_cost_weight_moves_the_search_to_the_cheapest_op():
  free = _search(cost.with_cost(darts(), TOY_COSTS, weight=0.0))["cell"]
  np.testing.assert_array_equal(jnp.argmax(free, -1), 2)
  cheap = _search(cost.with_cost(darts(), TOY_COSTS, weight=1.0))["cell"]
  np.testing.assert_array_equal(jnp.argmax(cheap, -1), 1)
  assert float(cheap[:, 1].min()) > 0.5


def test_target_search_ends_under_its_target():
  # Op 2 everywhere costs 18; the budget 9 allows about half of it.
  strategy = cost.with_cost(darts(), TOY_COSTS, weight=1.0, target=9.0, mode="target")
  w = _search(strategy, steps=300)
  spent = float(cost.expected_cost(w, TOY_COSTS))
  # Measured 9.03: the hinge holds the search at its budget (within 1 %), not far below it.
  assert spent <= 9.0 * 1.01, spent
  assert spent > 8.0, spent
  assert float(strategy.metrics({"cell": jnp.zeros((6, 5))}, ())["expected_cost"]) == \
      pytest.approx(6 * 11 / 5)


def test_with_cost_keeps_the_strategy_regularizer_and_validates():
  base = drnas("l2", 1e-3)
  arch = {"cell": jnp.ones((6, 5))}
  wrapped = cost.with_cost(base, TOY_COSTS, weight=2.0, offset=1.0)
  want = base.regularizer(arch) + 2.0 * (1.0 + 6 * 11 / 5)
  assert float(wrapped.regularizer(arch)) == pytest.approx(float(want), rel=1e-6)
  # The penalty's gradient is weight * d/dalpha sum softmax(alpha) * c (DARTS' derive weights).
  a = {"cell": jax.random.normal(jax.random.key(2), (6, 5))}
  g = jax.grad(cost.with_cost(darts(), TOY_COSTS, weight=3.0).regularizer)(a)["cell"]
  want = jax.grad(lambda x: 3.0 * jnp.sum(jax.nn.softmax(x, -1) * TOY_COSTS["cell"]))(a["cell"])
  np.testing.assert_allclose(g, want, rtol=1e-5)
  with pytest.raises(ValueError, match="mode must be one of"):
    cost.with_cost(base, TOY_COSTS, 1.0, mode="log")
  with pytest.raises(ValueError, match="needs a target > 0"):
    cost.with_cost(base, TOY_COSTS, 1.0, mode="target")
  with pytest.raises(ValueError, match="weight must be a number >= 0"):
    cost.with_cost(base, TOY_COSTS, -1.0)


# --- The config's search.cost ------------------------------------------------------------------


def _nb201_config(**cost):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  c = train_lib.load_config(os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"))
  c.search.cost = ml_collections.ConfigDict(cost)
  return c


def test_config_cost_adds_the_expected_cost_to_the_strategys_regularizer():
  from dnas import run_config  # pylint: disable=g-import-not-at-top
  lookup = {"none": 0.0, "skip_connect": 0.1, "nor_conv_1x1": 1.0, "nor_conv_3x3": 3.0,
            "avg_pool_3x3": 0.5}
  c = _nb201_config(weight=0.2, per_op=lookup)
  run_config.validate_search_config(c)
  strategy = run_config.make_strategy(c, 0.025, total_steps=10, steps_per_epoch=5)
  arch = {"cell": jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)}
  ops = sets.get("nb201").ops
  costs = np.array([lookup[o] for o in ops])
  by_hand = 0.2 * np.sum(np.asarray(jax.nn.softmax(arch["cell"], -1)) * costs)
  assert float(strategy.regularizer(arch)) == pytest.approx(by_hand, rel=1e-5)
  m = strategy.metrics(arch, strategy.init(arch))
  assert float(m["expected_cost"]) == pytest.approx(by_hand / 0.2, rel=1e-5)
  # weight 0: no cost term at all.
  plain = run_config.make_strategy(_nb201_config(weight=0.0, per_op=lookup), 0.025, 10, 5)
  assert plain.regularizer is None


def test_config_cost_fitted_to_a_device_column():
  table = benchmarks.load_nb201(NB201_DIR)
  from dnas import run_config  # pylint: disable=g-import-not-at-top
  c = _nb201_config(weight=1.0, fit="pixel3_ms", mode="target", target=5.0, benchmark=NB201_DIR)
  costs, offset, r2 = run_config.op_cost_vector(c)
  want, intercept, want_r2 = cost.fit_op_costs(table, "pixel3_ms", per_edge=False)
  np.testing.assert_allclose(costs, want)
  assert offset == pytest.approx(intercept) and r2 == pytest.approx(want_r2)
  strategy = run_config.make_strategy(c, 0.025, 10, 5)
  arch = {"cell": jnp.zeros((6, 5))}
  expected = intercept + 6 * np.mean(want)   # uniform op weights on the 6 edges
  assert float(strategy.regularizer(arch)) == pytest.approx(max(0.0, expected / 5.0 - 1.0),
                                                            rel=1e-5)


def test_config_cost_errors_name_the_key():
  from dnas import run_config  # pylint: disable=g-import-not-at-top
  full = {"none": 0.0, "skip_connect": 0.1, "nor_conv_1x1": 1.0, "nor_conv_3x3": 3.0,
          "avg_pool_3x3": 0.5}
  bad = [({"weight": 1.0}, ": a weight > 0 needs per_op .* or fit"),
         ({"weight": 1.0, "per_op": {"conv9": 1.0}}, ".per_op: .*conv9"),
         ({"weight": 1.0, "per_op": full, "fit": "pixel3_ms"}, ": give per_op or fit, not both"),
         ({"weight": 1.0, "per_op": full, "wieght": 1},
          r": unknown key\(s\) \['wieght'\]"),
         ({"weight": 1.0, "fit": "pixel9_ms", "benchmark": NB201_DIR},
          ".fit: .*pixel9_ms"),
         ({"weight": 1.0, "per_op": full, "mode": "target"}, ": .*target")]
  for settings, match in bad:
    with pytest.raises(run_config.ConfigError, match="^config.search.cost" + match):
      run_config.validate_search_config(_nb201_config(**settings))
