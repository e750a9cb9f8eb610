"""The bilevel search step: hypergradients against references, compile-once, learning."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas import search
from dnas.ops.sets import OpSet
from dnas.spaces import DartsSearchNet
from dnas.spaces.cell import SearchCell
from dnas.spaces.common import arch_init
from dnas.strategies import darts, make_virtual_step
from dnas.strategies.base import BilevelProblem

# A small op set with a conv (weights that depend on alpha through the virtual step), a pool
# followed by BN and the parameter-free ops.
TINY_OPS = OpSet("tiny", ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"),
                 bn_after=("avg_pool_3x3",))


def _tiny_problem(dtype, grad_clip=5.0, lr=0.1, model=None):
  """A 2-cell, 2-node DARTS supernet (or ``model``), its state after one real weight step, and
  two batches."""
  model = model or DartsSearchNet(num_classes=3, channels=3, layers=2, nodes=2, multiplier=2,
                                  op_set=TINY_OPS)
  k = jax.random.split(jax.random.key(0), 5)
  cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
  bt = {"image": jax.random.normal(k[0], (4, 8, 8, 3), dtype),
        "label": jax.random.randint(k[1], (4,), 0, 3)}
  bv = {"image": jax.random.normal(k[2], (4, 8, 8, 3), dtype),
        "label": jax.random.randint(k[3], (4,), 0, 3)}
  variables = model.init(k[4], bt["image"], train=True)
  params, arch = cast(variables["params"]), cast(variables["arch"])
  # alpha away from uniform so the softmax Jacobian is generic.
  arch = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(7), a.shape, dtype),
                      arch)
  batch_stats = cast(variables["batch_stats"])
  weight_tx, schedule = search.darts_weight_optimizer(
      learning_rate=lr, min_learning_rate=lr / 10, total_steps=10, grad_clip=grad_clip)
  loss_fn = search.make_loss_fn(model, batch_stats)
  # One real step first, so that the momentum buffer is not zero.
  mix = jax.tree.map(lambda a: jax.nn.softmax(a, -1), arch)
  g0, _ = jax.grad(loss_fn, has_aux=True)(params, mix, bt)
  opt_state = weight_tx.init(params)
  upd, opt_state = weight_tx.update(g0, opt_state, params)
  params = optax.apply_updates(params, upd)
  problem = BilevelProblem(loss_fn, weight_tx, opt_state, bt, bv)
  return problem, params, arch, schedule


def _reference_unrolled_loss(problem, params, schedule, grad_clip, momentum=0.9, wd=3e-4):
  """L_val(w'(alpha), alpha) with w' written out as one PyTorch SGD step, clipped by
  ``grad_clip`` (``None``: DARTS' eq. 7 as its code takes it, unclipped)."""
  trace = optax.tree_utils.tree_get(problem.weight_opt_state, "trace")
  count = optax.tree_utils.tree_get(problem.weight_opt_state, "count")
  lr = schedule(count)

  def f(arch):
    mix = jax.tree.map(lambda a: jax.nn.softmax(a, -1), arch)
    g, _ = jax.grad(problem.loss_fn, has_aux=True)(params, mix, problem.batch_train)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(g)))
    scale = jnp.minimum(1.0, grad_clip / norm) if grad_clip else 1.0
    w2 = jax.tree.map(lambda w, gi, m: w - lr * (momentum * m + gi * scale + wd * w),
                      params, g, trace)
    return problem.loss_fn(w2, mix, problem.batch_val)[0]

  return f


def _directions(arch, n):
  keys = jax.random.split(jax.random.key(3), n)
  out = []
  for k in keys:
    d = jax.tree.map(lambda a: jax.random.normal(k, a.shape, a.dtype), arch)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(d)))
    out.append(jax.tree.map(lambda x: x / norm, d))
  return out


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel_err(a, b):
  num = sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return float(jnp.sqrt(num / sum(jnp.sum(y ** 2) for y in jax.tree.leaves(b))))


# Clipping active (0.05): the paper's step must ignore it, the optimizer's must apply it.
@pytest.mark.parametrize("virtual_step,grad_clip", [("paper", 0.05), ("optimizer", 0.05)])
def test_exact_second_order_matches_central_difference(x64, grad_clip, virtual_step):
  """The hypergradient against central differences of L_val(w'(alpha)) written out by hand:
  the paper's step ignores the weight optimizer's clipping, the optimizer's step clips."""
  # The default (the paper's step) on a DARTS supernet; the optimizer's on one mixed edge, which
  # compiles in a fraction of the time.
  problem, params, arch, schedule = _tiny_problem(
      jnp.float64, grad_clip=grad_clip, model=None if virtual_step == "paper" else _CountingNet())
  strategy = darts(order=2, learning_rate=schedule, virtual_step=virtual_step)
  g, aux = jax.jit(lambda p, a: strategy.arch_grad(problem, p, a, (), None))(params, arch)
  assert jax.tree.leaves(g)[0].dtype == jnp.float64
  f = jax.jit(_reference_unrolled_loss(problem, params, schedule,
                                       grad_clip if virtual_step == "optimizer" else None))
  np.testing.assert_allclose(aux["val_loss"], f(arch), rtol=1e-12)
  h = 1e-5
  for d in _directions(arch, 3):
    fd = (f(jax.tree.map(lambda a, v: a + h * v, arch, d))
          - f(jax.tree.map(lambda a, v: a - h * v, arch, d))) / (2 * h)
    np.testing.assert_allclose(_dot(g, d), fd, rtol=1e-6)

  # The finite-difference form (DARTS eq. 8) takes its difference along the same step's
  # u = (dw'/dg)^T v, so it differs from the exact hypergradient only by the central
  # difference's error, O(r^2) while w +- r u crosses no ReLU kink, for either step. At DARTS'
  # own eps = 0.01 this tiny piecewise-linear net crosses kinks and the finite-difference
  # gradient is off by O(1): one reason to prefer the exact form. Measured on this net (paper's
  # step): relative error 1.5 at eps 1e-3, 15 at 1e-4 (a kink), 5e-10 at 1e-5, 1e-10 at 1e-6.
  fd_strategy = darts(order=2, hessian="finite_difference", fd_epsilon=1e-6,
                      learning_rate=schedule, virtual_step=virtual_step)
  fd, _ = jax.jit(lambda p, a: fd_strategy.arch_grad(problem, p, a, (), None))(params, arch)
  assert _rel_err(fd, g) < 1e-6


def test_finite_difference_is_darts_eq_8_for_the_paper_step(x64):
  """With the paper's step, the difference along u = -xi v is DARTS' own formula:
  grad_alpha L_val(w') - xi * (grad_alpha L_train(w + r v) - grad_alpha L_train(w - r v)) / 2r,
  r = eps / ||v||, written out here as ``architect._backward_step_unrolled`` computes it."""
  problem, params, arch, schedule = _tiny_problem(jnp.float64, grad_clip=None,
                                                  model=_CountingNet())  # one edge: fast
  eps = 1e-3  # large enough that the two formulas would part if r or the sign were wrong
  strategy = darts(order=2, hessian="finite_difference", fd_epsilon=eps, learning_rate=schedule)
  g, _ = jax.jit(lambda p, a: strategy.arch_grad(problem, p, a, (), None))(params, arch)

  trace = optax.tree_utils.tree_get(problem.weight_opt_state, "trace")
  xi = schedule(optax.tree_utils.tree_get(problem.weight_opt_state, "count"))
  mix = lambda a: jax.tree.map(lambda x: jax.nn.softmax(x, -1), a)
  train = lambda w, a: problem.loss_fn(w, mix(a), problem.batch_train)[0]
  val = lambda w, a: problem.loss_fn(w, mix(a), problem.batch_val)[0]
  gw = jax.grad(train)(params, arch)
  w2 = jax.tree.map(lambda w, d, m: w - xi * (0.9 * m + d + 3e-4 * w), params, gw, trace)
  ga, v = jax.grad(val, argnums=(1, 0))(w2, arch)
  r = eps / jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(v)))
  gp = jax.grad(train, argnums=1)(jax.tree.map(lambda w, d: w + r * d, params, v), arch)
  gn = jax.grad(train, argnums=1)(jax.tree.map(lambda w, d: w - r * d, params, v), arch)
  want = jax.tree.map(lambda a, p, n: a - xi * (p - n) / (2 * r), ga, gp, gn)
  assert _rel_err(g, want) < 1e-9


def test_virtual_step_by_hand():
  """w' on a 2-weight tree against numbers worked out by hand, for both choices, with
  NAS-Bench-201's weight optimizer (Nesterov SGD, lr 0.025, momentum 0.9, wd 5e-4, clip 5):
  the paper's step has dw'/dg = -xi = -0.025; the optimizer's (Nesterov) -xi (1 + mu) = -0.0475."""
  lr, mu, wd = 0.025, 0.9, 5e-4
  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(wd),
                   optax.sgd(lr, momentum=mu, nesterov=True))
  w = {"a": jnp.array([1.0, -2.0])}
  m = {"a": jnp.array([0.5, 0.25])}   # the momentum buffer after earlier steps
  g = {"a": jnp.array([0.1, 0.2])}    # norm 0.22 < 5: no clipping
  opt_state = tx.init(w)
  opt_state = optax.tree_utils.tree_set(opt_state, trace=m)
  problem = BilevelProblem(None, tx, opt_state, None, None)
  paper = make_virtual_step("paper", lr, momentum=mu, weight_decay=wd)
  ours = make_virtual_step("optimizer")
  # paper: w - lr * (mu m + g + wd w); by hand for w[0]: 1 - 0.025 * (0.45 + 0.1 + 0.0005)
  np.testing.assert_allclose(paper(problem, w, g)["a"],
                             [1 - 0.025 * 0.5505, -2 - 0.025 * (0.225 + 0.2 - 0.001)], rtol=1e-6)
  # Nesterov: b = mu m + g + wd w; w - lr * (g + wd w + mu b)
  b0, b1 = 0.45 + 0.1 + 0.0005, 0.225 + 0.2 - 0.001
  np.testing.assert_allclose(ours(problem, w, g)["a"],
                             [1 - 0.025 * (0.1005 + 0.9 * b0), -2 - 0.025 * (0.199 + 0.9 * b1)],
                             rtol=1e-6)
  for fn, slope in ((paper, -0.025), (ours, -0.0475)):
    jac = jax.jacobian(lambda x: fn(problem, w, {"a": x})["a"])(g["a"])
    np.testing.assert_allclose(jac, slope * np.eye(2), rtol=1e-6)


def test_darts_argument_errors():
  with pytest.raises(ValueError, match="learning_rate"):
    darts(order=2, hessian="finite_difference")
  with pytest.raises(ValueError, match="learning_rate"):
    darts(order=2)  # the paper's step needs xi
  darts(order=2, virtual_step="optimizer")  # the optimizer's step has its own
  with pytest.raises(ValueError, match="virtual_step"):
    darts(order=2, learning_rate=0.1, virtual_step="exact")
  with pytest.raises(ValueError, match="order"):
    darts(order=3)


def _tiny_search(model, strategy):
  """Optimizers, one batch of 4 random 8x8 images and the initial state for a tiny search."""
  weight_tx, _ = search.darts_weight_optimizer(total_steps=10)
  arch_tx = search.darts_arch_optimizer()
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  batch = {"image": images, "label": jnp.arange(4) % 3}
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(0),
                                   images)
  return weight_tx, arch_tx, images, batch, state


def test_step_compiles_once_and_updates_everything():
  chex.clear_trace_counter()
  strategy = darts(order=1)
  model = DartsSearchNet(num_classes=3, channels=3, layers=2, nodes=2, multiplier=2,
                         op_set=TINY_OPS)
  weight_tx, arch_tx, images, batch, state = _tiny_search(model, strategy)
  step = jax.jit(chex.assert_max_traces(
      search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False), n=1))
  start = jax.device_get(state)
  for _ in range(3):
    state, metrics = step(state, batch, batch)
  assert int(state.step) == 3
  for name in ("params", "arch", "batch_stats"):
    before, after = jax.tree.leaves(getattr(start, name)), jax.tree.leaves(getattr(state, name))
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), name
  assert {k: v.shape for k, v in metrics.items()} == {
      k: () for k in ("train_loss", "train_acc", "val_batch_loss", "val_batch_acc", "grad_norm",
                      "arch_grad_norm", "skipped")}
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  assert int(metrics["skipped"]) == 0

  # A NaN in the batch: the step is skipped, nothing but the step count changes.
  before = jax.device_get(state)
  bad = {"image": images.at[0, 0, 0, 0].set(jnp.nan), "label": batch["label"]}
  state, metrics = step(state, bad, batch)
  assert int(metrics["skipped"]) == 1 and int(state.step) == 4
  for a, b in zip(jax.tree.leaves(before[1:-1]), jax.tree.leaves(jax.device_get(state)[1:-1])):
    np.testing.assert_array_equal(a, b)
  state, metrics = step(state, batch, batch)
  assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["train_loss"]))


_TRACED = []  # one entry per run of _CountingNet's Python code


class _CountingNet(nn.Module):
  """A tiny supernet (one mixed edge, BN) that counts how often its Python code is traced."""

  @nn.compact
  def __call__(self, x, op_weights=None, train=True):
    _TRACED.append(1)
    shape = (1, len(TINY_OPS.ops))
    if self.is_initializing():
      self.variable("arch", "cell", arch_init, self.make_rng("params"), shape)
    if op_weights is None:
      op_weights = {"cell": jnp.full(shape, 1.0 / shape[1])}
    (y,) = SearchCell(TINY_OPS, 3, n_inputs=1, n_nodes=1, train=train)([x], op_weights["cell"])
    return nn.Dense(3)(jnp.mean(y, axis=(1, 2)))


@pytest.mark.parametrize("order,hessian", [(1, "exact"), (2, "exact"), (2, "finite_difference")])
def test_step_traces_the_model_once(order, hessian):
  """Every pass of a step (weights, alpha, the virtual step, the difference quotients) calls one
  jitted ``train_apply`` with equal shapes, so the model's Python code runs once per step
  trace and each pass differentiates the recorded jaxpr."""
  model = _CountingNet()
  strategy = darts(order=order, hessian=hessian, learning_rate=0.1)
  weight_tx, arch_tx, _, batch, state = _tiny_search(model, strategy)
  _TRACED.clear()
  step = search.make_search_step(model, strategy, weight_tx, arch_tx)
  state, metrics = step(state, batch, batch)
  assert len(_TRACED) == 1
  assert np.isfinite(float(metrics["val_batch_loss"])) and int(metrics["skipped"]) == 0


class _PoolProbe(nn.Module):
  """One mixed edge of parameter-free ops, read out at the centre pixel by a linear layer."""
  op_set: OpSet

  @nn.compact
  def __call__(self, x, op_weights=None, train=True):
    shape = (1, len(self.op_set.ops))
    if self.is_initializing():
      self.variable("arch", "cell", arch_init, self.make_rng("params"), shape)
    if op_weights is None:
      op_weights = {"cell": jnp.full(shape, 1.0 / shape[1])}
    (y,) = SearchCell(self.op_set, 1, n_inputs=1, n_nodes=1, train=train)([x],
                                                                          op_weights["cell"])
    c = x.shape[1] // 2
    return nn.Dense(2)(y[:, c, c, :])


@pytest.mark.parametrize("order,target", [(1, "max_pool_3x3"), (2, "max_pool_3x3"),
                                          (1, "skip_connect")])
def test_search_moves_alpha_to_the_only_op_that_solves_the_task(order, target):
  # Label: is the largest value of the centre 3x3 window above 1? Only max_pool_3x3 exposes that
  # to a linear read-out of the centre pixel; skip and avg see a weaker correlate. The control
  # task (is the centre pixel above 1?) only skip_connect solves.
  ops = OpSet("probe", ("skip_connect", "avg_pool_3x3", "max_pool_3x3"))
  model = _PoolProbe(ops)
  images = jax.random.normal(jax.random.key(0), (4096, 5, 5, 1))
  if target == "max_pool_3x3":
    labels = (images[:, 1:4, 1:4, 0].max(axis=(1, 2)) > 1.0).astype(jnp.int32)
  else:
    labels = (images[:, 2, 2, 0] > 1.0).astype(jnp.int32)
  weight_tx = optax.sgd(0.5, momentum=0.9)
  arch_tx = optax.adam(0.05, b1=0.5)
  strategy = darts(order=order, learning_rate=0.5, weight_decay=0.0)  # weight_tx's step
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(1),
                                   images[:2])
  step = search.make_search_step(model, strategy, weight_tx, arch_tx)
  b = 128
  for i in range(150):
    j = (2 * i * b) % 4096
    tr = {"image": images[j:j + b], "label": labels[j:j + b]}
    va = {"image": images[j + b:j + 2 * b], "label": labels[j + b:j + 2 * b]}
    state, metrics = step(state, tr, va)
  w = jax.nn.softmax(state.arch["cell"][0])
  assert int(jnp.argmax(w)) == ops.index(target), w
  assert float(w[ops.index(target)]) > 0.6, w
  assert float(metrics["val_batch_acc"]) > 0.85


@pytest.mark.parametrize("update_order", ["arch_first", "weights_first"])
def test_weights_train_on_the_train_batch_and_alpha_on_the_val_batch(tiny_search, update_order):
  """One step against the two updates written out: alpha's gradient from the validation batch,
  the weights' from the training batch, in the order asked for (DARTS: alpha first, at the old
  weights; NAS-Bench-201's DARTS-V1: the weights first, alpha at the new weights)."""
  _, strategy, weight_tx, _, bt, bv = tiny_search
  model = _CountingNet()  # one mixed edge with BatchNorm: compiles in seconds
  arch_tx = optax.sgd(1.0)  # linear in the gradient (Adam's first step is about its sign)
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(0),
                                   bt["image"])
  make = lambda order: jax.jit(search.make_search_step(  # not donating: `start` is reused
      model, strategy, weight_tx, arch_tx, update_order=order, jit=False))
  start = state
  new, _ = make(update_order)(start, bt, bv)
  mix = lambda a: jax.tree.map(lambda x: jax.nn.softmax(x, -1), a)

  def arch_step(params, batch_stats, arch):
    loss_fn = search.make_loss_fn(model, batch_stats)
    g = jax.grad(lambda a: loss_fn(params, mix(a), bv)[0])(arch)
    upd, _ = arch_tx.update(g, start.arch_opt_state, arch)
    return optax.apply_updates(arch, upd)

  def weight_step(arch):
    loss_fn = search.make_loss_fn(model, start.batch_stats)
    g, (stats, _) = jax.grad(loss_fn, has_aux=True)(start.params, mix(arch), bt)
    upd, _ = weight_tx.update(g, start.weight_opt_state, start.params)
    return optax.apply_updates(start.params, upd), stats

  @jax.jit
  def by_hand():
    if update_order == "arch_first":
      arch = arch_step(start.params, start.batch_stats, start.arch)
      params, _ = weight_step(arch)
    else:
      params, stats = weight_step(start.arch)
      arch = arch_step(params, stats, start.arch)
    return params, arch

  params, arch = by_hand()
  for got, want in ((new.params, params), (new.arch, arch)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  # The other order, or the batches swapped, end elsewhere: the check above can fail.
  other = "weights_first" if update_order == "arch_first" else "arch_first"
  for order, b1, b2 in ((other, bt, bv), (update_order, bv, bt)):
    alt, _ = make(order)(start, b1, b2)
    assert not all(np.allclose(a, b, rtol=2e-5, atol=1e-6) for a, b in
                   zip(jax.tree.leaves(alt.arch), jax.tree.leaves(arch))), order


def test_unknown_update_order():
  model, strategy, weight_tx, arch_tx = _CountingNet(), darts(), optax.sgd(0.1), optax.adam(0.1)
  with pytest.raises(ValueError, match="update_order"):
    search.make_search_step(model, strategy, weight_tx, arch_tx, update_order="both")


def test_eval_step_uses_running_statistics_and_skips_padding(tiny_search):
  """The end-of-epoch validation: BatchNorm in eval mode (an image's output does not depend on
  the rest of its batch, and moves with the stored running statistics), padding left out."""
  _, strategy, weight_tx, arch_tx, bt, _ = tiny_search
  model = _CountingNet()
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(0),
                                   bt["image"])
  # Running statistics away from their initial (0, 1), as after some training.
  stats = jax.tree.map(lambda x: x + 0.5, state.batch_stats)
  state = state._replace(batch_stats=stats)
  eval_step = search.make_eval_step(model, strategy)
  whole = jax.device_get(eval_step(state, bt))
  singles = [jax.device_get(eval_step(state, {"image": bt["image"][i:i + 1],
                                              "label": bt["label"][i:i + 1]}))
             for i in range(4)]
  np.testing.assert_allclose(whole["loss_sum"], sum(s["loss_sum"] for s in singles), rtol=1e-5)
  assert int(whole["n"]) == 4 and int(whole["correct"]) == sum(int(s["correct"]) for s in singles)
  padded = {"image": jnp.concatenate([bt["image"][:3], jnp.zeros_like(bt["image"][:2])]),
            "label": jnp.concatenate([bt["label"][:3], jnp.array([-1, -1])])}
  part = jax.device_get(eval_step(state, padded))
  assert int(part["n"]) == 3
  np.testing.assert_allclose(part["loss_sum"], sum(s["loss_sum"] for s in singles[:3]),
                             rtol=1e-5)
  other = jax.device_get(eval_step(state._replace(batch_stats=jax.tree.map(
      lambda x: x * 2.0, stats)), bt))
  assert abs(float(other["loss_sum"]) - float(whole["loss_sum"])) > 1e-4
