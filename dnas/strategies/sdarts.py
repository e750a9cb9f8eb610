"""SDARTS: DARTS whose weight step sees randomly (RS) or adversarially (ADV) perturbed op weights.

Chen & Hsieh, "Stabilizing Differentiable Architecture Search via Perturbation-based
Regularization", ICML 2020: its random-smoothing variant, SDARTS-RS (``sdarts_rs``), and its
adversarial variant, SDARTS-ADV (``sdarts_adv``, at the end of this docstring).

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

SDARTS-ADV trains the weights at the worst op weights near ``A = softmax(alpha)`` instead (the
paper's ``max_{||delta|| <= eps} L_train(w, A + delta)``), found by projected gradient ascent
with sign steps in the L-infinity ball, on the same representation as SDARTS-RS (the softmax's
output, each iterate projected onto the simplex)::

    v_0 = project(A + U(-eps, eps))          (random start; without it v_0 = A)
    v_{t+1} = project(A + clip(v_t + (2 eps / T) sign(grad_v L_train(w, v_t)) - A, -eps, eps))

for ``t < T`` (``T = 7``), ``eps`` on SDARTS-RS' schedule; the attack is kept only where it did
not lower the loss (``L_train(w, v_T) >= L_train(w, A)``, else ``A``). Reference: the same
``nasbench201/train_search.py`` with ``--perturb_alpha pgd_linf`` (README.MD's SDARTS-ADV flag;
``main`` picks ``Linf_PGD_alpha``, called with its defaults ``steps=7, random_start=True``);
``Linf_PGD_alpha`` and ``Linf_SGD`` (an SGD step on ``sign(grad)``, lr ``2 eps / steps``) as
ruocwang/darts-pt keeps them, ``attacker/perturb.py`` l. 12-42 and ``attacker/linf_sgd.py``
(SmoothDARTS' own ``attacker/`` folder is not at hand). The attack runs in the weight pass
(``Strategy.perturb``), after alpha's step, as ``train`` calls it. Where dnas differs: the
attack's loss is computed with BatchNorm in training mode (batch statistics, the running ones
left as they are), where the reference puts the model in eval mode for it; ``eps = 0`` returns
``A`` itself (the projection would only add rounding); the random start draws from dnas' keys.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

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


def pgd_attack(loss_at: Callable[[Any], jax.Array], weights, epsilon, steps: int = 7,
               key=None, random_start: bool = True):
  """SDARTS-ADV's attack: op weights within ``epsilon`` of ``weights`` that raise ``loss_at``.

  ``steps`` sign-gradient ascent steps of size ``2 epsilon / steps`` from ``weights`` (plus a
  uniform random start), each clipped to ``[-epsilon, epsilon]`` around ``weights`` and
  projected onto the simplex (``project_to_simplex``); the module docstring gives the update.

  Args:
    loss_at: op weights (the tree of ``weights``) -> the scalar training loss.
    weights: the unperturbed op weights ``A`` (rows on the simplex), ``{cell_type: [E, K]}``.
    epsilon: the L-infinity radius (a scalar, traced or not).
    steps: ``T``, the ascent steps (the reference's 7).
    key: draws the random start (leaf ``i`` from ``fold_in(key, i)``); needed if
      ``random_start``.
    random_start: start from ``project(A + U(-epsilon, epsilon))`` as the reference does.

  Returns:
    ``(adversarial, delta)``: ``project(A + delta)`` with ``|delta| <= epsilon`` entrywise, or
    ``A`` itself (``delta = 0``) where the attack lowered the loss or ``epsilon = 0``.

  Example::

    adv, delta = pgd_attack(lambda w: loss_fn(params, w, batch)[0], softmax_mix(arch, (), None),
                            0.3, steps=7, key=key)

  Reference: Chen & Hsieh, ICML 2020; ``Linf_PGD_alpha`` (ruocwang/darts-pt
  ``attacker/perturb.py``).
  """
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps!r}")
  if random_start and key is None:
    raise ValueError("pgd_attack: the random start needs a key")
  leaves, treedef = jax.tree.flatten(weights)
  eps = [jnp.asarray(epsilon, a.dtype) for a in leaves]
  step_size = [2 * e / max(steps, 1) for e in eps]
  unflat = lambda xs: jax.tree.unflatten(treedef, xs)

  def delta_to(v):
    return [jnp.clip(x - a, -e, e) for x, a, e in zip(v, leaves, eps)]

  def point(delta):
    return [project_to_simplex(a + d) for a, d in zip(leaves, delta)]

  if random_start:
    delta = [jax.random.uniform(jax.random.fold_in(key, i), a.shape, a.dtype, -e, e)
             for i, (a, e) in enumerate(zip(leaves, eps))]
  else:
    delta = [jnp.zeros_like(a) for a in leaves]
  grad = jax.grad(lambda xs: loss_at(unflat(xs)))

  def ascend(_, delta):
    v = point(delta)
    g = grad(v)
    return delta_to([x + s * jnp.sign(gi).astype(x.dtype) for x, gi, s in zip(v, g, step_size)])

  # A loop, not unrolled: the supernet's backward pass is compiled once, whatever the steps.
  delta = jax.lax.fori_loop(0, steps, ascend, delta)
  v = point(delta)
  keep = (loss_at(unflat(v)) >= loss_at(weights)) & (jnp.asarray(epsilon) > 0)
  adv = [jnp.where(keep, x, a) for x, a in zip(v, leaves)]
  delta = [jnp.where(keep, d, jnp.zeros_like(d)) for d in delta]
  return unflat(adv), unflat(delta)


def sdarts_adv(epsilon_max: float = 0.3, epsilon_min: float = 0.03, attack_steps: int = 7,
               random_start: bool = True, steps_per_epoch: Optional[int] = None, order: int = 1,
               **darts_kwargs):
  """The SDARTS-ADV strategy: the weight step at ``pgd_attack``'s op weights.

  Args:
    epsilon_max, epsilon_min: the attack radius' schedule, as ``sdarts_rs``' (0.3 and 0.03).
    attack_steps: the attack's ascent steps (the reference's 7).
    random_start: start the attack at a uniform random point of the ball (the reference: yes).
    steps_per_epoch: hold ``eps`` for an epoch of this many steps; ``None``: every step.
    order: DARTS' order for alpha's gradient (the reference: 1).
    **darts_kwargs: passed to ``dnas.strategies.darts``.

  Returns:
    A ``Strategy`` whose ``mix`` is DARTS' softmax and whose ``perturb`` is the attack (so
    alpha's gradient is exactly DARTS'); its state is an ``SDartsState``.

  Example::

    strategy = sdarts_adv(epsilon_max=0.3, steps_per_epoch=len(loader))
    step = make_search_step(model, strategy, weight_tx, arch_tx, total_steps=n)

  Reference: Chen & Hsieh, ICML 2020; xiangning-chen/SmoothDARTS ``nasbench201/train_search.py``
  with ``--perturb_alpha pgd_linf``.
  """
  if isinstance(attack_steps, bool) or not isinstance(attack_steps, int) or attack_steps < 1:
    raise ValueError(f"attack_steps must be an int >= 1, got {attack_steps!r}")
  rs = sdarts_rs(epsilon_max=epsilon_max, epsilon_min=epsilon_min,
                 steps_per_epoch=steps_per_epoch, order=order, **darts_kwargs)

  def perturb(loss_at, op_weights, state: SDartsState, key):
    if random_start and key is None:
      raise ValueError("SDARTS-ADV's random start needs a key")
    adv, _ = pgd_attack(loss_at, op_weights, state.epsilon, attack_steps, key, random_start)
    return jax.lax.stop_gradient(adv)

  return rs._replace(mix=softmax_mix, perturb=perturb)


@registry.register("sdarts_rs", defaults={"epsilon_max": 0.3, "epsilon_min": 0.03, "order": 1})
def _build(options, context: registry.StrategyContext):
  """``search.strategy="sdarts_rs"``: ``search.sdarts_rs.{epsilon_max, epsilon_min, order}``;
  ``eps`` holds for each epoch of ``context.steps_per_epoch`` steps."""
  return sdarts_rs(epsilon_max=options["epsilon_max"], epsilon_min=options["epsilon_min"],
                   steps_per_epoch=context.steps_per_epoch, order=options["order"],
                   learning_rate=context.learning_rate, momentum=context.momentum,
                   weight_decay=context.weight_decay)


@registry.register("sdarts_adv", defaults={"epsilon_max": 0.3, "epsilon_min": 0.03,
                                           "attack_steps": 7, "random_start": True, "order": 1})
def _build_adv(options, context: registry.StrategyContext):
  """``search.strategy="sdarts_adv"``: ``search.sdarts_adv.{epsilon_max, epsilon_min,
  attack_steps, random_start, order}``; ``eps`` holds for each epoch of
  ``context.steps_per_epoch`` steps."""
  return sdarts_adv(epsilon_max=options["epsilon_max"], epsilon_min=options["epsilon_min"],
                    attack_steps=options["attack_steps"], random_start=options["random_start"],
                    steps_per_epoch=context.steps_per_epoch, order=options["order"],
                    learning_rate=context.learning_rate, momentum=context.momentum,
                    weight_decay=context.weight_decay)
