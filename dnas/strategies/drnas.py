"""DrNAS: Dirichlet op weights with pathwise gradients and an anchor regulariser.

Chen, Wang, Cheng, Tang & Hsieh, "DrNAS: Dirichlet Neural Architecture Search", ICLR 2021.

Every edge's op weights are one sample of a Dirichlet distribution, drawn afresh in each pass,
whose concentration alpha parameterises (xiangning-chen/DrNAS, ``utils.py``,
``process_step_vector``, ``method == 'dirichlet'``)::

    w ~ Dir(beta),   beta = elu(alpha) + 1   (> 0, and 1 at alpha = 0).

The sample is ``w = softmax(log g)``, ``log g_k`` a log-Gamma(``beta_k``) draw
(``jax.random.loggamma``; ``jax.random.dirichlet`` draws the same way, from the same key).
Alpha's gradient is the pathwise (implicitly reparameterised) gradient through the Gamma
draws, ``d g / d beta = -(d F(g; beta) / d beta) / p(g; beta)`` with ``F`` the Gamma CDF
(Figurnov et al., 2018; PyTorch's ``Dirichlet.rsample`` in the reference), first order: the
validation loss at the sampled weights, as the reference's ``Architect._backward_step``
(``architect.py``; its default, without ``--unrolled``).

The regulariser keeps the concentration near the anchor ``beta = 1`` (``reg_type``):

* ``"l2"`` (the reference's default): ``reg_scale / 2 * ||alpha||^2``, whose gradient
  ``reg_scale * alpha`` is the reference's Adam ``weight_decay=reg_scale`` on alpha
  (``architect.py``, ``Architect.__init__``). With it, set the alpha optimizer's own weight
  decay (``search.arch_weight_decay``) to 0, or alpha is decayed twice.
* ``"kl"``: ``reg_scale * sum_edges KL(Dir(beta) || Dir(1))``, the KL divergence to the anchor
  Dirichlet (``201-space/search_model.py``, ``TinyNetwork._get_kl_reg``; the reference then
  sets Adam's weight decay to 0)::

      KL = lnG(b0) - sum_k lnG(b_k) - lnG(K) + sum_k (b_k - 1) (psi(b_k) - psi(b0)),

  ``b0 = sum_k b_k``, ``lnG`` the log-Gamma function, ``psi`` the digamma function.

Derive and eval weights: the Dirichlet mean ``beta / sum(beta)``. The reference derives its
genotype from ``softmax(alpha)`` (``201-space/search_model.py``, ``TinyNetwork.genotype``): the
same argmax, ``elu + 1`` being increasing. It evaluates the supernet at a random sample
(``201-space/train_search.py``, ``infer``), dnas at the mean.

Progressive learning (the reference's searches, ``201-space/train_search_progressive.py`` and
``DARTS-space/train_search.py``, ``main``) runs the search in stages (``stage_epochs``: NB201
``[50, 50]``, DARTS space ``[25, 25]``). Before each stage after the first, every edge is pruned
to its ``num_keep[i]`` strongest ops (NB201 ``[5, 3]``, DARTS ``[7, 4]``; ``prune``, as the
reference's ``utils.py`` ``prune`` with ``reset=False``: the kept ops keep their alpha, the
others' alpha become 0 and they leave the samples, which are renormalised over the kept ops,
``process_step_vector``'s masked branch, and the derive weights). Alpha rests in the first
``arch_warmup_epochs`` epochs of each stage (``train``: ``if epoch >= 10: architect.step``, the
epoch counted within the stage), its Adam state too; the weights train throughout, their
optimizer's state carried over the boundary and the cosine learning rate running on over all
the epochs, as the reference's ``configure_optimizer`` and ``configure_scheduler``
(``net2wider.py``) do. The pruning is the strategy's ``transition`` and the rest its
``arch_active``, both inside the compiled step, so a resumed run prunes where an uninterrupted
one does.

Left out of the progressive search: partial channels (``201-space/search_cells.py``,
``NAS201SearchCell_PartialChannel``: each mixed op sees ``1/k`` of the channels, the rest
bypass it, then a channel shuffle; ``k = 4`` then ``2``, ``6`` then ``4`` in the DARTS space)
and the widening of the ops' weights between the stages by copying randomly chosen channels
(``net2wider.py``). The stages here run every channel: ``model.partial_channels`` (PC-DARTS'
partial channels, ``dnas/strategies/pcdarts.py``) gives one fixed ``k`` for the whole search,
not a ``k`` that changes between stages with the weights widened; partial channels save memory
and time, and change what the ops learn.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy

REG_TYPES = ("l2", "kl")


class DrNASState(NamedTuple):
  """``mask``: per cell type, a bool ``[E, K]`` array, True for the ops still in the search
  (all True until ``prune``)."""
  mask: Any


def concentration(alpha: jax.Array) -> jax.Array:
  """``elu(alpha) + 1``: the Dirichlet concentration ``beta`` that alpha parameterises."""
  return jax.nn.elu(alpha) + 1.0


def dirichlet_kl_to_uniform(beta: jax.Array) -> jax.Array:
  """``KL(Dir(beta) || Dir(1, ..., 1))`` along the last axis (module docstring's formula)."""
  k = beta.shape[-1]
  b0 = jnp.sum(beta, axis=-1)
  return (gammaln(b0) - jnp.sum(gammaln(beta), axis=-1) - gammaln(jnp.asarray(k, beta.dtype))
          + jnp.sum((beta - 1.0) * (digamma(beta) - digamma(b0)[..., None]), axis=-1))


def _leaf_keys(arch, key):
  """One key per leaf of ``arch`` (leaf ``i`` in ``jax.tree`` order: ``fold_in(key, i)``)."""
  leaves, treedef = jax.tree.flatten(arch)
  return jax.tree.unflatten(treedef, [jax.random.fold_in(key, i) for i in range(len(leaves))])


def dirichlet_sample(alpha: jax.Array, mask: jax.Array, key) -> jax.Array:
  """One ``Dir(elu(alpha) + 1)`` sample per row, masked-out ops 0 and the rest renormalised.

  Without masked ops this is ``jax.random.dirichlet(key, elu(alpha) + 1)``; with them, the kept
  ops' weights are ``Dir(beta_kept)``-distributed (a Dirichlet's renormalised sub-vector is
  Dirichlet), as the reference's zero-and-renormalise gives.
  """
  log_g = jax.random.loggamma(key, concentration(alpha), dtype=alpha.dtype)
  return jax.nn.softmax(jnp.where(mask, log_g, -jnp.inf), axis=-1)


def dirichlet_mean(alpha: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of the masked sample: ``beta / sum(beta)`` over the kept ops, 0 elsewhere."""
  beta = jnp.where(mask, concentration(alpha), 0.0)
  return beta / jnp.sum(beta, axis=-1, keepdims=True)


def prune(arch, state: DrNASState, num_keep: int):
  """DrNAS' progressive pruning: each edge keeps its ``num_keep`` largest alpha among its kept ops.

  As the reference's ``prune(x, num_keep, mask, reset=False)`` (``utils.py``): the kept ops keep
  their alpha, the others' alpha become 0 and their ops leave the samples and derive weights for
  good. Pure, for the loop to call between the stages (module docstring).

  Args:
    arch: alpha, per cell type ``[E, K]``.
    state: the strategy's state (its ``mask``).
    num_keep: ops to keep per edge (an edge with fewer left keeps those).

  Returns:
    ``(arch, state)`` after pruning.
  """
  def one(a, m):
    k = a.shape[-1]
    if not 1 <= num_keep <= k:
      raise ValueError(f"num_keep must be in [1, {k}], got {num_keep!r}")
    # Ops pruned before rank below every kept one (the reference subtracts 1e6 from them).
    _, idx = jax.lax.top_k(jnp.where(m, a, -jnp.inf), num_keep)
    # "& m": an edge with fewer than num_keep ops left keeps those (the reference would take
    # pruned ones back).
    keep = jnp.any(idx[..., :, None] == jnp.arange(k), axis=-2) & m
    return jnp.where(keep, a, 0.0), keep

  pairs = jax.tree.map(one, arch, state.mask)
  new_arch = jax.tree.map(lambda p: p[0], pairs, is_leaf=lambda x: isinstance(x, tuple))
  mask = jax.tree.map(lambda p: p[1], pairs, is_leaf=lambda x: isinstance(x, tuple))
  return new_arch, DrNASState(mask=mask)


def drnas(reg_type: str = "l2", reg_scale: float = 1e-3, *,
          stage_steps: Sequence[int] = (), num_keep: Sequence[int] = (),
          arch_warmup_steps: int = 0) -> Strategy:
  """The DrNAS strategy: Dirichlet op weights, first-order pathwise alpha gradient.

  Args:
    reg_type: the anchor regulariser, ``"l2"`` (the reference's default; set the alpha
      optimizer's weight decay to 0 with it) or ``"kl"`` (module docstring).
    reg_scale: its weight (the reference's ``--reg_scale``, 1e-3).
    stage_steps: progressive learning (module docstring): the steps of each stage; empty for
      one stage.
    num_keep: ops kept per edge in each stage, one per stage, not growing: edges are pruned
      to ``num_keep[i]`` ops when stage ``i`` starts (the reference's first is every op).
    arch_warmup_steps: the steps at the start of each stage in which alpha rests (with one
      stage, at the start of the run).

  Returns:
    A ``Strategy`` whose state is a ``DrNASState``.

  Example::

    strategy = drnas(reg_type="l2", reg_scale=1e-3)
    arch_tx = optax.adam(3e-4, b1=0.5, b2=0.999)   # no weight decay: the regulariser is it
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx)
    weights = strategy.mix(arch, strategy.init(arch), key)   # {"cell": [6, 5]}, rows sum to 1

  Reference: Chen et al., ICLR 2021; xiangning-chen/DrNAS ``201-space/``.
  """
  if reg_type not in REG_TYPES:
    raise ValueError(f"search.drnas.reg_type must be one of {list(REG_TYPES)}, got {reg_type!r}")
  if not reg_scale >= 0:
    raise ValueError(f"search.drnas.reg_scale must be non-negative, got {reg_scale!r}")
  stage_steps, num_keep = tuple(stage_steps), tuple(num_keep)
  if len(num_keep) != len(stage_steps):
    raise ValueError(f"search.drnas.num_keep must give one count per stage "
                     f"({len(stage_steps)} stages), got {list(num_keep)}")
  if any(not isinstance(n, int) or n < 1 for n in stage_steps + num_keep):
    raise ValueError(f"search.drnas stages and op counts must be positive integers, got "
                     f"stages {list(stage_steps)}, num_keep {list(num_keep)}")
  if any(b > a for a, b in zip(num_keep, num_keep[1:])):
    raise ValueError(f"search.drnas.num_keep must not grow from stage to stage (pruned ops do "
                     f"not come back), got {list(num_keep)}")
  if not isinstance(arch_warmup_steps, int) or arch_warmup_steps < 0:
    raise ValueError(f"search.drnas.arch_warmup_epochs must be a non-negative integer, got "
                     f"{arch_warmup_steps!r}")
  # The step at which each stage starts (the first at 0).
  starts = tuple(int(x) for x in np.cumsum((0,) + stage_steps[:-1])) if stage_steps else ()

  def init(arch):
    return DrNASState(mask=jax.tree.map(lambda a: jnp.ones(a.shape, bool), arch))

  def mix(arch, state: DrNASState, key):
    if key is None:
      raise ValueError("DrNAS draws its op weights at random: mix needs a key (its key-free "
                       "weights are derive_weights)")
    return jax.tree.map(dirichlet_sample, arch, state.mask, _leaf_keys(arch, key))

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    def val_loss(a):
      loss, (_, logits) = problem.loss_fn(params, mix(a, state, key), problem.batch_val)
      return loss, logits

    (loss, logits), g = jax.value_and_grad(val_loss, has_aux=True)(arch)
    return g, {"val_loss": loss, "val_logits": logits}

  def anchor_kl(arch):
    return sum(jnp.sum(dirichlet_kl_to_uniform(concentration(a))) for a in jax.tree.leaves(arch))

  def regularizer(arch):
    if reg_type == "kl":
      return reg_scale * anchor_kl(arch)
    return 0.5 * reg_scale * sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(arch))

  def derive_weights(arch, state: DrNASState):
    return jax.tree.map(dirichlet_mean, arch, state.mask)

  def metrics(arch, state):
    del state
    return {"anchor_kl": anchor_kl(arch)}

  def transition(arch, state: DrNASState, step):
    # Stage i starts by pruning every edge to num_keep[i] ops (every op: nothing changes).
    for start, keep in zip(starts, num_keep):
      arch, state = jax.lax.cond(step == start, lambda a, s, k=keep: prune(a, s, k),
                                 lambda a, s: (a, s), arch, state)
    return arch, state

  def arch_active(state: DrNASState, step):
    del state
    begun = jnp.asarray(0, jnp.int32)  # the start of the stage `step` is in
    for start in starts[1:]:
      begun = jnp.where(step >= start, start, begun)
    return step - begun >= arch_warmup_steps

  return Strategy(init=init, mix=mix, arch_grad=arch_grad, regularizer=regularizer,
                  derive_weights=derive_weights, metrics=metrics,
                  transition=transition if starts else None,
                  arch_active=arch_active if arch_warmup_steps else None)


@registry.register("drnas", defaults={"reg_type": "l2", "reg_scale": 1e-3, "stage_epochs": (),
                                      "num_keep": (), "arch_warmup_epochs": 0})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="drnas"``: ``search.drnas.{reg_type, reg_scale}``, and for progressive
  learning ``stage_epochs`` (summing to ``search.epochs``), ``num_keep`` (one per stage) and
  ``arch_warmup_epochs``."""
  spe = context.steps_per_epoch
  stages = tuple(options["stage_epochs"])
  if stages and sum(stages) * spe != context.total_steps:
    raise ValueError(f"config.search.drnas.stage_epochs: the stages {list(stages)} must add up "
                     f"to search.epochs ({context.total_steps // max(spe, 1)})")
  return drnas(reg_type=options["reg_type"], reg_scale=options["reg_scale"],
               stage_steps=tuple(e * spe for e in stages), num_keep=options["num_keep"],
               arch_warmup_steps=options["arch_warmup_epochs"] * spe)
