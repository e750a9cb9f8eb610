"""DARTS: softmax relaxation with first- or second-order architecture gradients.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.

The mixed op weights are ``softmax(alpha)`` over each edge's ops (eq. 2). Alpha minimises the
validation loss at the weights one training step would reach (eq. 5-6)::

    grad_alpha L_val(w', alpha),   w' = w + U(grad_w L_train(w, alpha); opt_state)

where ``U`` is the weight optimizer's update (for SGD with momentum ``mu`` and weight decay
``lambda``: ``U(g) = -xi * (mu * m + g + lambda * w)``).

* ``order=1``: ``w' = w`` (the first-order approximation).
* ``order=2, hessian="exact"``: the exact hypergradient of eq. 6 for the real optimizer step,
  momentum, weight decay and gradient clipping included, by autodiff. With
  ``g(alpha) = grad_w L_train(w, alpha)``, ``w' = w + U(g)`` and ``v = grad_w' L_val``::

      grad_alpha L_val(w', alpha) + (dg/dalpha)^T u,   u = (dU/dg)^T v,

  where ``u`` is a vector-Jacobian product of the update alone (cheap) and the mixed second
  derivative ``(dg/dalpha)^T u = d/dt grad_alpha L_train(w + t u, alpha)`` is taken forward-over-
  reverse (a ``jvp`` of the alpha gradient), not by differentiating the backward pass in reverse
  (``jax.grad`` through ``w'``): the same numbers, measured on the CPU (C=8, 5 cells, batch 8)
  a 17 % shorter step, a third less tracing and a 22 % smaller buffer plan
  (``benchmarks/RESULTS.md``).
* ``order=2, hessian="finite_difference"``: DARTS' eq. 7-8, the Hessian-vector product
  ``grad^2_{alpha,w} L_train . v`` by a central difference with ``eps = 0.01 / ||v||``. Kept to
  compare against; its error is O(eps^2) plus the curvature the linearisation ignores.
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import optax

from dnas.strategies.base import BilevelProblem, Strategy


def softmax_mix(arch, state, key):
  del state, key
  return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), arch)


def _updated(problem: BilevelProblem, params, grads):
  """The weights one step of the weight optimizer reaches from ``params`` along ``grads``."""
  updates, _ = problem.weight_tx.update(grads, problem.weight_opt_state, params)
  return optax.apply_updates(params, updates)


def darts(order: int = 1, hessian: str = "exact", fd_epsilon: float = 0.01,
          learning_rate: Union[float, Callable[[jax.Array], jax.Array], None] = None) -> Strategy:
  """The DARTS strategy.

  Args:
    order: 1 (first order) or 2 (second order).
    hessian: for ``order=2``: ``"exact"`` (autodiff through the virtual step) or
      ``"finite_difference"`` (DARTS' eq. 8).
    fd_epsilon: DARTS' ``0.01``: the difference step is ``fd_epsilon / ||v||``.
    learning_rate: the weight learning rate ``xi`` of eq. 7, a float or a schedule of the weight
      optimizer's step count; needed only for ``hessian="finite_difference"``.

  Returns:
    A ``Strategy``.

  Example::

    strategy = darts(order=2)
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx)
  """
  if order not in (1, 2):
    raise ValueError(f"search.order must be 1 or 2, got {order!r}")
  if hessian not in ("exact", "finite_difference"):
    raise ValueError(f"hessian must be 'exact' or 'finite_difference', got {hessian!r}")
  if order == 2 and hessian == "finite_difference" and learning_rate is None:
    raise ValueError("hessian='finite_difference' needs the weight learning_rate (xi of eq. 7)")

  def init(arch):
    del arch
    return ()

  def val_loss_at(problem, params, arch, state, key):
    loss, (_, logits) = problem.loss_fn(params, softmax_mix(arch, state, key), problem.batch_val)
    return loss, logits

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    if order == 1:
      (loss, logits), g = jax.value_and_grad(
          lambda a: val_loss_at(problem, params, a, state, key), has_aux=True)(arch)
      return g, {"val_loss": loss, "val_logits": logits}

    def train_loss(w, a):
      return problem.loss_fn(w, softmax_mix(a, state, key), problem.batch_train)[0]

    def val_grads(w):
      """``((L_val, logits), (grad_alpha, grad_w))`` at weights ``w``."""
      return jax.value_and_grad(lambda a, w2: val_loss_at(problem, w2, a, state, key),
                                argnums=(0, 1), has_aux=True)(arch, w)

    g_train = jax.grad(train_loss)(params, arch)  # the virtual step's gradient (eq. 7)
    if hessian == "exact":
      w2, update_vjp = jax.vjp(lambda g: _updated(problem, params, g), g_train)
      (loss, logits), (g_alpha, v) = val_grads(w2)
      (u,) = update_vjp(v)
      _, mixed = jax.jvp(lambda w: jax.grad(train_loss, argnums=1)(w, arch), (params,), (u,))
      g = jax.tree.map(jnp.add, g_alpha, mixed)
      return g, {"val_loss": loss, "val_logits": logits}

    # Finite-difference Hessian-vector product (DARTS eq. 8).
    (loss, logits), (g_alpha, v) = val_grads(
        jax.lax.stop_gradient(_updated(problem, params, g_train)))
    r = fd_epsilon / optax.tree.norm(v)

    def train_alpha_grad(sign):
      w = jax.tree.map(lambda p, d: p + sign * r * d, params, v)
      return jax.grad(train_loss, argnums=1)(w, arch)

    hvp = jax.tree.map(lambda p, n: (p - n) / (2 * r), train_alpha_grad(1.0),
                       train_alpha_grad(-1.0))
    xi = learning_rate(_count(problem.weight_opt_state)) if callable(learning_rate) \
        else learning_rate
    g = jax.tree.map(lambda ga, h: ga - xi * h, g_alpha, hvp)
    return g, {"val_loss": loss, "val_logits": logits}

  return Strategy(init=init, mix=softmax_mix, arch_grad=arch_grad)


def _count(opt_state):
  """The step count of the weight optimizer's state (its first ``count`` field)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  if not found:
    raise ValueError("the weight optimizer's state has no step count to evaluate the learning "
                     "rate schedule at; pass a float learning_rate")
  return found[0][1]
