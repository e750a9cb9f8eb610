"""Training a genotype's network from scratch: the pure, jitted train and eval steps.

The loop (epochs, data, logging, checkpoints) lives in ``train_lib``; this module holds what it
calls: ``init_train_state``, ``make_train_step``, ``make_eval_step`` and the optimizers of the
published recipes. The networks are those of ``dnas.eval_net``: called as
``model(images, train=..., drop_path_prob=...)`` and returning ``(logits, aux_logits | None)``.

Example::

    model = eval_net.CifarNetwork(published.get("DARTS_V2"))
    tx = darts_cifar_optimizer(total_steps=600 * steps_per_epoch)
    state = init_train_state(model, tx, jax.random.key(0), images[:2])
    train_step = make_train_step(model, tx)
    for epoch in range(600):
      drop_path_prob = 0.2 * epoch / 600  # DARTS' linear schedule, set by the caller
      for batch in batches:
        state, metrics = train_step(state, batch, drop_path_prob)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dnas import compiler
from dnas.rng import fast_init_key
from dnas.types import Batch, BatchStats, Params, PRNGKey

Metrics = Dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything that changes while retraining.

  Attributes:
    step: number of steps taken (int32 scalar).
    params: float32 master weights.
    batch_stats: BatchNorm running statistics (float32).
    opt_state: the optimizer's state.
    key: base PRNG key; step ``t`` draws its randomness from ``fold_in(key, t)``.
  """
  step: jax.Array
  params: Params
  batch_stats: BatchStats
  opt_state: optax.OptState
  key: PRNGKey


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, key: PRNGKey,
                     sample_images: jax.Array, cpu_preset: Optional[str] = None,
                     jit: bool = True) -> TrainState:
  """Initialises weights (float32), BatchNorm statistics and the optimizer state.

  Args:
    model: a network of ``dnas.eval_net``.
    tx: the weight optimizer.
    key: PRNG key for the weights and for the training randomness (drop-path).
    sample_images: ``[B, H, W, C]`` images of the training size (values unused beyond
      shapes; a batch of 1 or 2 is enough).
    cpu_preset: XLA's CPU optimisation preset for the initialisation (``dnas.compiler``).
    jit: compile the initialisation on its own; False traces it into the caller's trace
      (e.g. ``jax.eval_shape`` for the state's shapes: compiler options are only allowed on an
      outermost ``jit``).

  Returns:
    A ``TrainState`` at step 0.
  """
  init_key, state_key = jax.random.split(key)
  # train=True builds the parts that only run in training (the auxiliary head); Flax does not
  # update BatchNorm statistics during init.
  init = functools.partial(model.init, train=True)
  if jit:
    init = compiler.jit(init, cpu_preset=cpu_preset)
  variables = init(fast_init_key(init_key), jnp.zeros(sample_images.shape, jnp.float32))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), key=state_key)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with optional label smoothing.

  With smoothing ``eps`` the target is ``(1 - eps) * onehot + eps / K`` (Szegedy et al. 2016;
  DARTS' ImageNet ``CrossEntropyLabelSmooth``).
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits, targets)


def _cast(tree: Any, dtype) -> Any:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    aux_weight: float = 0.4, label_smoothing: float = 0.0,
                    compute_dtype: Any = jnp.float32, donate: bool = True,
                    cpu_preset: Optional[str] = None, ynn_fusions: bool = True,
                    jit: bool = True
                    ) -> Callable[[TrainState, Batch, Any], Tuple[TrainState, Metrics]]:
  """Returns the jitted retraining step.

  The objective is DARTS' ``CE(logits) + aux_weight * CE(aux_logits)`` (the auxiliary term only
  when the network returns auxiliary logits).

  Mixed precision: with ``compute_dtype=jnp.bfloat16`` the images and a bfloat16 copy of the
  weights run the forward and backward passes; the gradient reaches the float32 master weights
  through the cast, so ``params`` and the optimizer state stay float32, as do the loss (logits
  are upcast before the softmax) and the BatchNorm statistics (Flax reduces in float32).

  Args:
    model: a network of ``dnas.eval_net``.
    tx: the weight optimizer (e.g. ``darts_cifar_optimizer(...)``).
    aux_weight: weight of the auxiliary loss (0.4 in DARTS).
    label_smoothing: 0 for CIFAR, 0.1 in DARTS' ImageNet recipe.
    compute_dtype: dtype of the forward and backward computation.
    donate: donate the incoming state's buffers (the caller must not reuse it).
    cpu_preset: XLA's CPU optimisation preset (``dnas.compiler.options``; default
      ``fast_compile``).
    ynn_fusions: let XLA's CPU backend use YNNPACK fusions (``dnas.compiler``; its default: the
      retraining step's dense convolutions ran faster with them).
    jit: False returns the step uncompiled (for ``dnas.aot``; ``drop_path_prob`` must then be
      a float32 scalar array).

  Returns:
    ``train_step(state, batch, drop_path_prob) -> (state, metrics)``, compiled once: a changing
    ``drop_path_prob`` (float or scalar array) does not recompile. ``batch`` is
    ``{"image": [B, H, W, C], "label": [B]}``; ``metrics`` holds scalars ``loss`` (the
    objective), ``accuracy`` and ``grad_norm``.
  """

  def loss_fn(params, batch_stats, images, labels, drop_path_prob, key):
    variables = {"params": _cast(params, compute_dtype), "batch_stats": batch_stats}
    (logits, aux_logits), updates = model.apply(
        variables, images.astype(compute_dtype), train=True, drop_path_prob=drop_path_prob,
        rngs={"dropout": key}, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
    if aux_logits is not None and aux_weight:
      loss = loss + aux_weight * jnp.mean(cross_entropy(aux_logits, labels, label_smoothing))
    return loss, (logits, updates.get("batch_stats", batch_stats))

  def train_step(state: TrainState, batch: Batch, drop_path_prob) -> Tuple[TrainState, Metrics]:
    key = jax.random.fold_in(state.key, state.step)
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch["image"], batch["label"], drop_path_prob, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
    }
    return TrainState(state.step + 1, params, batch_stats, opt_state, state.key), metrics

  if not jit:
    return train_step
  jitted = compiler.jit(train_step, cpu_preset=cpu_preset, ynn_fusions=ynn_fusions,
                        donate_argnums=(0,) if donate else ())

  def train_step_fn(state: TrainState, batch: Batch, drop_path_prob) -> Tuple[TrainState, Metrics]:
    # A Python float and a float32 array trace differently (weak vs strong type); fixing the
    # type here keeps the step compiled once whatever the caller's schedule returns.
    return jitted(state, batch, jnp.asarray(drop_path_prob, jnp.float32))

  # Ahead-of-time compilation, as on a jitted function (benchmarks time compile and step apart).
  train_step_fn.lower = lambda state, batch, drop_path_prob: jitted.lower(
      state, batch, jnp.asarray(drop_path_prob, jnp.float32))
  return train_step_fn


def make_eval_step(model: nn.Module, *, compute_dtype: Any = jnp.float32,
                   cpu_preset: Optional[str] = None) -> Callable[[TrainState, Batch], Metrics]:
  """Returns the jitted evaluation step (BatchNorm running statistics, no drop-path).

  Returns:
    ``eval_step(state, batch) -> {"loss": sum of cross-entropies, "correct": count, "n": count}``
    as sums, so that batches add up; an optional ``batch["mask"]`` ([B], 1 for real examples)
    leaves out padding in a last, partial batch.
  """

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    variables = {"params": _cast(state.params, compute_dtype), "batch_stats": state.batch_stats}
    logits, _ = model.apply(variables, batch["image"].astype(compute_dtype), train=False)
    labels = batch["label"]
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "correct": jnp.sum(correct * mask),
            "n": jnp.sum(mask)}

  return compiler.jit(eval_step, cpu_preset=cpu_preset)


def _sgd(schedule: optax.Schedule, *, momentum: float, weight_decay: float,
         grad_clip: float | None, nesterov: bool) -> optax.GradientTransformation:
  # PyTorch's SGD adds weight decay to the (clipped) gradient before the momentum buffer.
  parts = []
  if grad_clip is not None:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.sgd(schedule, momentum=momentum, nesterov=nesterov))
  return optax.chain(*parts)


def cosine_schedule(total_steps: int, learning_rate: float,
                    min_learning_rate: float = 0.0) -> optax.Schedule:
  """``lr_t = min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` (SGDR, Loshchilov & Hutter
  2017, without restarts), held at ``min_lr`` after ``T = total_steps``."""
  return optax.cosine_decay_schedule(learning_rate, total_steps,
                                     alpha=min_learning_rate / learning_rate)


def darts_imagenet_schedule(steps_per_epoch: int, learning_rate: float = 0.1,
                            decay_rate: float = 0.97) -> optax.Schedule:
  """``lr_t = lr * decay_rate ** floor(t / steps_per_epoch)``: DARTS' ImageNet ``StepLR``."""
  return optax.exponential_decay(learning_rate, transition_steps=steps_per_epoch,
                                 decay_rate=decay_rate, staircase=True)


def darts_cifar_optimizer(total_steps: int, *, learning_rate: float = 0.025,
                          min_learning_rate: float = 0.0, momentum: float = 0.9,
                          weight_decay: float = 3e-4, grad_clip: float | None = 5.0,
                          nesterov: bool = False) -> optax.GradientTransformation:
  """DARTS' CIFAR-10 retraining optimizer (Liu et al. 2019, appendix A.2).

  SGD with momentum 0.9, weight decay 3e-4 on every weight, gradient norm clipped at 5, the
  learning rate annealed from 0.025 to 0 by a cosine over ``total_steps`` (600 epochs, batch 96
  in the paper; the reference code steps the cosine per epoch, here per step).

  Args:
    total_steps: length of the run in steps.
    learning_rate: initial learning rate.
    min_learning_rate: learning rate at the end.
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    grad_clip: global-norm clip, or None for none.
    nesterov: Nesterov momentum.
  """
  schedule = cosine_schedule(total_steps, learning_rate, min_learning_rate)
  return _sgd(schedule, momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip,
              nesterov=nesterov)


def nb201_optimizer(total_steps: int, *, learning_rate: float = 0.1,
                    min_learning_rate: float = 0.0, momentum: float = 0.9,
                    weight_decay: float = 5e-4, grad_clip: float | None = None,
                    nesterov: bool = True) -> optax.GradientTransformation:
  """NAS-Bench-201's training optimizer (Dong & Yang 2020, section 3; 200 epochs, batch 256).

  Nesterov SGD with momentum 0.9, weight decay 5e-4, learning rate 0.1 annealed to 0 by a
  cosine over ``total_steps``; no gradient clipping. Arguments as ``darts_cifar_optimizer``.
  """
  schedule = cosine_schedule(total_steps, learning_rate, min_learning_rate)
  return _sgd(schedule, momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip,
              nesterov=nesterov)


def darts_imagenet_optimizer(steps_per_epoch: int, *, learning_rate: float = 0.1,
                             decay_rate: float = 0.97, momentum: float = 0.9,
                             weight_decay: float = 3e-5, grad_clip: float | None = 5.0,
                             nesterov: bool = False) -> optax.GradientTransformation:
  """DARTS' ImageNet (mobile setting) optimizer (Liu et al. 2019, section 3.3; 250 epochs).

  SGD with momentum 0.9, weight decay 3e-5, gradient norm clipped at 5, learning rate 0.1
  multiplied by 0.97 after every epoch. The recipe also uses label smoothing 0.1, which is an
  argument of ``make_train_step``.

  Args:
    steps_per_epoch: steps between two learning-rate decays.
    learning_rate: initial learning rate.
    decay_rate: factor applied once per epoch.
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient.
    grad_clip: global-norm clip, or None for none.
    nesterov: Nesterov momentum.
  """
  schedule = darts_imagenet_schedule(steps_per_epoch, learning_rate, decay_rate)
  return _sgd(schedule, momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip,
              nesterov=nesterov)
