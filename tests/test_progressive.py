"""Progressive DrNAS: pruning between stages and alpha at rest, inside the compiled step."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import search, search_loop, train_lib
from dnas.strategies import registry
from dnas.strategies.drnas import drnas, prune

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 5


class ToySupernet(nn.Module):
  """Two mixed edges of 5 dense ops on flat inputs, with a BatchNorm: compiles in a second."""

  @nn.compact
  def __call__(self, x, op_weights=None, train=True):
    if op_weights is None:  # init: alpha in its own collection, uniform op weights
      self.variable("arch", "cell", lambda k: 1e-3 * jax.random.normal(k, (2, K)),
                    self.make_rng("params"))
      op_weights = {"cell": jnp.full((2, K), 1.0 / K)}
    w = op_weights["cell"]
    x = x.reshape(x.shape[0], -1)
    for e in range(2):
      ys = jnp.stack([nn.Dense(6, name=f"e{e}_op{k}")(x) for k in range(K)], 0)
      x = jnp.einsum("k,kbc->bc", w[e], ys)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"bn{e}")(x))
    return nn.Dense(3)(x)


def _run(strategy, steps, arch_tx=None):
  model = ToySupernet()
  weight_tx, _ = search.darts_weight_optimizer(total_steps=steps)
  arch_tx = arch_tx or search.darts_arch_optimizer(weight_decay=0.0)
  k = jax.random.split(jax.random.key(0), 3)
  bt = {"image": jax.random.normal(k[0], (8, 4, 4, 1)), "label": jnp.arange(8) % 3}
  bv = {"image": jax.random.normal(k[1], (8, 4, 4, 1)), "label": (jnp.arange(8) + 1) % 3}
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, k[2], bt["image"])
  step = search.make_search_step(model, strategy, weight_tx, arch_tx, total_steps=steps,
                                 cpu_preset="fast_compile")
  states, metrics = [jax.device_get(state)], []
  for _ in range(steps):
    state, m = step(state, bt, bv)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return states, metrics


def test_stages_prune_at_their_start_and_alpha_rests_in_each_warm_up():
  # Stages of 4 and 3 steps keeping 5 then 2 ops; alpha rests in each stage's first 2 steps.
  strategy = drnas("l2", 1e-3, stage_steps=(4, 3), num_keep=(5, 2), arch_warmup_steps=2)
  states, metrics = _run(strategy, 7)
  # states[i] holds i steps done; step i (0-based) turns states[i] into states[i + 1].
  active = [int(m["arch_steps"]) for m in metrics]
  assert active == [0, 0, 1, 1, 0, 0, 1]
  for i, m in enumerate(metrics):
    moved = not np.array_equal(states[i + 1].arch["cell"], states[i].arch["cell"])
    adam = jax.tree.leaves(states[i + 1].arch_opt_state)
    adam_before = jax.tree.leaves(states[i].arch_opt_state)
    adam_moved = any(not np.array_equal(a, b) for a, b in zip(adam, adam_before))
    if i == 4:   # the pruning at stage 1's start changes alpha, not its optimizer state
      assert moved and not adam_moved
    else:
      assert moved == bool(active[i]) and adam_moved == bool(active[i]), i
    params_moved = any(not np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(states[i + 1].params),
                           jax.tree.leaves(states[i].params)))
    assert params_moved, i   # the weights train throughout
    if not active[i]:
      assert float(m["val_batch_loss"]) == 0.0 and float(m["arch_grad_norm"]) == 0.0
    else:
      assert float(m["val_batch_loss"]) > 0.0 and float(m["arch_grad_norm"]) > 0.0
  # Stage 0 keeps every op; stage 1 starts (step 4) by pruning to the 2 strongest per edge of
  # the alpha the first stage learnt, exactly as `prune`.
  for s in states[:5]:
    assert bool(np.all(s.strategy_state.mask["cell"]))
  expect_arch, expect_state = prune(states[4].arch, states[4].strategy_state, 2)
  np.testing.assert_array_equal(states[5].strategy_state.mask["cell"],
                                expect_state.mask["cell"])
  assert (states[5].strategy_state.mask["cell"].sum(-1) == 2).all()
  # Step 4 rests alpha, so what it holds after is the pruned alpha.
  np.testing.assert_array_equal(states[5].arch["cell"], expect_arch["cell"])
  for s in states[5:]:
    np.testing.assert_array_equal(s.strategy_state.mask["cell"], expect_state.mask["cell"])
  w = strategy.derive_weights(states[-1].arch, states[-1].strategy_state)["cell"]
  assert np.all(np.asarray(w)[~states[-1].strategy_state.mask["cell"]] == 0.0)


def test_one_stage_without_warm_up_is_the_plain_strategy():
  states_a, metrics_a = _run(drnas("l2", 1e-3), 3)
  states_b, metrics_b = _run(drnas("l2", 1e-3, stage_steps=(3,), num_keep=(5,)), 3)
  assert "arch_steps" not in metrics_a[0] and "arch_steps" not in metrics_b[0]
  for a, b in zip(jax.tree.leaves(states_a[-1]), jax.tree.leaves(states_b[-1])):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      continue
    np.testing.assert_array_equal(a, b)


def test_interval_means_average_the_arch_pass_over_its_steps():
  sums = {"train_loss": 6.0, "val_batch_loss": 4.0, "val_batch_acc": 1.0,
          "arch_grad_norm": 2.0, "arch_steps": 2}
  assert search_loop.interval_means(sums, 3) == {
      "train_loss": 2.0, "val_batch_loss": 2.0, "val_batch_acc": 0.5, "arch_grad_norm": 1.0,
      "arch_steps": 2}
  rest = search_loop.interval_means(dict(sums, arch_steps=0), 3)
  assert rest == {"train_loss": 2.0, "arch_steps": 0}
  plain = search_loop.interval_means({"train_loss": 6.0, "val_batch_loss": 3.0}, 3)
  assert plain == {"train_loss": 2.0, "val_batch_loss": 1.0}


CONTEXT = registry.StrategyContext(learning_rate=0.025, momentum=0.9, weight_decay=3e-4,
                                   total_steps=100, steps_per_epoch=10)


def test_builder_turns_epochs_into_steps_and_checks_them():
  s = registry.build("drnas", {"stage_epochs": (6, 4), "num_keep": (5, 3),
                               "arch_warmup_epochs": 2}, CONTEXT)
  assert [bool(s.arch_active(None, jnp.asarray(t))) for t in (0, 19, 20, 59, 60, 79, 80)] == [
      False, False, True, True, False, False, True]
  with pytest.raises(ValueError, match=r"stage_epochs.*add up to search.epochs \(10\)"):
    registry.build("drnas", {"stage_epochs": (5, 4), "num_keep": (5, 3)}, CONTEXT)
  with pytest.raises(ValueError, match="num_keep must give one count per stage"):
    registry.build("drnas", {"stage_epochs": (5, 5), "num_keep": (3,)}, CONTEXT)
  with pytest.raises(ValueError, match="must not grow"):
    registry.build("drnas", {"stage_epochs": (5, 5), "num_keep": (3, 4)}, CONTEXT)
  with pytest.raises(ValueError, match="arch_warmup_epochs"):
    registry.build("drnas", {"arch_warmup_epochs": -1}, CONTEXT)
  with pytest.raises(ValueError, match="config.search.drnas.stage_epochs: must be a tuple"):
    registry.build("drnas", {"stage_epochs": 5}, CONTEXT)


def test_progressive_config_is_the_references_schedule():
  path = os.path.join(REPO, "experiments", "nb201_drnas_cifar10.py")
  c = train_lib.load_config(path, "progressive")
  train_lib.validate_search_config(c)
  # 201-space/train_search_progressive.py: train_epochs [50, 50], num_keeps [5, 3], `if epoch
  # >= 10` within each stage.
  assert tuple(c.search.drnas.stage_epochs) == (50, 50) and c.search.epochs == 100
  assert tuple(c.search.drnas.num_keep) == (5, 3)
  assert c.search.drnas.arch_warmup_epochs == 10
  assert c.search.drnas.reg_type == "l2" and c.search.arch_weight_decay == 0.0
  smoke = train_lib.load_config(path, "progressive_smoke")
  assert tuple(smoke.search.drnas.stage_epochs) == (1, 1) and smoke.search.epochs == 2
  assert smoke.search.drnas.arch_warmup_epochs == 0 and smoke.model.channels == 4
