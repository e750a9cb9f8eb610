"""SDARTS-RS: DARTS whose weight step sees randomly perturbed op weights.

Chen & Hsieh, "Stabilizing Differentiable Architecture Search via Perturbation-based
Regularization", ICML 2020 (SDARTS; this module is its random-smoothing variant, SDARTS-RS).

The weights are trained at op weights perturbed by uniform noise, which smooths the validation
loss landscape in alpha (the paper's ``E_delta L_train(w, A + delta)``); alpha's own step is
DARTS', at the unperturbed ``softmax(alpha)``. As the official code does it, the noise is added to
the softmax's output, not to the logits, and the result is projected back onto each edge's
simplex::

    w = project(softmax(alpha) + delta),   delta ~ Uniform(-eps, eps)^{E x K},
    project(v) = clip(v, 0, 1) / sum(clip(v, 0, 1))   (an all-zero row: one-hot of argmax v).

``eps`` rises linearly, once per epoch, from 0.03::

    eps_e = 0.03 + (eps_max - 0.03) * e / E,   e = 0 .. E-1, E the search's epochs.

Reference code (xiangning-chen/SmoothDARTS): ``nasbench201/train_search.py``, ``train``
(``architect.step`` first, then ``model.softmax_arch_parameters()``, ``perturb_alpha``, the weight
step at the perturbed weights (``updateType='weight'``) and ``restore_arch_parameters``) and
``main`` (``epsilon_alpha = 0.03 + (args.epsilon_alpha - 0.03) * epoch / args.epochs``;
``--epsilon_alpha`` 0.3, l. 57); ``attacker/perturb.py``, ``Random_alpha`` (uniform noise, then
``model.clip()``); ``nasbench201/model.py``, ``Network.clip`` (clamp to [0, 1], an all-zero row
gets 1 at its argmax, divide by the row's sum).

``search.py`` uses ``mix`` in the weight pass only and ``arch_grad`` computes its own op weights
(DARTS' ``softmax_mix``), so the perturbation lives in ``mix`` alone and alpha's gradient is
exactly DARTS'. The derive and evaluation weights are the noise-free ``softmax(alpha)``.
SDARTS-ADV (a PGD attack on the op weights before each weight step) is not implemented.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.betadarts import linear_schedule
from dnas.strategies.darts import darts, softmax_mix


class SDartsState(NamedTuple):
  """The noise bound ``eps`` of the coming step, a float32 scalar."""
  epsilon: jax.Array


def project_to_simplex(v: jax.Array) -> jax.Array:
  """The reference's ``clip``: ``clip(v, 0, 1)`` divided by its row sum; a row clipped to all
  zeros becomes one-hot at ``argmax v``."""
  c = jnp.clip(v, 0.0, 1.0)
  s = jnp.sum(c, axis=-1, keepdims=True)
  onehot = jax.nn.one_hot(jnp.argmax(v, axis=-1), v.shape[-1], dtype=v.dtype)
  return jnp.where(s > 0, c / jnp.where(s > 0, s, 1.0), onehot)


def perturbed_weights(logits: jax.Array, epsilon, key) -> jax.Array:
  """``project(softmax(logits) + delta)``, ``delta ~ U(-epsilon, epsilon)`` drawn from ``key``."""
  delta = jax.random.uniform(key, logits.shape, logits.dtype, -epsilon, epsilon)
  return project_to_simplex(jax.nn.softmax(logits, axis=-1) + delta)


def sdarts_rs(epsilon_max: float = 0.3, epsilon_min: float = 0.03,
              steps_per_epoch: Optional[int] = None, order: int = 1, **darts_kwargs):
  """The SDARTS-RS strategy.

  Args:
    epsilon_max: the noise bound the schedule rises towards (the reference's 0.3).
    epsilon_min: the first epoch's bound (the reference's 0.03).
    steps_per_epoch: hold ``eps`` for an epoch of this many steps; ``None``: every step.
    order: DARTS' order for alpha's gradient (the reference: 1).
    **darts_kwargs: passed to ``dnas.strategies.darts`` (its virtual step for ``order=2``).

  Returns:
    A ``Strategy`` whose state is an ``SDartsState``; ``mix`` needs a key.

  Example::

    strategy = sdarts_rs(epsilon_max=0.3, steps_per_epoch=len(loader))
    weights = strategy.mix(arch, strategy.init(arch), key)   # rows on the simplex

  Reference: Chen & Hsieh, ICML 2020; xiangning-chen/SmoothDARTS ``nasbench201/train_search.py``.
  """
  if not 0 <= epsilon_min <= epsilon_max:
    raise ValueError(f"epsilon_max must be at least epsilon_min ({epsilon_min!r}) >= 0, got "
                     f"{epsilon_max!r}")
  if steps_per_epoch is not None and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch!r}")
  base = darts(order=order, **darts_kwargs)

  def init(arch):
    del arch
    return SDartsState(epsilon=jnp.asarray(epsilon_min, jnp.float32))

  def mix(arch, state: SDartsState, key):
    if key is None:
      raise ValueError("SDARTS-RS perturbs its op weights at random: mix needs a key (its "
                       "key-free weights are derive_weights)")
    leaves, treedef = jax.tree.flatten(arch)
    keys = [jax.random.fold_in(key, i) for i in range(len(leaves))]
    return jax.tree.unflatten(treedef, [
        perturbed_weights(a, state.epsilon.astype(a.dtype), k) for a, k in zip(leaves, keys)])

  def update_state(state, step, total_steps):
    del state
    return SDartsState(epsilon=linear_schedule(step, total_steps, epsilon_min, epsilon_max,
                                               steps_per_epoch))

  def derive_weights(arch, state):
    return softmax_mix(arch, state, None)

  def metrics(arch, state: SDartsState):
    del arch
    return {"epsilon": state.epsilon}

  return base._replace(init=init, mix=mix, update_state=update_state,
                       derive_weights=derive_weights, metrics=metrics)


@registry.register("sdarts_rs", defaults={"epsilon_max": 0.3, "epsilon_min": 0.03, "order": 1})
def _build(options, context: registry.StrategyContext):
  """``search.strategy="sdarts_rs"``: ``search.sdarts_rs.{epsilon_max, epsilon_min, order}``;
  ``eps`` holds for each epoch of ``context.steps_per_epoch`` steps."""
  return sdarts_rs(epsilon_max=options["epsilon_max"], epsilon_min=options["epsilon_min"],
                   steps_per_epoch=context.steps_per_epoch, order=options["order"],
                   learning_rate=context.learning_rate, momentum=context.momentum,
                   weight_decay=context.weight_decay)
