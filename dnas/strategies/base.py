"""The strategy interface: how alpha becomes op weights, and how alpha's gradient is taken.

A strategy is a NamedTuple of pure functions, in the manner of an optax ``GradientTransformation``:

* ``init(arch) -> state``: the strategy's own state (e.g. a temperature); ``()`` if none.
* ``mix(arch, state, key) -> op_weights``: the relaxation (softmax, Gumbel-softmax, ...).
* ``arch_grad(problem, params, arch, state, key) -> (grads, aux)``: alpha's gradient of the
  upper-level objective; ``aux`` holds ``val_loss`` and ``val_logits``.
* ``regularizer(arch) -> scalar`` (optional): added to the upper-level loss.
* ``update_state(state, step, total_steps) -> state`` (optional): the strategy's state after
  ``step`` of the run's ``total_steps`` steps (a temperature schedule); called in the step.
* ``derive_weights(arch, state) -> op_weights`` (optional): the deterministic op weights a
  genotype is derived and drawn from, needing no key; by default ``mix(arch, state, None)``
  (right for deterministic relaxations such as DARTS' softmax; a sampling strategy gives its
  expected or noise-free weights). ``derive_weights(strategy, arch, state)`` calls it.
* ``eval_weights(arch, state) -> op_weights`` (optional): the op weights the supernet is
  evaluated at on the validation split (eval mode); by default the derive weights.
  ``eval_weights(strategy, arch, state)`` calls it.
* ``metrics(arch, state) -> {name: scalar}`` (optional): strategy-specific figures (temperature,
  entropy) logged with the step's others.
* ``learns_arch`` (default True): False for strategies that train the weights alone (SPOS,
  RSPS), whose step then skips the architecture pass; their genotype comes from ``select``.
* ``select`` (optional): for a strategy that does not learn alpha, how the loop picks the
  genotype after training (a ``dnas.oneshot`` selection's settings).
* ``transition(arch, state, step) -> (arch, state)`` (optional): applied at the start of the
  step whose state holds ``step`` (steps done so far), before either pass: changes of alpha
  and the state on a schedule, such as DrNAS' pruning between its progressive stages.
* ``arch_active(state, step) -> bool`` (optional): whether alpha steps in that step; where it
  is False the step runs no architecture pass, and alpha and its optimizer's state stay as
  they are (DrNAS holds alpha still in the first epochs of each stage). By default always.
* ``perturb(loss_at, op_weights, state, key) -> op_weights`` (optional): the op weights the
  weight pass trains at, given ``mix``'s and ``loss_at(op_weights)``, the training loss at the
  current weights on the step's training batch (SDARTS-ADV's attack on the op weights).

Op weights are, per cell type, a dense ``[E, K]`` array or a ``dnas.types.SampledOps`` (one
op per edge, computed alone).

Strategies never own an optimizer: alpha is stepped by an ordinary optax transformation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import optax

from dnas.types import Arch, Batch, BatchStats, Params, PRNGKey


class BilevelProblem(NamedTuple):
  """What an ``arch_grad`` needs to know about the lower level, for one step.

  Attributes:
    loss_fn: ``loss_fn(params, op_weights, batch) -> (loss, (new_batch_stats, logits))`` with
      BatchNorm in training mode; closed over the current ``batch_stats``.
    weight_tx: the weight optimizer (the virtual step of second-order methods uses it).
    weight_opt_state: its current state (momentum buffers, step count).
    batch_train: lower-level (training) batch.
    batch_val: upper-level (validation) batch.
  """
  loss_fn: Callable[[Params, Any, Batch], Any]
  weight_tx: optax.GradientTransformation
  weight_opt_state: optax.OptState
  batch_train: Batch
  batch_val: Batch


class Strategy(NamedTuple):
  init: Callable[[Arch], Any]
  mix: Callable[[Arch, Any, PRNGKey], Any]
  arch_grad: Callable[[BilevelProblem, Params, Arch, Any, PRNGKey], Any]
  regularizer: Optional[Callable[[Arch], Any]] = None
  update_state: Optional[Callable[[Any, Any, Any], Any]] = None
  derive_weights: Optional[Callable[[Arch, Any], Any]] = None
  eval_weights: Optional[Callable[[Arch, Any], Any]] = None
  metrics: Optional[Callable[[Arch, Any], Any]] = None
  learns_arch: bool = True
  select: Any = None
  transition: Optional[Callable[[Arch, Any, Any], Any]] = None
  arch_active: Optional[Callable[[Any, Any], Any]] = None
  perturb: Optional[Callable[[Callable[[Any], Any], Any, Any, PRNGKey], Any]] = None


def derive_weights(strategy: Strategy, arch: Arch, state: Any) -> Any:
  """The op weights ``strategy`` derives genotypes from (its ``derive_weights``, else its
  ``mix`` without a key)."""
  if strategy.derive_weights is not None:
    return strategy.derive_weights(arch, state)
  return strategy.mix(arch, state, None)


def eval_weights(strategy: Strategy, arch: Arch, state: Any) -> Any:
  """The op weights the supernet is evaluated at (``strategy.eval_weights``, else the derive
  weights)."""
  if strategy.eval_weights is not None:
    return strategy.eval_weights(arch, state)
  return derive_weights(strategy, arch, state)


__all__ = ["BilevelProblem", "Strategy", "BatchStats", "derive_weights", "eval_weights"]
