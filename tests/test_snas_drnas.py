"""SNAS and DrNAS: the search step on a tiny NAS-Bench-201 supernet, the math by hand, a toy."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats

from dnas import compiler, search, train_lib
from dnas.spaces import NB201SearchNet
from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem
from dnas.strategies.drnas import dirichlet_kl_to_uniform, drnas, prune
from dnas.strategies.snas import snas, temperature

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXT = registry.StrategyContext(learning_rate=0.025, momentum=0.9, weight_decay=3e-4,
                                   total_steps=4, steps_per_epoch=2)


@pytest.fixture(scope="module")
def nb201():
  """The tiny NAS-Bench-201 supernet, its variables (initialised once for both strategies) and
  two batches of 4 random 8x8 images."""
  model = NB201SearchNet(num_classes=10, channels=4, cells_per_stage=1)
  k = jax.random.split(jax.random.key(0), 3)
  bt = {"image": jax.random.normal(k[0], (4, 8, 8, 3)), "label": jnp.arange(4)}
  bv = {"image": jax.random.normal(k[1], (4, 8, 8, 3)), "label": jnp.arange(4)[::-1] + 3}
  variables = jax.jit(lambda key, x: model.init(key, x, train=True))(search.fast_init_key(k[2]),
                                                                    bt["image"])
  return model, variables, bt, bv


# ------------------------------------------------------------------------------------------------
# Conformance: the strategies in the jitted search step on the NB201 supernet.


@pytest.mark.parametrize("name", ["snas", "drnas"])
def test_search_step_on_nb201_compiles_once_and_follows_the_schedule(nb201, name, fast_compile):
  model, variables, bt, bv = nb201
  options = {"snas": {"tau_max": 10.0, "tau_min": 1.0}, "drnas": {}}[name]
  strategy = registry.build(name, options, CONTEXT)
  weight_tx, _ = search.darts_weight_optimizer(total_steps=CONTEXT.total_steps)
  arch_tx = search.darts_arch_optimizer(weight_decay=0.0)
  params, arch = variables["params"], variables["arch"]
  state = search.SearchState(
      step=jnp.zeros([], jnp.int32), params=params, arch=arch,
      batch_stats=variables["batch_stats"], weight_opt_state=weight_tx.init(params),
      arch_opt_state=arch_tx.init(arch), strategy_state=strategy.init(arch),
      key=jax.random.key(1))

  weights = strategy.mix(arch, state.strategy_state, jax.random.key(2))
  assert {k: (v.shape, v.dtype) for k, v in weights.items()} == {"cell": ((6, 5), jnp.float32)}
  np.testing.assert_allclose(weights["cell"].sum(-1), 1.0, rtol=1e-6)
  assert float(weights["cell"].min()) >= 0.0
  derived = strategy.derive_weights(arch, state.strategy_state)
  assert derived["cell"].shape == (6, 5) and derived["cell"].dtype == jnp.float32

  chex.clear_trace_counter()
  step = compiler.jit(chex.assert_max_traces(
      search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False,
                              total_steps=CONTEXT.total_steps), n=1),
                      cpu_preset="fast_compile", donate_argnums=0)
  start = jax.device_get(state)
  history = []
  for _ in range(3):
    state, metrics = step(state, bt, bv)
    history.append(jax.device_get(metrics))
  assert int(state.step) == 3
  assert all(int(m["skipped"]) == 0 for m in history)
  assert all(np.isfinite(v) for m in history for v in m.values())
  for field in ("params", "arch"):
    before = jax.tree.leaves(getattr(start, field))
    after = jax.tree.leaves(getattr(state, field))
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), field
  common = {"train_loss", "train_acc", "grad_norm", "skipped", "val_batch_loss",
            "val_batch_acc", "arch_grad_norm"}
  if name == "snas":
    assert set(history[0]) == common | {"tau"}
    # tau_e = 10 - 9 e / E with E = 4 / 2 epochs: the metrics give the tau each step ran at.
    assert [float(m["tau"]) for m in history] == [10.0, 10.0, 5.5]
    assert float(state.strategy_state.tau) == 5.5   # step 3 is in epoch 1
    assert state.strategy_state.tau.dtype == jnp.float32
  else:
    assert set(history[0]) == common | {"anchor_kl"}
    for m in history:  # l2 anchor: the metric is the KL, logged whatever the regulariser
      assert float(m["anchor_kl"]) >= 0.0
    assert bool(jnp.all(state.strategy_state.mask["cell"]))   # nothing pruned


# ------------------------------------------------------------------------------------------------
# SNAS by hand.


def test_snas_sample_is_the_gumbel_softmax_drawn_from_the_key():
  strategy = snas(tau_max=2.0, tau_min=0.5)
  arch = {"a": jnp.array([[0.3, -1.0, 2.0, 0.0]]), "b": jnp.array([[1.0, 0.0, -0.5]])}
  state = strategy.init(arch)
  assert float(state.tau) == 2.0
  key = jax.random.key(5)
  got = strategy.mix(arch, state, key)
  for i, name in enumerate(sorted(arch)):  # leaf i draws with fold_in(key, i)
    logits = np.asarray(arch[name], np.float64)
    g = np.asarray(jax.random.gumbel(jax.random.fold_in(key, i), logits.shape), np.float64)
    z = np.exp((logits + g) / 2.0)
    np.testing.assert_allclose(got[name], z / z.sum(-1, keepdims=True), rtol=1e-5)
    # alpha as log-probabilities (the paper's log alpha) gives the same sample.
    normalised = {**arch, name: jax.nn.log_softmax(arch[name])}
    np.testing.assert_allclose(strategy.mix(normalised, state, key)[name], got[name], rtol=1e-5)
  # A new key, a new sample; the derive and eval weights are noise-free.
  assert not np.allclose(strategy.mix(arch, state, jax.random.key(6))["a"], got["a"])
  np.testing.assert_allclose(strategy.derive_weights(arch, state)["a"],
                             jax.nn.softmax(arch["a"]), rtol=1e-6)
  np.testing.assert_allclose(strategy.eval_weights(arch, state)["a"],
                             jax.nn.softmax(arch["a"] / 2.0), rtol=1e-6)
  assert strategy.metrics(arch, state) == {"tau": state.tau}
  with pytest.raises(ValueError, match="needs a key"):
    strategy.mix(arch, state, None)


def test_snas_gradient_is_the_pathwise_gradient_through_the_sample():
  """``d/d alpha sum(c * w)`` with ``w = softmax((alpha + g) / tau)`` is
  ``(diag(w) - w w^T) c / tau`` at the drawn ``g``."""
  strategy = snas(tau_max=0.7, tau_min=0.7)
  alpha = jnp.array([[0.3, -1.0, 2.0, 0.0, 0.5]])
  c = jnp.array([1.0, -2.0, 0.5, 3.0, 0.0])
  state, key = strategy.init({"cell": alpha}), jax.random.key(9)
  grad = jax.grad(lambda a: jnp.sum(strategy.mix({"cell": a}, state, key)["cell"] * c))(alpha)
  w = np.asarray(strategy.mix({"cell": alpha}, state, key)["cell"][0], np.float64)
  want = (np.diag(w) - np.outer(w, w)) @ np.asarray(c, np.float64) / 0.7
  np.testing.assert_allclose(grad[0], want, rtol=1e-4, atol=1e-7)


def test_snas_temperature_schedule():
  # Per epoch (DrNAS' 201-space/train_search.py): tau_e = 10 - 9 e / 3 for 3 epochs of 2 steps.
  got = [float(temperature(s, 6, 10.0, 1.0, steps_per_epoch=2)) for s in range(9)]
  assert got == pytest.approx([10.0, 10.0, 7.0, 7.0, 4.0, 4.0, 1.0, 1.0, 1.0])
  # Per step: linear to tau_min at the last step, then held.
  got = [float(temperature(s, 4, 1.0, 0.2)) for s in range(6)]
  assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
  # update_state is the schedule; registry-built strategies hold tau per epoch of the context.
  strategy = registry.build("snas", {"tau_max": 10.0, "tau_min": 1.0}, CONTEXT._replace(
      total_steps=6, steps_per_epoch=2))
  state = strategy.init({})
  taus = []
  for s in range(1, 7):
    state = strategy.update_state(state, jnp.asarray(s), 6)
    taus.append(float(state.tau))
    assert state.tau.dtype == jnp.float32
  assert taus == pytest.approx([10.0, 7.0, 7.0, 4.0, 4.0, 1.0])
  assert registry.defaults("snas") == {"tau_max": 1.0, "tau_min": 0.03}  # the SNAS code's


def test_snas_and_drnas_argument_errors():
  with pytest.raises(ValueError, match="tau_min"):
    snas(tau_max=1.0, tau_min=0.0)
  with pytest.raises(ValueError, match="tau_max"):
    snas(tau_max=0.5, tau_min=1.0)
  with pytest.raises(ValueError, match="reg_type"):
    drnas(reg_type="l1")
  with pytest.raises(ValueError, match="reg_scale"):
    drnas(reg_scale=-1.0)
  with pytest.raises(ValueError, match="config.search.drnas.reg_scal"):
    registry.build("drnas", {"reg_scal": 1e-3}, CONTEXT)
  with pytest.raises(ValueError, match="config.search.snas.tau_max"):
    registry.build("snas", {"tau_max": "10"}, CONTEXT)


# ------------------------------------------------------------------------------------------------
# DrNAS by hand.


def test_drnas_sample_is_a_dirichlet_draw_of_elu_plus_one():
  strategy = drnas()
  arch = {"a": jnp.array([[-1.0, -0.2, 0.0, 0.5, 2.0], [0.1, 0.2, 0.3, 0.4, 0.5]]),
          "b": jnp.array([[3.0, -3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])}
  state = strategy.init(arch)
  key = jax.random.key(4)
  got = strategy.mix(arch, state, key)
  for i, name in enumerate(sorted(arch)):
    beta = np.where(arch[name] > 0, arch[name] + 1.0, np.exp(arch[name]))   # elu + 1
    want = jax.random.dirichlet(jax.random.fold_in(key, i), jnp.asarray(beta, jnp.float32))
    np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(strategy.derive_weights(arch, state)[name],
                               beta / beta.sum(-1, keepdims=True), rtol=1e-5)
  with pytest.raises(ValueError, match="needs a key"):
    strategy.mix(arch, state, None)


def test_drnas_gradient_is_the_implicit_reparameterisation_of_the_gamma_draws(x64):
  """Monte-Carlo free: the Jacobian of one sample w.r.t. alpha against the chain rule written
  out, with each log-Gamma draw's derivative from the Gamma CDF ``P`` (implicit
  reparameterisation): ``d g / d beta = -(d P(beta, g) / d beta) / p(g; beta)``, the CDF's
  derivative by a central difference in float64."""
  strategy = drnas()
  alpha = jnp.array([[-1.0, -0.2, 0.0, 0.5, 2.0]], jnp.float64)
  state, key = strategy.init({"cell": alpha}), jax.random.key(3)
  sample = lambda a: strategy.mix({"cell": a}, state, key)["cell"][0]  # noqa: E731
  w = np.asarray(sample(alpha))
  jac = np.asarray(jax.jacrev(sample)(alpha))[:, 0, :]

  a = np.asarray(alpha[0])
  beta = np.where(a > 0, a + 1.0, np.exp(a))
  log_g = np.asarray(jax.random.loggamma(jax.random.fold_in(key, 0), jnp.asarray(beta)))
  np.testing.assert_allclose(w, scipy.special.softmax(log_g), rtol=1e-12)
  g, h = np.exp(log_g), 1e-6
  dcdf = (scipy.special.gammainc(beta + h, g) - scipy.special.gammainc(beta - h, g)) / (2 * h)
  dlog_g = -dcdf / scipy.stats.gamma.pdf(g, beta) / g
  dbeta = np.where(a > 0, 1.0, np.exp(a))
  want = (np.diag(w) - np.outer(w, w)) @ np.diag(dlog_g * dbeta)
  np.testing.assert_allclose(jac, want, rtol=1e-6, atol=1e-10)


def test_drnas_expected_sample_gradient_is_the_dirichlet_mean_gradient():
  """With common random numbers, the average pathwise gradient of ``E[w_k]`` is the gradient of
  the Dirichlet mean ``beta_k / sum(beta)``."""
  strategy = drnas()
  alpha = jnp.array([[-0.5, 0.0, 0.3, 1.0, 2.0]])
  state = strategy.init({"cell": alpha})
  keys = jax.random.split(jax.random.key(8), 4000)
  c = jnp.array([1.0, -1.0, 2.0, 0.0, -0.5])

  def mc(a):
    w = jax.vmap(lambda k: strategy.mix({"cell": a}, state, k)["cell"][0])(keys)
    return jnp.mean(w @ c)

  exact = lambda a: strategy.derive_weights({"cell": a}, state)["cell"][0] @ c  # noqa: E731
  np.testing.assert_allclose(mc(alpha), exact(alpha), atol=0.02)
  np.testing.assert_allclose(jax.grad(mc)(alpha), jax.grad(exact)(alpha), atol=0.02)


def test_drnas_regulariser_by_hand():
  alpha = jnp.array([[-1.0, -0.2, 0.0, 0.5, 2.0], [0.3, 0.3, 0.3, 0.3, 0.3]])
  arch = {"cell": alpha, "other": jnp.array([[0.5, -0.5]])}
  betas = {k: np.where(v > 0, v + 1.0, np.exp(v)).astype(np.float64) for k, v in arch.items()}
  # KL(Dir(b) || Dir(1)) = -H(Dir(b)) - log (K-1)!, the uniform density on the simplex being
  # (K-1)!: against SciPy's entropy, not the formula the module uses.
  kl = sum(-scipy.stats.dirichlet(b).entropy() - scipy.special.gammaln(len(b))
           for bs in betas.values() for b in bs)
  np.testing.assert_allclose(
      sum(np.sum(dirichlet_kl_to_uniform(jnp.asarray(b))) for b in betas.values()), kl,
      rtol=1e-5)
  np.testing.assert_allclose(drnas("kl", 0.01).regularizer(arch), 0.01 * kl, rtol=1e-5)
  assert abs(float(dirichlet_kl_to_uniform(jnp.ones(5)))) < 1e-5   # the anchor itself
  # l2: reg_scale / 2 * ||alpha||^2, whose gradient is the reference's Adam weight decay.
  l2 = drnas("l2", 1e-3)
  sq = sum(float(jnp.sum(v ** 2)) for v in arch.values())
  np.testing.assert_allclose(l2.regularizer(arch), 0.5e-3 * sq, rtol=1e-6)
  grads = jax.grad(l2.regularizer)(arch)
  for k in arch:
    np.testing.assert_allclose(grads[k], 1e-3 * arch[k], rtol=1e-6)
  np.testing.assert_allclose(l2.metrics(arch, l2.init(arch))["anchor_kl"], kl, rtol=1e-5)
  assert registry.defaults("drnas") == {"reg_type": "l2", "reg_scale": 1e-3, "stage_epochs": (),
                                        "num_keep": (), "arch_warmup_epochs": 0}


def test_drnas_prune_keeps_the_strongest_ops_as_the_reference():
  strategy = drnas()
  arch = {"cell": jnp.array([[0.5, -0.1, 2.0, 0.3, -1.0], [-2.0, -1.0, -3.0, 0.0, -0.5]])}
  state = strategy.init(arch)
  arch2, state2 = prune(arch, state, 3)
  np.testing.assert_array_equal(state2.mask["cell"], [[1, 0, 1, 1, 0], [0, 1, 0, 1, 1]])
  np.testing.assert_allclose(arch2["cell"], [[0.5, 0.0, 2.0, 0.3, 0.0],
                                             [0.0, -1.0, 0.0, 0.0, -0.5]], rtol=1e-7)
  w = strategy.mix(arch2, state2, jax.random.key(0))["cell"]
  assert bool(jnp.all(jnp.where(state2.mask["cell"], w > 0, w == 0)))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  d = strategy.derive_weights(arch2, state2)["cell"]
  beta = jnp.where(state2.mask["cell"], jax.nn.elu(arch2["cell"]) + 1, 0.0)
  np.testing.assert_allclose(d, beta / beta.sum(-1, keepdims=True), rtol=1e-6)
  # The kept ops' weights are the Dirichlet of the kept concentrations, from the same draws.
  log_g = jax.random.loggamma(jax.random.fold_in(jax.random.key(0), 0),
                              jax.nn.elu(arch2["cell"]) + 1)
  kept = np.asarray(state2.mask["cell"][0])
  np.testing.assert_allclose(w[0][kept], jax.nn.softmax(log_g[0][kept]), rtol=1e-5)
  # A second pruning ranks only the kept ops and never takes a pruned one back.
  arch3, state3 = prune({"cell": arch2["cell"].at[0, 1].set(9.0)}, state2, 2)
  np.testing.assert_array_equal(state3.mask["cell"], [[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
  _, state4 = prune(arch3, state3, 4)
  np.testing.assert_array_equal(state4.mask["cell"], state3.mask["cell"])
  with pytest.raises(ValueError, match="num_keep"):
    prune(arch, state, 6)


# ------------------------------------------------------------------------------------------------
# Learning a toy problem with a known answer.


def _toy_problem(target: int, n_ops: int = 5):
  """A loss of the op weights alone, lowest when every edge puts all its weight on ``target``."""
  onehot = jax.nn.one_hot(target, n_ops)

  def loss_fn(params, op_weights, batch):
    del params, batch
    loss = jnp.mean(jnp.sum((op_weights["cell"] - onehot) ** 2, axis=-1))
    return loss, (None, jnp.zeros((1, n_ops)))

  return BilevelProblem(loss_fn, optax.identity(), None, None, None)


@pytest.mark.parametrize("name", ["snas", "drnas"])
def test_learns_the_op_a_toy_loss_prefers(name):
  strategy = {"snas": snas(tau_max=1.0, tau_min=1.0), "drnas": drnas("l2", 1e-3)}[name]
  problem = _toy_problem(target=2)
  arch = {"cell": 1e-3 * jax.random.normal(jax.random.key(0), (6, 5))}
  tx = optax.adam(0.05, b1=0.5, b2=0.999)
  state = strategy.init(arch)

  @jax.jit
  def step(arch, opt_state, key):
    g, aux = strategy.arch_grad(problem, None, arch, state, key)
    if strategy.regularizer is not None:
      g = jax.tree.map(jnp.add, g, jax.grad(strategy.regularizer)(arch))
    updates, opt_state = tx.update(g, opt_state, arch)
    return optax.apply_updates(arch, updates), opt_state, aux["val_loss"]

  opt_state, losses = tx.init(arch), []
  for i in range(150):
    arch, opt_state, loss = step(arch, opt_state, jax.random.fold_in(jax.random.key(1), i))
    losses.append(float(loss))
  w = strategy.derive_weights(arch, state)["cell"]
  np.testing.assert_array_equal(jnp.argmax(w, -1), 2)
  assert float(w[:, 2].min()) > 0.5, w
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


# ------------------------------------------------------------------------------------------------
# The experiment configs.


@pytest.mark.parametrize("name", ["snas", "drnas"])
def test_nb201_configs(name):
  path = os.path.join(REPO, "experiments", f"nb201_{name}_cifar10.py")
  module = train_lib.load_module(path)
  with pytest.raises(ValueError, match="valid: " + ", ".join(module.VARIANTS)):
    train_lib.load_config(path, "no-such-variant")
  for variant in module.VARIANTS:
    c = train_lib.load_config(path, variant)
    train_lib.validate_search_config(c)
    assert c.search.strategy == name
    for key in ("order", "hessian", "virtual_step"):   # DARTS' keys live under search.darts
      assert key not in c.search
    options = registry.resolve_options(name, c.search[name].to_dict())
    registry.build(name, options, CONTEXT._replace(total_steps=2 * c.search.epochs))
    assert c.search.update_order == "arch_first" and not c.search.nesterov
    assert c.precision == "highest"
  default, smoke = train_lib.load_config(path), train_lib.load_config(path, "smoke")
  assert (default.search.epochs, default.data.batch_size, default.model.channels,
          default.model.layers) == (100, 64, 16, 5)
  assert (smoke.search.epochs, smoke.data.train_size, smoke.model.channels,
          smoke.model.layers) == (2, 256, 4, 1)
  if name == "snas":
    assert (default.search.snas.tau_max, default.search.snas.tau_min) == (10.0, 1.0)
    assert default.search.arch_weight_decay == 1e-3
  else:
    assert default.search.drnas.to_dict() == {"reg_type": "l2", "reg_scale": 1e-3,
                                              "stage_epochs": (), "num_keep": (),
                                              "arch_warmup_epochs": 0}
    assert default.search.arch_weight_decay == 0.0   # the l2 anchor is alpha's only decay
