"""The bilevel search step: one jitted pure function over one state pytree.

``make_search_step(model, strategy, weight_tx, arch_tx)`` returns
``search_step(state, batch_train, batch_val) -> (state, metrics)`` which, as DARTS' Algorithm 1
(``update_order="arch_first"``),

1. updates alpha with ``arch_tx`` on the strategy's hypergradient (validation batch), then
2. updates the weights with ``weight_tx`` on the training loss at the new alpha;

or, as NAS-Bench-201's DARTS-V1 (``exps/algos/DARTS-V1.py``, ``search_func``;
``update_order="weights_first"``), the weights first and then alpha at the updated weights.

Everything that changes is in ``SearchState``; the step does no I/O and no host sync.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dnas import compiler
from dnas.rng import fast_init_key
from dnas.strategies.base import BilevelProblem, eval_weights, Strategy
from dnas.types import Arch, Batch, BatchStats, Params, PRNGKey


class SearchState(NamedTuple):
  step: jax.Array
  params: Params
  arch: Arch
  batch_stats: BatchStats
  weight_opt_state: optax.OptState
  arch_opt_state: optax.OptState
  strategy_state: Any
  key: PRNGKey


def darts_weight_optimizer(learning_rate: float = 0.025, min_learning_rate: float = 0.001,
                           total_steps: int = 1, momentum: float = 0.9,
                           weight_decay: float = 3e-4, grad_clip: float = 5.0):
  """DARTS' weight optimizer: SGD with momentum, L2 weight decay, cosine lr, global-norm clip.

  PyTorch's SGD adds ``weight_decay * w`` to the (clipped) gradient before momentum, which is
  ``add_decayed_weights`` placed before ``sgd`` here.

  Returns:
    ``(tx, schedule)``.
  """
  schedule = optax.cosine_decay_schedule(
      learning_rate, decay_steps=max(total_steps, 1), alpha=min_learning_rate / learning_rate)
  tx = optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity(),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(schedule, momentum=momentum))
  return tx, schedule


def darts_arch_optimizer(learning_rate: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
                         weight_decay: float = 1e-3):
  """DARTS' alpha optimizer: Adam with (L2, PyTorch-style) weight decay."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate, b1=b1, b2=b2))


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy, computed in at least float32 (float64 stays float64)."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_apply(model: nn.Module):
  """``apply(params, batch_stats, op_weights, images) -> (logits, new_batch_stats)``, jitted.

  BN runs in train mode. Being one ``jax.jit``-wrapped function, its trace is cached: the search
  step's weight and architecture passes call it with equal shapes, so the model's Python code
  (Flax modules, vmapped edges) is traced once per step instead of once per pass, and each pass
  only differentiates the recorded jaxpr. XLA inlines the call; the compiled step is unchanged.
  """

  @jax.jit
  def apply(params, batch_stats, op_weights, images):
    logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  op_weights, train=True, mutable=["batch_stats"])
    return logits, updated["batch_stats"]

  return apply


def make_loss_fn(model: nn.Module, batch_stats: BatchStats, apply=None):
  """``loss_fn(params, op_weights, batch) -> (loss, (new_batch_stats, logits))``, BN in train mode.

  ``apply``: a ``train_apply(model)`` to share between loss functions (one trace for all).
  """
  apply = apply if apply is not None else train_apply(model)

  def loss_fn(params, op_weights, batch):
    logits, new_stats = apply(params, batch_stats, op_weights, batch["image"])
    return cross_entropy(logits, batch["label"]), (new_stats, logits)

  return loss_fn


def init_search_state(model: nn.Module, strategy: Strategy, weight_tx, arch_tx, key: PRNGKey,
                      sample_images: jax.Array) -> SearchState:
  """Initialises weights, alpha (``"arch"`` collection), BN statistics and both optimizers."""
  init_key, state_key = jax.random.split(key)
  variables = model.init(fast_init_key(init_key), sample_images, train=True)
  params, arch = variables["params"], variables["arch"]
  batch_stats = variables.get("batch_stats", {})
  return SearchState(
      step=jnp.zeros([], jnp.int32), params=params, arch=arch, batch_stats=batch_stats,
      weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(arch),
      strategy_state=strategy.init(arch), key=state_key)


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


UPDATE_ORDERS = ("arch_first", "weights_first")


def make_search_step(model: nn.Module, strategy: Strategy, weight_tx, arch_tx, *,
                     update_order: str = "arch_first", total_steps: Optional[int] = None,
                     jit: bool = True,
                     cpu_preset: Optional[str] = None, ynn_fusions: bool = False
                     ) -> Callable[[SearchState, Batch, Batch], Any]:
  """Builds the bilevel search step.

  Args:
    model: a supernet (``DartsSearchNet``, ``NB201SearchNet`` or a user's) called as
      ``model.apply(variables, images, op_weights, train=True)``.
    strategy: e.g. ``dnas.strategies.darts(order=2)``.
    weight_tx: optax transformation for the weights (train split).
    arch_tx: optax transformation for alpha (validation split).
    update_order: ``"arch_first"`` (DARTS: alpha, then the weights at the new alpha) or
      ``"weights_first"`` (NAS-Bench-201's DARTS-V1: the weights, then alpha at the new weights).
    total_steps: the run's steps in all, passed to ``strategy.update_state`` (temperature
      schedules); needed by strategies that have one.
    jit: compile the step with the state donated (turn off only for debugging).
    cpu_preset: XLA's CPU optimisation preset (``dnas.compiler.options``; default
      ``fast_compile``).
    ynn_fusions: let XLA's CPU backend use YNNPACK fusions (``dnas.compiler``); off by default:
      its cached executable then loads 3x faster and the step ran no slower.
  Returns:
    ``search_step(state, batch_train, batch_val) -> (state, metrics)``; ``metrics`` holds scalar
    arrays (``train_loss``, ``train_acc``: the weight pass's training batch; ``val_batch_loss``,
    ``val_batch_acc``: the alpha pass's validation batch, BatchNorm in train mode, at ``w'`` for
    second order; ``grad_norm``, ``arch_grad_norm``, and ``skipped``: 1 when a non-finite loss
    or gradient left the state unchanged but for its step count), and the strategy's own
    ``metrics`` (e.g. ``tau``), and stays on device. With ``strategy.arch_active``, also
    ``arch_steps``: 1 when alpha stepped; in a step where it rested, ``val_batch_*`` and
    ``arch_grad_norm`` are 0 (averages must count the ``arch_steps`` only). A strategy that does not learn alpha
    (``learns_arch=False``: SPOS) gets no architecture pass and no ``val_batch_*`` or
    ``arch_grad_norm``. The validation accuracy the papers report is ``make_eval_step``'s, over
    the whole split.

  Example::

    model = DartsSearchNet()
    strategy = darts(order=1)
    weight_tx, _ = darts_weight_optimizer(total_steps=n)
    state = init_search_state(model, strategy, weight_tx, darts_arch_optimizer(), key, images)
    step = make_search_step(model, strategy, weight_tx, darts_arch_optimizer())
    state, metrics = step(state, batch_train, batch_val)
  """

  if update_order not in UPDATE_ORDERS:
    raise ValueError(f"search.update_order must be one of {list(UPDATE_ORDERS)}, got "
                     f"{update_order!r}")
  if strategy.update_state is not None and total_steps is None:
    raise ValueError("this strategy updates its state on a schedule: pass total_steps")
  apply = train_apply(model)

  def arch_pass(state, params, weight_opt_state, batch_stats, batch_train, batch_val, key):
    """Alpha's step on the validation batch, at ``params``."""
    loss_fn = make_loss_fn(model, batch_stats, apply)
    problem = BilevelProblem(loss_fn, weight_tx, weight_opt_state, batch_train, batch_val)
    arch_grads, aux = strategy.arch_grad(problem, params, state.arch, state.strategy_state, key)
    if strategy.regularizer is not None:
      arch_grads = jax.tree.map(jnp.add, arch_grads, jax.grad(strategy.regularizer)(state.arch))
    arch_updates, arch_opt_state = arch_tx.update(arch_grads, state.arch_opt_state, state.arch)
    arch = optax.apply_updates(state.arch, arch_updates)
    return arch, arch_opt_state, arch_grads, aux["val_loss"], aux["val_logits"]

  def weight_pass(state, arch, batch_train, key):
    """The weights' step on the training batch, at ``arch``."""
    loss_fn = make_loss_fn(model, state.batch_stats, apply)
    op_weights = strategy.mix(arch, state.strategy_state, key)
    if strategy.perturb is not None:  # e.g. SDARTS-ADV: the weights train at an attack's
      op_weights = strategy.perturb(lambda w: loss_fn(state.params, w, batch_train)[0],
                                    op_weights, state.strategy_state, key)
    (train_loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, op_weights, batch_train)
    updates, weight_opt_state = weight_tx.update(grads, state.weight_opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return params, weight_opt_state, grads, train_loss, batch_stats, logits

  def maybe_arch_pass(state, *args):
    """``arch_pass``, or where ``strategy.arch_active`` says alpha rests, alpha and its
    optimizer's state unchanged (zero gradients, loss and logits; no pass computed)."""
    if strategy.arch_active is None:
      return arch_pass(state, *args), None
    active = jnp.asarray(strategy.arch_active(state.strategy_state, state.step), bool)

    def rest(state, *args):
      shapes = jax.eval_shape(arch_pass, state, *args)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[2:])
      return (state.arch, state.arch_opt_state) + tuple(zeros)

    return jax.lax.cond(active, arch_pass, rest, state, *args), active

  def search_step(state: SearchState, batch_train: Batch, batch_val: Batch):
    key = jax.random.fold_in(state.key, state.step)
    arch_key, weight_key = jax.random.split(key)
    if strategy.transition is not None:  # e.g. pruning between stages, before both passes
      arch, strategy_state = strategy.transition(state.arch, state.strategy_state, state.step)
      state = state._replace(arch=arch, strategy_state=strategy_state)
    active = None
    if not strategy.learns_arch:
      params, weight_opt_state, grads, train_loss, batch_stats, logits = weight_pass(
          state, state.arch, batch_train, weight_key)
      arch, arch_opt_state, arch_grads = state.arch, state.arch_opt_state, None
      val_loss = val_logits = None
    elif update_order == "arch_first":
      (arch, arch_opt_state, arch_grads, val_loss, val_logits), active = maybe_arch_pass(
          state, state.params, state.weight_opt_state, state.batch_stats, batch_train, batch_val,
          arch_key)
      params, weight_opt_state, grads, train_loss, batch_stats, logits = weight_pass(
          state, arch, batch_train, weight_key)
    else:
      params, weight_opt_state, grads, train_loss, batch_stats, logits = weight_pass(
          state, state.arch, batch_train, weight_key)
      (arch, arch_opt_state, arch_grads, val_loss, val_logits), active = maybe_arch_pass(
          state, params, weight_opt_state, batch_stats, batch_train, batch_val, arch_key)

    strategy_state = state.strategy_state
    if strategy.update_state is not None:
      strategy_state = strategy.update_state(strategy_state, state.step + 1, total_steps)
    # A non-finite loss or gradient skips the update (the step count still advances, so the
    # next step sees the next batch); the loop counts and reports skipped steps. A gradient is
    # non-finite iff its global norm is (or the norm overflows): one reduction the metrics need
    # anyway, instead of one kernel per leaf.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(train_loss) & jnp.isfinite(grad_norm)
    if strategy.learns_arch:
      arch_grad_norm = optax.tree.norm(arch_grads)
      arch_finite = jnp.isfinite(val_loss) & jnp.isfinite(arch_grad_norm)
      finite = finite & (arch_finite if active is None else (arch_finite | ~active))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = SearchState(
        state.step + 1, *keep((params, arch, batch_stats, weight_opt_state, arch_opt_state,
                               strategy_state),
                              (state.params, state.arch, state.batch_stats,
                               state.weight_opt_state, state.arch_opt_state,
                               state.strategy_state)),
        state.key)
    metrics = {
        "train_loss": train_loss,
        "train_acc": _accuracy(logits, batch_train["label"]),
        "grad_norm": grad_norm,
        "skipped": jnp.logical_not(finite).astype(jnp.int32),
    }
    if strategy.learns_arch:
      metrics.update(val_batch_loss=val_loss,
                     val_batch_acc=_accuracy(val_logits, batch_val["label"]),
                     arch_grad_norm=arch_grad_norm)
      if active is not None:  # the loop averages the val_batch_* over the steps that had them
        metrics["arch_steps"] = active.astype(jnp.int32)
    if strategy.metrics is not None:
      metrics.update(strategy.metrics(state.arch, state.strategy_state))
    return new_state, metrics

  if jit:
    return compiler.jit(search_step, cpu_preset=cpu_preset, ynn_fusions=ynn_fusions,
                        donate_argnums=0)
  return search_step


def make_eval_step(model: nn.Module, strategy: Strategy, *, cpu_preset: Optional[str] = None):
  """``eval_step(state, batch) -> {loss_sum, correct, n}``, BatchNorm in eval mode.

  The supernet at the strategy's evaluation op weights (``dnas.strategies.eval_weights``: for
  DARTS ``softmax(alpha)``), BatchNorm normalising with its running statistics
  (``state.batch_stats``), as NAS-Bench-201's ``valid_func`` (``network.eval()``) evaluates it.
  Examples labelled ``-1`` (``dnas.data.eval_batches(..., pad=True)``) are left out of the sums.
  """

  @functools.partial(compiler.jit, cpu_preset=cpu_preset)
  def eval_step(state: SearchState, batch: Batch):
    op_weights = eval_weights(strategy, state.arch, state.strategy_state)
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         batch["image"], op_weights, train=False)
    labels = batch["label"]
    real = labels >= 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             jnp.maximum(labels, 0))
    return {"loss_sum": jnp.sum(jnp.where(real, losses, 0.0)),
            "correct": jnp.sum(real & (jnp.argmax(logits, -1) == labels)),
            "n": jnp.sum(real)}

  return eval_step


__all__ = ["SearchState", "make_search_step", "init_search_state", "fast_init_key",
           "make_eval_step", "UPDATE_ORDERS", "darts_weight_optimizer", "darts_arch_optimizer",
           "make_loss_fn", "train_apply", "cross_entropy"]
