"""PC-DARTS: DARTS with edge normalisation, on a supernet of partial channel connections.

Xu, Xie, Zhang, Chen, Qi, Tian & Xiong, "PC-DARTS: Partial Channel Connections for
Memory-Efficient Architecture Search", ICLR 2020.

PC-DARTS has two parts:

* **Partial channel connections** (section 3.2) belong to the supernet: with
  ``model.partial_channels = P`` the ops on every edge see ``1/P`` of its input's channels, the
  rest bypass them, and a channel shuffle mixes the two (``dnas.spaces.cell``). They work with
  any strategy.
* **Edge normalisation** (section 3.3), this strategy: every node ``j`` weighs its incoming
  edges by a softmax over edge parameters beta, learnt beside alpha::

      x_j = sum_{i<j} softmax(beta_j)_i * sum_k softmax(alpha_{i,j})_k * op_k(x_i).

  The space creates beta when ``model.edge_norm=True`` (``dnas.spaces.common.cell_arch_init``:
  ``arch[cell] = {"alpha": [E, K], "beta": (b_0, b_1, ...)}``, ``b_j`` node ``j``'s edges).
  The edge weight factors into the op weights, which are then the product::

      w_{e,k} = softmax(alpha_e)_k * softmax(beta_{j(e)})_{i(e)},

  a dense ``[E, K]`` array per cell type, so the supernet needs nothing more: its partial
  channel bypass is scaled by ``sum_k w_{e,k}``, the edge weight, as the reference multiplies
  the whole edge (op part and bypass) by it (yuhuixu1993/PC-DARTS, ``model_search.py``,
  ``Cell.forward``: ``weights2[offset+j] * self._ops[offset+j](h, weights[offset+j])``).

The genotype is derived from the same product, as the reference's ``Network.genotype``
(``_parse``: ``W[j,:] = W[j,:] * W2[j]``): in the DARTS space a node keeps the two edges of
largest non-``none`` product (edge normalisation can change which), each with its strongest op
(the product does not change that); in NAS-Bench-201 every edge is kept, so beta changes the
search only.

Alpha's gradient is DARTS' (``dnas.strategies.darts``, first or second order) with respect to
alpha and beta together: the bilevel problem's loss is given the product weights.
``arch_warmup_epochs`` rests the architecture for the first epochs (the reference's DARTS-space
search: ``if epoch >= 15: architect.step(...)``, ``train_search.py`` l. 156).

Where dnas differs from the reference: see the config's docstring
(``experiments/nb201_pcdarts_cifar10.py``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy
from dnas.strategies.darts import darts, softmax_mix


def _check_arch(arch) -> None:
  for name, a in arch.items():
    if not (isinstance(a, Mapping) and set(a) == {"alpha", "beta"}):
      raise ValueError(f"search.strategy='pcdarts' learns edge weights beta beside alpha, but "
                       f"the supernet's architecture parameters {name!r} have none: set "
                       f"config.model.edge_norm=True")


def edge_weights(beta) -> jax.Array:
  """``[E]``: each node's incoming edges' softmax, ``concat_j softmax(b_j)``, in alpha's order."""
  return jnp.concatenate([jax.nn.softmax(b, axis=-1) for b in beta])


def _product(relaxed) -> Any:
  """``{cell: {"alpha": A, "beta": (s_0, ...)}} -> {cell: A * concat(s)[:, None]}``, the op
  weights of relaxed alpha ``A`` and edge weights ``s_j`` (already softmaxed)."""
  return {name: r["alpha"] * jnp.concatenate(r["beta"])[:, None].astype(r["alpha"].dtype)
          for name, r in relaxed.items()}


def pcdarts_mix(arch, state=None, key=None):
  """The op weights ``softmax(alpha_e)_k * softmax(beta_j)_i`` (module docstring), ``[E, K]``
  per cell type; their rows sum to the edge weights."""
  _check_arch(arch)
  return _product(softmax_mix(arch, state, key))


def pcdarts(order: int = 1, arch_warmup_steps: int = 0, **darts_kwargs) -> Strategy:
  """The PC-DARTS strategy: DARTS' gradient through the edge-normalised op weights.

  Args:
    order: DARTS' order (the reference: 1, as without ``--unrolled``).
    arch_warmup_steps: alpha and beta rest (no architecture step) while fewer steps than this
      have run (the reference's DARTS-space search: 15 epochs).
    **darts_kwargs: passed to ``dnas.strategies.darts`` (``hessian``, ``virtual_step``, the
      virtual step's ``learning_rate``, ``momentum``, ``weight_decay`` for ``order=2``).

  Returns:
    A ``Strategy`` whose ``init`` checks that the architecture holds beta
    (``model.edge_norm=True``).

  Example::

    model = NB201SearchNet(partial_channels=4, edge_norm=True)
    strategy = pcdarts(order=1)
    weights = strategy.mix(arch, (), None)   # {"cell": [6, 5]}: rows sum to the edge weights

  Reference: Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS ``model_search.py``.
  """
  if isinstance(arch_warmup_steps, bool) or not isinstance(arch_warmup_steps, int) or \
      arch_warmup_steps < 0:
    raise ValueError(f"arch_warmup_steps must be a non-negative int, got {arch_warmup_steps!r}")
  base = darts(order=order, **darts_kwargs)

  def init(arch):
    _check_arch(arch)
    return ()

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    # DARTS' softmax maps every leaf along its last axis: alpha per edge, and each node's beta
    # per node. The loss then takes their product, so DARTS' gradient (either order) is taken
    # with respect to alpha and beta together.
    loss_fn = problem.loss_fn
    wrapped = problem._replace(loss_fn=lambda p, relaxed, batch: loss_fn(p, _product(relaxed),
                                                                         batch))
    return base.arch_grad(wrapped, params, arch, state, key)

  arch_active = None
  if arch_warmup_steps:
    arch_active = lambda state, step: step >= arch_warmup_steps

  def metrics(arch, state):
    del state
    # The largest edge weight of the last node, whose edges compete most (NAS-Bench-201: 3).
    return {"edge_weight_max": jnp.max(jnp.stack(
        [jnp.max(jax.nn.softmax(a["beta"][-1])) for a in arch.values()]))}

  return Strategy(init=init, mix=pcdarts_mix, arch_grad=arch_grad, arch_active=arch_active,
                  metrics=metrics)


@registry.register("pcdarts", defaults={"order": 1, "hessian": "exact", "virtual_step": "paper",
                                         "fd_epsilon": 0.01, "arch_warmup_epochs": 0})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="pcdarts"``: ``search.pcdarts.{order, hessian, virtual_step, fd_epsilon,
  arch_warmup_epochs}``; the warm-up counts epochs of ``context.steps_per_epoch`` steps; the
  virtual step takes the weight optimizer's learning rate, momentum and weight decay."""
  warmup = options["arch_warmup_epochs"]
  if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f"arch_warmup_epochs must be a non-negative int, got {warmup!r}")
  return pcdarts(order=options["order"], arch_warmup_steps=warmup * context.steps_per_epoch,
                 hessian=options["hessian"], fd_epsilon=options["fd_epsilon"],
                 learning_rate=context.learning_rate, virtual_step=options["virtual_step"],
                 momentum=context.momentum, weight_decay=context.weight_decay)
