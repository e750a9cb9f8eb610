"""beta-DARTS, FairDARTS, DARTS- and SDARTS-RS: their math by hand, on toy tensors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from dnas.ops import sets
from dnas.spaces.cell import SearchCell
from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, derive_weights, eval_weights
from dnas.strategies.betadarts import beta_decay, betadarts, BetaDartsState, linear_schedule
from dnas.strategies.darts import darts
from dnas.strategies.dartsminus import dartsminus, skip_index
from dnas.strategies.fairdarts import zero_one_loss
from dnas.strategies.sdarts import project_to_simplex, sdarts_rs

CONTEXT = registry.StrategyContext(learning_rate=0.025, momentum=0.9, weight_decay=3e-4,
                                   total_steps=6, steps_per_epoch=2)
ARCH = {"normal": np.array([[0.3, -1.0, 2.0, 0.0], [0.1, 0.2, -0.3, 1.5]]),
        "reduce": np.array([[1.0, 0.0, -0.5, 0.25]])}


def _arch(dtype=jnp.float64):
  return {k: jnp.asarray(v, dtype) for k, v in ARCH.items()}


def _finite_difference(f, arch, h=1e-6):
  """Central differences of the scalar ``f`` in every entry of ``arch`` (float64)."""
  out = {}
  for name, a in arch.items():
    g = np.zeros(a.shape)
    for idx in np.ndindex(a.shape):
      e = np.zeros(a.shape)
      e[idx] = h
      up = dict(arch, **{name: a + e})
      down = dict(arch, **{name: a - e})
      g[idx] = (float(f(up)) - float(f(down))) / (2 * h)
    out[name] = g
  return out


def _toy_problem(coeffs):
  """A bilevel problem whose validation loss is ``sum_leaf sum(c * op_weights * p)``, linear in
  the op weights: its alpha gradient is ``c * p`` through the relaxation's Jacobian."""
  def loss_fn(params, op_weights, batch):
    loss = sum(jnp.sum(coeffs[k] * op_weights[k] * params["p"]) for k in op_weights)
    return loss * batch["scale"], (None, jnp.zeros((1, 3)))

  batch = {"scale": jnp.asarray(1.0)}
  return BilevelProblem(loss_fn, None, None, batch, batch), {"p": jnp.asarray(2.0)}


def _coeffs():
  return {"normal": jnp.asarray([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]]),
          "reduce": jnp.asarray([[-1.0, 0.5, 2.0, 0.0]])}


# ------------------------------------------------------------------------------------------------
# beta-DARTS


def test_beta_decay_value_and_gradient_by_hand_and_by_finite_differences(x64):
  arch = _arch()
  rows = np.concatenate([ARCH["normal"], ARCH["reduce"]])
  want = np.mean(scipy.special.logsumexp(rows, axis=-1))   # mean over the 3 edges
  np.testing.assert_allclose(float(beta_decay(arch)), want, rtol=1e-12)
  grad = jax.grad(beta_decay)(arch)
  for name in ARCH:   # d/d alpha_e = softmax(alpha_e) / |E|
    np.testing.assert_allclose(grad[name], scipy.special.softmax(ARCH[name], axis=-1) / 3,
                               rtol=1e-12)
  fd = _finite_difference(beta_decay, arch)
  for name in ARCH:
    np.testing.assert_allclose(grad[name], fd[name], rtol=1e-6, atol=1e-9)


def test_betadarts_arch_grad_is_darts_plus_lambda_times_the_beta_decay_gradient(x64):
  arch, coeffs = _arch(), _coeffs()
  problem, params = _toy_problem(coeffs)
  strategy = betadarts(lambda_max=50.0, steps_per_epoch=2)
  state = BetaDartsState(lam=jnp.asarray(12.5, jnp.float32))
  got, aux = strategy.arch_grad(problem, params, arch, state, None)
  base, base_aux = darts(order=1).arch_grad(problem, params, arch, (), None)
  for name in ARCH:
    w = scipy.special.softmax(ARCH[name], axis=-1)
    c = np.asarray(coeffs[name]) * 2.0    # the loss's gradient in the op weights
    darts_grad = w * (c - np.sum(w * c, axis=-1, keepdims=True))   # through the softmax
    np.testing.assert_allclose(base[name], darts_grad, rtol=1e-10)
    np.testing.assert_allclose(got[name], darts_grad + 12.5 * w / 3, rtol=1e-10)
  # The logged validation loss is the cross-entropy alone, not the regularised objective.
  assert float(aux["val_loss"]) == float(base_aux["val_loss"])
  np.testing.assert_allclose(strategy.mix(arch, state, None)["normal"],
                             scipy.special.softmax(ARCH["normal"], axis=-1), rtol=1e-12)
  assert set(strategy.metrics(arch, state)) == {"beta_lambda", "beta_decay"}


def test_betadarts_lambda_rises_linearly_per_epoch():
  # lambda_e = 50 e / E, E = 3 epochs of 2 steps (the reference: 50 * epoch / 100 for E = 100).
  strategy = registry.build("betadarts", {}, CONTEXT)
  state = strategy.init(None)
  assert float(state.lam) == 0.0
  got = [float(strategy.update_state(state, s, 6).lam) for s in range(8)]
  np.testing.assert_allclose(got, [0, 0, 50 / 3, 50 / 3, 100 / 3, 100 / 3, 50, 50], rtol=1e-6)
  np.testing.assert_allclose(float(linear_schedule(3, 6, 0.0, 50.0)), 25.0)  # every step
  with pytest.raises(ValueError, match="lambda_max"):
    registry.build("betadarts", {"lambda_max": -1.0}, CONTEXT)


# ------------------------------------------------------------------------------------------------
# FairDARTS


def test_fairdarts_mix_is_the_elementwise_sigmoid_not_normalised(x64):
  strategy = registry.build("fairdarts", {}, CONTEXT)
  arch = _arch()
  got = strategy.mix(arch, strategy.init(arch), None)
  for name in ARCH:
    np.testing.assert_allclose(got[name], scipy.special.expit(ARCH[name]), rtol=1e-12)
  assert not np.allclose(got["normal"].sum(-1), 1.0)   # each op on its own
  for weights in (derive_weights(strategy, arch, ()), eval_weights(strategy, arch, ())):
    np.testing.assert_allclose(weights["reduce"], scipy.special.expit(ARCH["reduce"]), rtol=1e-12)
  m = strategy.metrics(arch, ())
  assert float(m["above_threshold"]) == pytest.approx(
      np.mean(scipy.special.expit(np.concatenate([a.ravel() for a in ARCH.values()])) > 0.85))


def test_zero_one_loss_value_and_gradient_by_hand_and_by_finite_differences(x64):
  arch = _arch()
  s = {k: scipy.special.expit(v) for k, v in ARCH.items()}
  n = sum(v.size for v in ARCH.values())
  want = -sum(np.sum((v - 0.5) ** 2) for v in s.values()) / n
  np.testing.assert_allclose(float(zero_one_loss(arch)), want, rtol=1e-12)
  grad = jax.grad(zero_one_loss)(arch)
  fd = _finite_difference(zero_one_loss, arch)
  for name in ARCH:
    hand = -2.0 / n * (s[name] - 0.5) * s[name] * (1 - s[name])
    np.testing.assert_allclose(grad[name], hand, rtol=1e-12)
    np.testing.assert_allclose(grad[name], fd[name], rtol=1e-6, atol=1e-10)
  # The strategy's regulariser is w01 * L01, and its alpha gradient passes through the sigmoid.
  strategy = registry.build("fairdarts", {"zero_one_weight": 10.0}, CONTEXT)
  np.testing.assert_allclose(float(strategy.regularizer(arch)), 10 * want, rtol=1e-12)
  coeffs = _coeffs()
  problem, params = _toy_problem(coeffs)
  g, _ = strategy.arch_grad(problem, params, arch, (), None)
  for name in ARCH:
    np.testing.assert_allclose(g[name], np.asarray(coeffs[name]) * 2.0 * s[name] * (1 - s[name]),
                               rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# DARTS-


def test_dartsminus_beta_decays_linearly_per_epoch_to_zero():
  # beta_e = 1 - e / E, E = 3 epochs of 2 steps (the reference: (50 - e) / 50 for E = 50).
  strategy = registry.build("dartsminus", {"beta0": 1.0}, CONTEXT)
  state = strategy.init(None)
  assert float(state.beta) == 1.0
  got = [float(strategy.update_state(state, s, 6).beta) for s in range(8)]
  np.testing.assert_allclose(got, [1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 0], atol=1e-7)
  assert strategy.metrics(None, state) == {"skip_beta": state.beta}


def test_dartsminus_adds_beta_to_the_skip_column_only_where_the_supernet_runs(x64):
  ops = ("none", "avg_pool_3x3", "skip_connect", "nor_conv_1x1")
  strategy = registry.build("dartsminus", {"ops": ops}, CONTEXT)
  arch = _arch()
  state = strategy.init(arch)._replace(beta=jnp.asarray(0.4, jnp.float32))
  got = strategy.mix(arch, state, None)
  for name in ARCH:
    want = scipy.special.softmax(ARCH[name], axis=-1)
    np.testing.assert_allclose(derive_weights(strategy, arch, state)[name], want, rtol=1e-6)
    want[:, 2] += 0.4    # skip_connect is column 2 of this op list
    np.testing.assert_allclose(got[name], want, rtol=1e-6)
    np.testing.assert_allclose(eval_weights(strategy, arch, state)[name], want, rtol=1e-6)
  assert skip_index(sets.get("nb201").ops) == 1
  with pytest.raises(ValueError, match="identity op 'skip_connect'"):
    registry.build("dartsminus", {"ops": ("none", "nor_conv_3x3")}, CONTEXT)
  with pytest.raises(ValueError, match="op_set"):
    registry.build("dartsminus", {"op_set": "no_such_set"}, CONTEXT)


def test_dartsminus_mixed_edge_is_the_plain_one_plus_beta_times_x():
  """On a one-edge NAS-Bench-201 cell, the supernet at DARTS-' op weights computes DARTS' mixed
  output plus ``beta * x``: the auxiliary identity path."""
  op_set = sets.get("nb201")
  cell = SearchCell(op_set, channels=4, n_inputs=1, n_nodes=1)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  alpha = {"cell": jax.random.normal(jax.random.key(1), (1, len(op_set.ops)))}
  strategy = dartsminus(skip_index(op_set.ops), beta0=1.0)
  state = strategy.init(alpha)._replace(beta=jnp.asarray(0.3, jnp.float32))
  variables = cell.init(jax.random.key(2), [x], jnp.full((1, 5), 0.2))

  def run(weights):
    out, _ = cell.apply(variables, [x], weights, mutable=["batch_stats"])
    return out[-1]

  plain = run(jax.nn.softmax(alpha["cell"], axis=-1))
  minus = run(strategy.mix(alpha, state, None)["cell"])
  np.testing.assert_allclose(minus, plain + 0.3 * x, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# SDARTS-RS


def test_sdarts_mix_perturbs_the_softmax_within_the_bound_and_projects_it(x64):
  strategy = sdarts_rs(epsilon_max=0.3, epsilon_min=0.03)
  arch = _arch()
  state = strategy.init(arch)._replace(epsilon=jnp.asarray(0.2, jnp.float32))
  key = jax.random.key(4)
  got = strategy.mix(arch, state, key)
  for i, name in enumerate(sorted(ARCH)):   # leaf i draws with fold_in(key, i)
    w = scipy.special.softmax(ARCH[name], axis=-1)
    delta = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), w.shape, jnp.float64,
                                          -0.2, 0.2))
    assert np.all(np.abs(delta) <= 0.2) and np.any(np.abs(delta) > 0.1)
    v = np.clip(w + delta, 0.0, 1.0)
    np.testing.assert_allclose(got[name], v / v.sum(-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(got[name].sum(-1), 1.0, rtol=1e-12)
    # Before the projection the perturbation stays in the bound.
    assert np.all(np.abs((w + delta) - w) <= 0.2 + 1e-12)
    assert not np.allclose(got[name], w)
  assert not np.allclose(strategy.mix(arch, state, jax.random.key(5))["normal"], got["normal"])
  for weights in (derive_weights(strategy, arch, state), eval_weights(strategy, arch, state)):
    np.testing.assert_allclose(weights["normal"], scipy.special.softmax(ARCH["normal"], axis=-1),
                               rtol=1e-12)
  with pytest.raises(ValueError, match="needs a key"):
    strategy.mix(arch, state, None)
  # A row clipped to all zeros becomes one-hot at its argmax, as the reference's clip.
  np.testing.assert_allclose(project_to_simplex(jnp.asarray([[-0.1, -0.05, -0.3]])), [[0, 1, 0]])


def test_sdarts_arch_grad_is_darts_exactly_and_epsilon_rises_per_epoch(x64):
  arch, coeffs = _arch(), _coeffs()
  problem, params = _toy_problem(coeffs)
  strategy = registry.build("sdarts_rs", {}, CONTEXT)
  state = strategy.init(arch)
  g, aux = strategy.arch_grad(problem, params, arch, state, jax.random.key(3))
  want, want_aux = darts(order=1).arch_grad(problem, params, arch, (), jax.random.key(7))
  for name in ARCH:
    np.testing.assert_array_equal(g[name], want[name])
  assert float(aux["val_loss"]) == float(want_aux["val_loss"])
  # eps_e = 0.03 + 0.27 e / E, E = 3 epochs of 2 steps (the reference: per epoch, E = 100).
  assert float(state.epsilon) == pytest.approx(0.03)
  got = [float(strategy.update_state(state, s, 6).epsilon) for s in range(8)]
  np.testing.assert_allclose(got, [0.03, 0.03, 0.12, 0.12, 0.21, 0.21, 0.3, 0.3], rtol=1e-6)
  with pytest.raises(ValueError, match="epsilon_max"):
    registry.build("sdarts_rs", {"epsilon_max": 0.01}, CONTEXT)


# ------------------------------------------------------------------------------------------------
# SDARTS-ADV


def _simplex(v):
  """The reference's clip by hand: clamp to [0, 1], divide by the row sum."""
  c = np.clip(v, 0.0, 1.0)
  return c / c.sum(-1, keepdims=True)


def test_pgd_attack_sign_steps_by_hand(x64):
  from dnas.strategies.sdarts import pgd_attack  # pylint: disable=g-import-not-at-top
  a = {k: scipy.special.softmax(v, axis=-1) for k, v in ARCH.items()}
  c = {k: np.abs(np.asarray(v)) + 0.5 for k, v in _coeffs().items()}
  t = {k: np.full(v.shape, 0.25) for k, v in a.items()}
  # L(w) = sum c (w - t)^2: its gradient 2 c (w - t) changes sign with w.
  loss = lambda w: sum(jnp.sum(c[k] * (w[k] - t[k]) ** 2) for k in w)
  wa = {k: jnp.asarray(v) for k, v in a.items()}
  eps = 0.1
  # One step, no random start: delta = clip(2 eps sign(g(A)), -eps, eps) = eps sign(g(A)).
  adv, delta = pgd_attack(loss, wa, eps, steps=1, random_start=False)
  for k in a:
    d = eps * np.sign(2 * c[k] * (a[k] - t[k]))
    np.testing.assert_allclose(delta[k], d, rtol=1e-12)
    np.testing.assert_allclose(adv[k], _simplex(a[k] + d), rtol=1e-12)
  # Two steps from a random start (leaf i from fold_in(key, i)), step size 2 eps / 2.
  key = jax.random.key(1)
  adv, delta = pgd_attack(loss, wa, eps, steps=2, key=key)
  for i, k in enumerate(sorted(a)):
    d = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), a[k].shape, jnp.float64,
                                      -eps, eps))
    v = _simplex(a[k] + d)
    for _ in range(2):
      d = np.clip(v + eps * np.sign(2 * c[k] * (v - t[k])) - a[k], -eps, eps)
      v = _simplex(a[k] + d)
    np.testing.assert_allclose(delta[k], d, rtol=1e-12)
    np.testing.assert_allclose(adv[k], v, rtol=1e-12)
    assert np.all(np.abs(d) <= eps + 1e-15)
  assert float(loss(adv)) > float(loss(wa))
  # An attack that lowers the loss is dropped, as the reference's loss_before > loss_after.
  peak = {k: v + 0.01 for k, v in wa.items()}
  hill = lambda w: -sum(jnp.sum((w[k] - peak[k]) ** 2) for k in w)
  adv, delta = pgd_attack(hill, wa, 0.3, steps=1, random_start=False)
  for k in a:
    np.testing.assert_array_equal(adv[k], a[k])
    np.testing.assert_array_equal(delta[k], 0.0)


@pytest.mark.usefixtures("fast_compile")
def test_sdarts_adv_attack_beats_no_and_random_perturbation_on_a_tiny_supernet():
  from conftest import small_search  # pylint: disable=g-import-not-at-top
  from dnas import search  # pylint: disable=g-import-not-at-top
  from dnas.strategies.sdarts import perturbed_weights, pgd_attack  # pylint: disable=g-import-not-at-top
  model, _, _, _, bt, _ = small_search()
  variables = model.init(jax.random.key(0), bt["image"], train=True)
  loss_fn = search.make_loss_fn(model, variables["batch_stats"])
  loss_at = jax.jit(lambda w: loss_fn(variables["params"], w, bt)[0])
  arch = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape),
                      variables["arch"])
  a = jax.tree.map(lambda x: jax.nn.softmax(x, -1), arch)
  eps = 0.3
  attack = jax.jit(lambda w, k: pgd_attack(loss_at, w, eps, 7, k))
  adv, delta = attack(a, jax.random.key(3))
  for k in a:
    assert np.all(np.abs(np.asarray(delta[k])) <= eps + 1e-7)   # in the ball before projecting
    np.testing.assert_allclose(adv[k], project_to_simplex(a[k] + delta[k]), rtol=1e-6)
    assert np.all(np.asarray(adv[k]) >= 0)
    np.testing.assert_allclose(np.asarray(adv[k]).sum(-1), 1.0, rtol=1e-5)
  clean, attacked = float(loss_at(a)), float(loss_at(adv))
  # SDARTS-RS' perturbation of the same size, a few draws.
  randoms = [float(loss_at({k: perturbed_weights(x, eps, jax.random.fold_in(jax.random.key(i), j))
                            for j, (k, x) in enumerate(sorted(arch.items()))}))
             for i in range(4)]
  assert attacked > clean + 0.05, (attacked, clean)
  assert attacked > max(randoms), (attacked, randoms)


@pytest.mark.usefixtures("fast_compile")
def test_sdarts_adv_at_epsilon_zero_is_the_darts_step_bit_for_bit():
  from conftest import small_search  # pylint: disable=g-import-not-at-top
  from dnas import search  # pylint: disable=g-import-not-at-top
  model, darts1, weight_tx, arch_tx, bt, bv = small_search()
  adv = registry.build("sdarts_adv", {"epsilon_max": 0.0, "epsilon_min": 0.0}, CONTEXT)
  images = jnp.zeros((2, 8, 8, 3))
  out = []
  for strategy in (darts1, adv):
    state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(5),
                                     images)
    # The weights first, so that their step sees the same alpha in both runs.
    step = search.make_search_step(model, strategy, weight_tx, arch_tx, total_steps=6,
                                   update_order="weights_first")
    state, metrics = step(state, bt, bv)
    out.append(((state.params, state.batch_stats, state.weight_opt_state,
                 metrics["train_loss"], metrics["grad_norm"]), state.arch))
  for got, want in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[0][0])):
    np.testing.assert_array_equal(got, want)
  # Alpha's step is the same function, compiled inside another program: equal to rounding.
  for got, want in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[0][1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_sdarts_adv_strategy_is_darts_but_for_the_weight_pass(x64):
  strategy = registry.build("sdarts_adv", {}, CONTEXT)
  arch, coeffs = _arch(), _coeffs()
  problem, params = _toy_problem(coeffs)
  state = strategy.init(arch)
  g, _ = strategy.arch_grad(problem, params, arch, state, jax.random.key(3))
  want, _ = darts(order=1).arch_grad(problem, params, arch, (), None)
  for name in ARCH:
    np.testing.assert_array_equal(g[name], want[name])
    np.testing.assert_allclose(strategy.mix(arch, state, None)[name],
                               scipy.special.softmax(ARCH[name], axis=-1), rtol=1e-12)
  got = [float(strategy.update_state(state, s, 6).epsilon) for s in range(0, 8, 2)]
  np.testing.assert_allclose(got, [0.03, 0.12, 0.21, 0.3], rtol=1e-6)
  with pytest.raises(ValueError, match="attack_steps"):
    registry.build("sdarts_adv", {"attack_steps": 0}, CONTEXT)
