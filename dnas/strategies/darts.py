"""DARTS: softmax relaxation with first- or second-order architecture gradients.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019.

The mixed op weights are ``softmax(alpha)`` over each edge's ops (eq. 2). Alpha minimises the
validation loss at the weights one *virtual* training step reaches (eq. 5-6)::

    grad_alpha L_val(w', alpha),   w' = w + U(g),   g = grad_w L_train(w, alpha).

``virtual_step`` chooses ``U``:

* ``"paper"`` (the default): DARTS' eq. 7 as both reference codes compute it (quark0/darts
  ``cnn/architect.py``, ``_compute_unrolled_model``; NAS-Bench-201's ``exps/algos/DARTS-V2.py``,
  ``backward_step_unrolled``): one plain SGD-momentum step, unclipped, without Nesterov::

      w' = w - xi * (mu * m + g + lambda * w),

  ``xi`` the weight learning rate of the coming step, ``mu`` the momentum, ``m`` the weight
  optimizer's momentum buffer (optax's ``trace``, PyTorch's ``momentum_buffer``) and ``lambda``
  the weight decay; ``dw'/dg = -xi``.
* ``"optimizer"``: one step of the real weight optimizer (``weight_tx``: gradient clipping and
  Nesterov momentum included), so ``w'`` is where the next weight step really goes. With
  NAS-Bench-201's Nesterov SGD this makes ``dw'/dg = -xi * (1 + mu)``, 1.9x the reference's.

* ``order=1``: ``w' = w`` (the first-order approximation).
* ``order=2, hessian="exact"``: the exact hypergradient of eq. 6 for the chosen step, by
  autodiff. With ``v = grad_w' L_val(w', alpha)``::

      grad_alpha L_val(w', alpha) + (dg/dalpha)^T u,   u = (dU/dg)^T v,

  where ``u`` is a vector-Jacobian product of the step alone (cheap; ``-xi * v`` for the paper's
  step) and the mixed second derivative ``(dg/dalpha)^T u = d/dt grad_alpha L_train(w + t u,
  alpha)`` is taken forward-over-reverse (a ``jvp`` of the alpha gradient), not by
  differentiating the backward pass in reverse: the same numbers, measured on the CPU (C=8,
  5 cells, batch 8) a 17 % shorter step, a third less tracing and a 22 % smaller buffer plan
  (``benchmarks/RESULTS.md``).
* ``order=2, hessian="finite_difference"``: DARTS' eq. 8, the same mixed derivative by a central
  difference along ``u``, ``(grad_alpha L_train(w + r u) - grad_alpha L_train(w - r u)) / 2r``
  with ``r = eps / ||u||``. For the paper's step (``u = -xi v``) this is DARTS'
  ``-xi * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2 eps'``, ``w+- = w +- eps' v``,
  ``eps' = 0.01 / ||v||``, exactly; for ``"optimizer"`` it agrees with the exact form too. Kept
  to compare against; its error is O(eps^2).
* ``order=2, hessian="implicit"``: iDARTS' implicit hypergradient (Zhang et al., "iDARTS:
  Differentiable Architecture Search with Stochastic Implicit Gradients", ICML 2021). If the
  weights solve the lower problem, ``grad_w L_train(w*, alpha) = 0``, the implicit function
  theorem gives::

      grad_alpha L_val - (d2 L_train / dalpha dw) H^{-1} v,   H = d2 L_train / dw2,
      v = grad_w L_val(w, alpha),

  at the current weights (no virtual step), with ``H^{-1}`` replaced by its truncated Neumann
  series ``xi * sum_{k=0..K} (I - xi H)^k`` (``K = neumann_steps``, ``xi`` the weight learning
  rate). The reference (github.com/miaozhang0525/iDARTS,
  ``NAS-Bench-1Shot1-codes/optimizers/idarts_v2/architect_hess.py``, ``_hessian_vector_product``)
  sums ``K = 2`` terms and takes both second derivatives as central differences; dnas takes
  the Hessian-vector products and the mixed derivative exactly (forward-over-reverse), and does
  not run the reference's extra training steps before the architecture step
  (``_compute_unrolled_model``: 5 weight steps on training batches), which would move the
  weights outside the step's weight pass.
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp
import optax

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy


def softmax_mix(arch, state, key):
  del state, key
  return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), arch)


VIRTUAL_STEPS = ("paper", "optimizer")


def _optimizer_step(problem: BilevelProblem, params, grads):
  """The weights one step of the real weight optimizer reaches from ``params`` along ``grads``."""
  updates, _ = problem.weight_tx.update(grads, problem.weight_opt_state, params)
  return optax.apply_updates(params, updates)


def _momentum_buffer(opt_state, params):
  """The weight optimizer's momentum buffer (optax's ``trace``), zeros if it keeps none."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "trace")
  if not found:
    return jax.tree.map(jnp.zeros_like, params)
  buf = found[0][1]
  if jax.tree.structure(buf) != jax.tree.structure(params):
    raise ValueError("the weight optimizer's momentum buffer ('trace') is not shaped like the "
                     "weights; use virtual_step='optimizer'")
  return buf


def paper_virtual_step(params, grads, momentum_buffer, learning_rate, momentum: float,
                       weight_decay: float):
  """DARTS' eq. 7 step: ``w - xi * (mu * m + g + lambda * w)``, unclipped, plain momentum."""
  return jax.tree.map(
      lambda w, g, m: w - learning_rate * (momentum * m + g + weight_decay * w),
      params, grads, momentum_buffer)


def make_virtual_step(virtual_step: str = "paper",
                      learning_rate: Union[float, Callable[[jax.Array], jax.Array], None] = None,
                      momentum: float = 0.9, weight_decay: float = 3e-4):
  """``step_fn(problem, params, grads) -> w'``: the virtual step of eq. 7 (module docstring).

  Args:
    virtual_step: ``"paper"`` or ``"optimizer"``.
    learning_rate: ``xi``, a float or a schedule of the weight optimizer's step count (for
      ``"paper"``; ``"optimizer"`` takes the optimizer's own).
    momentum, weight_decay: ``mu`` and ``lambda`` of the paper's step.

  Example::

    step_fn = make_virtual_step("paper", 0.025, momentum=0.9, weight_decay=3e-4)
    w2 = step_fn(problem, params, grad_w)   # w - 0.025 * (0.9 * m + grad_w + 3e-4 * w)
  """
  if virtual_step not in VIRTUAL_STEPS:
    raise ValueError(f"virtual_step must be one of {list(VIRTUAL_STEPS)}, got "
                     f"{virtual_step!r}")

  def step_fn(problem: BilevelProblem, params, grads):
    if virtual_step == "optimizer":
      return _optimizer_step(problem, params, grads)
    xi = _rate_now(learning_rate, problem)
    return paper_virtual_step(params, grads, _momentum_buffer(problem.weight_opt_state, params),
                              xi, momentum, weight_decay)

  return step_fn


HESSIANS = ("exact", "finite_difference", "implicit")


def neumann_inverse_hvp(hvp: Callable, v, learning_rate, steps: int):
  """``xi * sum_{k=0..K} (I - xi H)^k v``: the truncated Neumann series of ``H^{-1} v``.

  Converges to ``H^{-1} v`` as ``K`` grows when ``0 < xi * eig(H) < 2`` (``hvp(p) = H p``).
  """
  term, total = v, v
  for _ in range(steps):
    term = jax.tree.map(lambda t, h: t - learning_rate * h, term, hvp(term))
    total = jax.tree.map(jnp.add, total, term)
  return jax.tree.map(lambda t: learning_rate * t, total)


def darts(order: int = 1, hessian: str = "exact", fd_epsilon: float = 0.01,
          learning_rate: Union[float, Callable[[jax.Array], jax.Array], None] = None,
          virtual_step: str = "paper", momentum: float = 0.9,
          weight_decay: float = 3e-4, neumann_steps: int = 2) -> Strategy:
  """The DARTS strategy.

  Args:
    order: 1 (first order) or 2 (second order).
    hessian: for ``order=2``: ``"exact"`` (autodiff through the virtual step),
      ``"finite_difference"`` (DARTS' eq. 8) or ``"implicit"`` (iDARTS' implicit
      hypergradient with a Neumann series; module docstring).
    fd_epsilon: DARTS' ``0.01``: the difference step is ``fd_epsilon / ||u||``.
    learning_rate: the weight learning rate ``xi`` of eq. 7, a float or a schedule of the weight
      optimizer's step count (evaluated at its current count: the coming step's rate); needed
      for ``order=2`` with ``virtual_step="paper"``.
    virtual_step: ``"paper"`` (eq. 7 as DARTS' and NAS-Bench-201's code take it) or
      ``"optimizer"`` (one step of the real weight optimizer); see the module docstring.
    momentum: ``mu`` of the paper's step (DARTS: 0.9); give the weight optimizer's.
    weight_decay: ``lambda`` of the paper's step (DARTS: 3e-4); give the weight optimizer's.
    neumann_steps: for ``hessian="implicit"``: ``K``, the Neumann series' terms after the
      first (iDARTS: 2).

  Returns:
    A ``Strategy``.

  Example::

    weight_tx, schedule = darts_weight_optimizer(total_steps=n)
    strategy = darts(order=2, learning_rate=schedule, momentum=0.9, weight_decay=3e-4)
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx)
  """
  if order not in (1, 2):
    raise ValueError(f"order must be 1 or 2, got {order!r}")
  if hessian not in HESSIANS:
    raise ValueError(f"hessian must be one of {list(HESSIANS)}, got {hessian!r}")
  if isinstance(neumann_steps, bool) or not isinstance(neumann_steps, int) or neumann_steps < 0:
    raise ValueError(f"neumann_steps must be a non-negative int, got {neumann_steps!r}")
  if order == 2 and hessian == "implicit" and learning_rate is None:
    raise ValueError("hessian='implicit' needs the weight learning_rate (the Neumann series' "
                     "step)")
  if virtual_step not in VIRTUAL_STEPS:
    raise ValueError(f"virtual_step must be one of {list(VIRTUAL_STEPS)}, got "
                     f"{virtual_step!r}")
  if order == 2 and virtual_step == "paper" and learning_rate is None:
    raise ValueError("virtual_step='paper' needs the weight learning_rate (xi of eq. 7): pass "
                     "the weight optimizer's learning rate or schedule")

  def init(arch):
    del arch
    return ()

  def val_loss_at(problem, params, arch, state, key):
    loss, (_, logits) = problem.loss_fn(params, softmax_mix(arch, state, key), problem.batch_val)
    return loss, logits

  step_to = make_virtual_step(virtual_step, learning_rate, momentum, weight_decay)

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    if order == 1:
      (loss, logits), g = jax.value_and_grad(
          lambda a: val_loss_at(problem, params, a, state, key), has_aux=True)(arch)
      return g, {"val_loss": loss, "val_logits": logits}

    def train_loss(w, a):
      return problem.loss_fn(w, softmax_mix(a, state, key), problem.batch_train)[0]

    if hessian == "implicit":
      (loss, logits), (g_alpha, v) = jax.value_and_grad(
          lambda a, w: val_loss_at(problem, w, a, state, key), argnums=(0, 1),
          has_aux=True)(arch, params)
      xi = _rate_now(learning_rate, problem)
      grad_w = lambda w: jax.grad(train_loss)(w, arch)
      hvp = lambda p: jax.jvp(grad_w, (params,), (p,))[1]
      u = jax.tree.map(jnp.negative, neumann_inverse_hvp(hvp, v, xi, neumann_steps))
      _, mixed = jax.jvp(lambda w: jax.grad(train_loss, argnums=1)(w, arch), (params,), (u,))
      return jax.tree.map(jnp.add, g_alpha, mixed), {"val_loss": loss, "val_logits": logits}

    g_train = jax.grad(train_loss)(params, arch)  # the virtual step's gradient (eq. 7)
    w2, step_vjp = jax.vjp(lambda g: step_to(problem, params, g), g_train)
    (loss, logits), (g_alpha, v) = jax.value_and_grad(
        lambda a, w: val_loss_at(problem, w, a, state, key), argnums=(0, 1),
        has_aux=True)(arch, w2)
    (u,) = step_vjp(v)  # (dw'/dg)^T v: -xi * v for the paper's step
    if hessian == "exact":
      _, mixed = jax.jvp(lambda w: jax.grad(train_loss, argnums=1)(w, arch), (params,), (u,))
    else:  # DARTS' eq. 8: a central difference along u
      r = fd_epsilon / optax.tree.norm(u)

      def train_alpha_grad(sign):
        w = jax.tree.map(lambda p, d: p + sign * r * d, params, u)
        return jax.grad(train_loss, argnums=1)(w, arch)

      mixed = jax.tree.map(lambda p, n: (p - n) / (2 * r), train_alpha_grad(1.0),
                           train_alpha_grad(-1.0))
    g = jax.tree.map(jnp.add, g_alpha, mixed)
    return g, {"val_loss": loss, "val_logits": logits}

  return Strategy(init=init, mix=softmax_mix, arch_grad=arch_grad)


def _rate_now(learning_rate, problem: BilevelProblem):
  """The weight learning rate of the coming step: a float, or a schedule at the optimizer's
  step count."""
  return learning_rate(_count(problem.weight_opt_state)) if callable(learning_rate) \
      else learning_rate


def _count(opt_state):
  """The step count of the weight optimizer's state (its first ``count`` field)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  if not found:
    raise ValueError("the weight optimizer's state has no step count to evaluate the learning "
                     "rate schedule at; pass a float learning_rate")
  return found[0][1]


@registry.register("darts", defaults={"order": 1, "hessian": "exact", "virtual_step": "paper",
                                       "fd_epsilon": 0.01, "neumann_steps": 2})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="darts"``: ``search.darts.{order, hessian, virtual_step, fd_epsilon}``;
  the virtual step takes the weight optimizer's learning rate, momentum and weight decay."""
  return darts(order=options["order"], hessian=options["hessian"],
               fd_epsilon=options["fd_epsilon"], learning_rate=context.learning_rate,
               virtual_step=options["virtual_step"], momentum=context.momentum,
               weight_decay=context.weight_decay, neumann_steps=options["neumann_steps"])
