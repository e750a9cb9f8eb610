"""beta-DARTS: DARTS with the Beta-Decay regulariser on alpha, its weight rising over the search.

Ye, Li, Li, Chen, Fan & Ouyang, "beta-DARTS: Beta-Decay Regularization for Differentiable
Architecture Search", CVPR 2022.

The op weights are DARTS' ``softmax(alpha)``. Alpha's upper-level loss gains the Beta-Decay term,
the mean over the edges of the log-sum-exp of each edge's logits::

    L_val(w, alpha) + lambda_e * L_beta(alpha),   L_beta(alpha) = mean_e logsumexp_k alpha_{e,k},

whose gradient is ``lambda_e * softmax(alpha_e) / |E|`` on edge ``e``: it pulls every logit down
in proportion to its softmax weight, keeping the softmax's values and variance from growing (the
paper's Beta-Decay). The edges are every row of every leaf of ``arch`` (NAS-Bench-201: one
``[6, 5]`` array, the reference's single ``_arch_parameters``; DARTS' two cell types count as one
list of edges, as a concatenation would).

The weight grows linearly, once per epoch, from 0::

    lambda_e = lambda_max * e / E,   e = 0 .. E-1, E the search's epochs.

Reference code (Sunshine-Ye/Beta-DARTS): ``optimizers/darts/architect.py``, ``mlc_loss``
(l. 55-59: ``torch.mean(torch.logsumexp(alpha, dim=-1))``) and ``_backward_step`` (l. 80-84:
``weights = 0 + 50*epoch/100``, added to the validation loss; first order unless ``--unrolled``).
Its denominator is the constant 100, the default number of epochs of its
``nasbench201/train_search.py``; dnas divides by the run's own epochs (the same for 100).

The regulariser enters alpha's gradient only: ``val_loss`` (and the logged ``val_batch_loss``)
stays the cross-entropy; ``metrics`` logs ``beta_lambda`` and ``beta_decay`` (``L_beta``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy
from dnas.strategies.darts import darts


class BetaDartsState(NamedTuple):
  """The Beta-Decay weight ``lambda`` of the coming step, a float32 scalar."""
  lam: jax.Array


def linear_schedule(step, total_steps, start: float, end: float,
                    steps_per_epoch: Optional[int] = None) -> jax.Array:
  """``start + (end - start) * e / E`` after ``step`` of ``total_steps`` steps, held at ``end``
  past the run.

  With ``steps_per_epoch``, ``e = step // steps_per_epoch`` and ``E = total_steps /
  steps_per_epoch`` (the value holds for an epoch, as the references set theirs); without, it
  moves every step (``e = step``, ``E = total_steps``).
  """
  step = jnp.asarray(step, jnp.float32)
  total = jnp.asarray(max(total_steps, 1), jnp.float32)
  if steps_per_epoch:
    step = jnp.floor(step / steps_per_epoch) * steps_per_epoch
  frac = jnp.minimum(step / total, 1.0)
  return jnp.asarray(start + (end - start) * frac, jnp.float32)


def beta_decay(arch) -> jax.Array:
  """``mean_e logsumexp_k alpha_{e,k}`` over every edge (row) of every leaf of ``arch``."""
  rows = [jax.nn.logsumexp(a, axis=-1).reshape(-1) for a in jax.tree.leaves(arch)]
  return jnp.mean(jnp.concatenate(rows))


def betadarts(lambda_max: float = 50.0, steps_per_epoch: Optional[int] = None, order: int = 1,
              **darts_kwargs) -> Strategy:
  """The beta-DARTS strategy: DARTS' softmax and gradient plus ``lambda_e * L_beta``.

  Args:
    lambda_max: the weight's end value (the reference's 50, reached after the last epoch).
    steps_per_epoch: hold ``lambda`` for an epoch of this many steps; ``None``: every step.
    order: DARTS' order (the reference: 1, as without ``--unrolled``).
    **darts_kwargs: passed to ``dnas.strategies.darts`` (its virtual step for ``order=2``).

  Returns:
    A ``Strategy`` whose state is a ``BetaDartsState``; its ``update_state`` needs the run's
    ``total_steps``.

  Example::

    strategy = betadarts(lambda_max=50.0, steps_per_epoch=len(loader))
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx, total_steps=n)

  Reference: Ye et al., CVPR 2022; Sunshine-Ye/Beta-DARTS ``optimizers/darts/architect.py``.
  """
  if not lambda_max >= 0:
    raise ValueError(f"lambda_max must be non-negative, got {lambda_max!r}")
  if steps_per_epoch is not None and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch!r}")
  base = darts(order=order, **darts_kwargs)

  def init(arch):
    del arch
    return BetaDartsState(lam=jnp.zeros([], jnp.float32))

  def arch_grad(problem: BilevelProblem, params, arch, state: BetaDartsState, key):
    g, aux = base.arch_grad(problem, params, arch, state, key)
    g_reg = jax.grad(beta_decay)(arch)
    return jax.tree.map(lambda a, r: a + state.lam.astype(a.dtype) * r, g, g_reg), aux

  def update_state(state, step, total_steps):
    del state
    return BetaDartsState(lam=linear_schedule(step, total_steps, 0.0, lambda_max,
                                              steps_per_epoch))

  def metrics(arch, state: BetaDartsState):
    return {"beta_lambda": state.lam, "beta_decay": beta_decay(arch)}

  return Strategy(init=init, mix=base.mix, arch_grad=arch_grad, update_state=update_state,
                  metrics=metrics)


@registry.register("betadarts", defaults={"lambda_max": 50.0, "order": 1})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="betadarts"``: ``search.betadarts.{lambda_max, order}``; ``lambda`` holds
  for each epoch of ``context.steps_per_epoch`` steps; second order takes DARTS' paper step with
  the weight optimizer's learning rate, momentum and weight decay."""
  return betadarts(lambda_max=options["lambda_max"], steps_per_epoch=context.steps_per_epoch,
                   order=options["order"], learning_rate=context.learning_rate,
                   momentum=context.momentum, weight_decay=context.weight_decay)
