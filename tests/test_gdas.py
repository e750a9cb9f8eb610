"""GDAS: the sample and its gradient by hand, the temperature schedule, the jitted step, a toy."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas import compiler, search
from dnas.ops import registry as op_registry
from dnas.ops.sets import OpSet
from dnas.spaces import NB201SearchNet
from dnas.spaces.cell import SearchCell
from dnas.spaces.common import arch_init
from dnas.strategies import registry
from dnas.strategies.gdas import gdas, straight_through, temperature
from dnas.types import SampledOps

CONTEXT = registry.StrategyContext(learning_rate=0.025, momentum=0.9, weight_decay=5e-4,
                                   total_steps=4, steps_per_epoch=2)


def test_mix_gives_one_hot_samples_shaped_like_alpha():
  k = jax.random.split(jax.random.key(0), 3)
  arch = {"normal": jax.random.normal(k[0], (14, 8)), "reduce": jax.random.normal(k[1], (14, 8))}
  strategy = gdas()
  ops = jax.jit(strategy.mix)(arch, strategy.init(arch), k[2])
  assert set(ops) == {"normal", "reduce"}
  for name, s in ops.items():
    assert isinstance(s, SampledOps)
    assert s.index.shape == (14,) and s.index.dtype == jnp.int32
    assert s.weights.shape == (14, 8) and s.weights.dtype == jnp.float32
    np.testing.assert_allclose(s.weights, jax.nn.one_hot(s.index, 8), atol=1e-6)
  # One draw per cell type: the two types' noise differs.
  assert not np.array_equal(ops["normal"].index, ops["reduce"].index)
  with pytest.raises(ValueError, match="needs a key"):
    strategy.mix(arch, strategy.init(arch), None)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_sampled_index_follows_softmax_of_alpha(tau):
  # Gumbel-max: argmax(log_softmax(alpha) + G) ~ Categorical(softmax(alpha)); a positive tau
  # rescales without moving the argmax.
  alpha = jnp.array([[0.5, -1.0, 1.5, 0.0, 0.2]])
  strategy = gdas(tau_max=tau, tau_min=tau)
  state = strategy.init({"cell": alpha})
  n = 20000
  keys = jax.random.split(jax.random.key(1), n)
  index = jax.jit(jax.vmap(lambda k: strategy.mix({"cell": alpha}, state, k)["cell"].index))(keys)
  freq = np.bincount(np.asarray(index[:, 0]), minlength=5) / n
  want = np.asarray(jax.nn.softmax(alpha[0]))
  # 4 standard errors of a frequency of 20000 draws: at most 0.014.
  tol = 4 * np.sqrt(want * (1 - want) / n)
  assert np.all(np.abs(freq - want) <= tol), (freq, want, tol)


def test_straight_through_gradient_is_the_softmax_jacobian_by_hand():
  k = jax.random.split(jax.random.key(2), 3)
  alpha = jax.random.normal(k[0], (3, 5))
  gumbels = jax.random.gumbel(k[1], (3, 5))
  c = np.asarray(jax.random.normal(k[2], (3, 5)))
  tau = 0.7
  s = straight_through(alpha, gumbels, tau)
  p = np.asarray(jax.nn.softmax((jax.nn.log_softmax(alpha) + gumbels) / tau))
  np.testing.assert_array_equal(s.index, p.argmax(-1))
  np.testing.assert_allclose(s.weights, np.eye(5)[p.argmax(-1)], atol=1e-6)
  got = jax.grad(lambda a: jnp.sum(c * straight_through(a, gumbels, tau).weights))(alpha)
  # p = softmax(z), z = (log_softmax(alpha) + G) / tau: J_p^T c = p * (c - <p, c>) / tau, and
  # log_softmax's Jacobian (I - 1 softmax(alpha)^T) maps it to itself (its entries sum to 0).
  want = p * (c - np.sum(p * c, -1, keepdims=True)) / tau
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_temperature_falls_per_epoch_to_tau_min_in_the_last_epoch():
  # exps/algos/GDAS.py: tau = tau_max - (tau_max - tau_min) * epoch / (total_epoch - 1).
  taus = [float(temperature(s, 12, 10.0, 0.1, steps_per_epoch=3)) for s in range(14)]
  want = [10.0] * 3 + [10.0 - 9.9 / 3] * 3 + [10.0 - 2 * 9.9 / 3] * 3 + [0.1] * 5
  np.testing.assert_allclose(taus, want, rtol=1e-6)
  assert taus[-1] == np.float32(0.1)  # exactly tau_min
  per_step = [float(temperature(s, 5, 10.0, 0.1)) for s in range(5)]
  np.testing.assert_allclose(per_step, [10.0, 7.525, 5.05, 2.575, 0.1], rtol=1e-6)
  assert float(temperature(7, 4, 10.0, 0.1, steps_per_epoch=4)) == 10.0  # one epoch: tau_max
  strategy = gdas(steps_per_epoch=3)
  state = strategy.init({})
  assert float(state.tau) == 10.0
  assert float(strategy.update_state(state, 9, 12).tau) == pytest.approx(0.1)
  assert strategy.metrics({}, state) == {"tau": state.tau}


def test_registered_with_its_options_and_the_runs_epochs():
  assert registry.defaults("gdas") == {"tau_max": 10.0, "tau_min": 0.1}
  strategy = registry.build("gdas", {"tau_min": 0.5}, CONTEXT)
  state = strategy.update_state(strategy.init({}), 2, CONTEXT.total_steps)  # epoch 1 of 2
  assert float(state.tau) == pytest.approx(0.5)
  assert float(strategy.update_state(state, 1, CONTEXT.total_steps).tau) == 10.0
  with pytest.raises(ValueError, match="tau_min"):
    registry.build("gdas", {"tau_min": 0.0}, CONTEXT)
  with pytest.raises(ValueError, match="takes no option"):
    registry.build("gdas", {"order": 1}, CONTEXT)


def test_derive_and_eval_weights_need_no_key():
  alpha = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
  strategy = gdas()
  state = strategy.init({"cell": alpha})
  np.testing.assert_allclose(strategy.derive_weights({"cell": alpha}, state)["cell"],
                             jax.nn.softmax(alpha), rtol=1e-6)
  path = strategy.eval_weights({"cell": alpha}, state)["cell"]
  assert isinstance(path, SampledOps)
  np.testing.assert_array_equal(path.index, [1, 0])
  np.testing.assert_array_equal(path.weights, [[0, 1, 0], [1, 0, 0]])


def test_search_step_on_nb201_compiles_once_and_evaluates_the_argmax_path(fast_compile):
  chex.clear_trace_counter()
  model = NB201SearchNet(num_classes=10, channels=4, cells_per_stage=1)
  k = jax.random.split(jax.random.key(0), 3)
  bt = {"image": jax.random.normal(k[0], (4, 8, 8, 3)), "label": jnp.arange(4)}
  bv = {"image": jax.random.normal(k[1], (4, 8, 8, 3)), "label": jnp.arange(4)[::-1] + 3}
  strategy = registry.build("gdas", {}, CONTEXT)
  weight_tx, _ = search.darts_weight_optimizer(total_steps=CONTEXT.total_steps)
  arch_tx = search.darts_arch_optimizer()
  state = compiler.jit(lambda key: search.init_search_state(model, strategy, weight_tx, arch_tx,
                                                             key, bt["image"]))(k[2])
  step = compiler.jit(chex.assert_max_traces(search.make_search_step(
      model, strategy, weight_tx, arch_tx, update_order="weights_first",
      total_steps=CONTEXT.total_steps, jit=False), n=1), donate_argnums=0)
  start = jax.device_get(state)
  taus = []
  for _ in range(3):
    state, metrics = step(state, bt, bv)
    taus.append(float(metrics["tau"]))
    assert int(metrics["skipped"]) == 0
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  # The metrics report the step's own temperature: epochs 0, 0, 1 of 2.
  np.testing.assert_allclose(taus, [10.0, 10.0, 0.1], rtol=1e-6)
  assert int(state.step) == 3
  # Straight-through: every op's alpha moves, the picked ones' and the others'.
  assert np.all(np.asarray(state.arch["cell"]) != start.arch["cell"])
  for name in ("params", "batch_stats"):
    before, after = jax.tree.leaves(getattr(start, name)), jax.tree.leaves(getattr(state, name))
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), name

  # Eval mode at the argmax path equals the dense path with its one-hot weights.
  eval_step = search.make_eval_step(model, strategy)
  got = jax.device_get(eval_step(state, bv))
  hot = jax.nn.one_hot(jnp.argmax(state.arch["cell"], -1), 5)
  logits = compiler.jit(lambda s, w: model.apply(
      {"params": s.params, "batch_stats": s.batch_stats}, bv["image"], w, train=False))(
          state, {"cell": hot})
  want = search.cross_entropy(logits, bv["label"]) * 4
  np.testing.assert_allclose(got["loss_sum"], want, rtol=1e-5)
  assert int(got["correct"]) == int(jnp.sum(jnp.argmax(logits, -1) == bv["label"]))


class _Scale(nn.Module):
  factor: float

  def __call__(self, x, train):
    del train
    return self.factor * x


class _Roll(nn.Module):

  def __call__(self, x, train):
    del train
    return jnp.roll(x, 1, axis=-1)


class _ToyNet(nn.Module):
  """One sampled edge whose output, plus a bias, is the logits: only ``skip_connect`` (op 2)
  passes the label through; ``negate`` and ``roll`` point at wrong classes, ``none`` at none."""
  op_set: OpSet

  @nn.compact
  def __call__(self, x, op_weights=None, train=True):
    shape = (1, len(self.op_set.ops))
    if self.is_initializing():
      self.variable("arch", "cell", arch_init, self.make_rng("params"), shape)
    if op_weights is None:
      op_weights = {"cell": jnp.full(shape, 1.0 / shape[1])}
    (y,) = SearchCell(self.op_set, x.shape[-1], n_inputs=1, n_nodes=1, train=train)(
        [x], op_weights["cell"])
    return y[:, 0, 0, :] + self.param("bias", nn.initializers.zeros, (x.shape[-1],))


def test_search_finds_the_only_op_that_passes_the_label_through():
  ops = OpSet("toy", ("none", "toy_negate", "skip_connect", "toy_roll"))
  with op_registry.temporary("toy_negate", lambda channels, stride: _Scale(-1.0)), \
      op_registry.temporary("toy_roll", lambda channels, stride: _Roll()):
    model = _ToyNet(ops)
    labels = jax.random.randint(jax.random.key(0), (2048,), 0, 3)
    images = 3.0 * jax.nn.one_hot(labels, 3)[:, None, None, :]
    strategy = gdas(tau_max=1.0, tau_min=0.1, steps_per_epoch=1)
    weight_tx, arch_tx = optax.sgd(0.1), optax.adam(0.05, b1=0.5)
    state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(1),
                                     images[:2])
    steps, b = 60, 16
    step = search.make_search_step(model, strategy, weight_tx, arch_tx, total_steps=steps)
    for i in range(steps):
      j = 2 * i * b
      tr = {"image": images[j:j + b], "label": labels[j:j + b]}
      va = {"image": images[j + b:j + 2 * b], "label": labels[j + b:j + 2 * b]}
      state, metrics = step(state, tr, va)
  w = jax.nn.softmax(state.arch["cell"][0])
  assert int(jnp.argmax(w)) == 2, w
  assert float(w[2]) > 0.6, w
  assert float(metrics["tau"]) < 0.2
