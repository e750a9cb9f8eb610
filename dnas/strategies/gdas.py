"""GDAS: one op per edge, sampled by Gumbel-max, with straight-through gradients.

Dong & Yang, "Searching for A Robust Neural Architecture in Four GPU Hours", CVPR 2019.

In every forward pass each edge draws one op: with standard Gumbel noise ``G`` and temperature
``tau`` (the paper's eq. 5-7, as D-X-Y/AutoDL-Projects computes them in
``lib/models/cell_searchs/search_model_gdas.py``, ``TinyNetworkGDAS.forward``)::

    p = softmax((log_softmax(alpha) + G) / tau),   i = argmax(p),   h = one_hot(i),
    w = h - stop_gradient(p) + p                   (one-hot valued, d w / d alpha = d p / d alpha)

and the supernet computes op ``i`` alone, ``w_i * op_i(x) + sum_{k != i} w_k``
(``lib/models/cell_searchs/search_cells.py``, ``SearchCell.forward_gdas``; here a
``dnas.types.SampledOps``, which ``dnas.spaces.cell`` runs without the other ops). Alpha's
gradient is the validation loss's through ``w`` (first order: ``exps/algos/GDAS.py``,
``search_func``, one backward pass of the arch batch's loss into alpha).

The temperature falls linearly from ``tau_max`` to ``tau_min``, set at the start of each epoch
(``exps/algos/GDAS.py``, ``main``: ``search_model.set_tau(tau_max - (tau_max - tau_min) * epoch /
(total_epoch - 1))``)::

    tau_e = tau_max - (tau_max - tau_min) * e / (E - 1),   e = 0 .. E - 1,

so the last epoch runs at ``tau_min`` (SNAS' schedule, ``dnas.strategies.snas``, divides by
``E`` instead). The sampled index does not depend on ``tau`` (a positive scale leaves the argmax
alone): ``tau`` only scales the straight-through gradient, ``p * (c - <p, c>) / tau`` for an
upstream gradient ``c`` of ``w``.

Where dnas differs from the reference:

* The reference draws ``G = -log(E)``, ``E ~ Exponential(1)``, and draws again while ``G`` or
  ``p`` holds an inf or a NaN (``E`` can be 0 in float32). ``jax.random.gumbel`` draws from a
  uniform variate bounded away from 0 and 1, so ``G`` and ``p`` are always finite for finite
  alpha and no redraw is needed; a non-finite alpha is no sampling accident, and the search
  step skips the update it causes.
* Eval weights (the supernet on the validation split, BatchNorm in eval mode): the argmax path,
  ``SampledOps(argmax(alpha), one_hot)``, the cell the genotype would be. The reference has no
  separate evaluation; the "evaluate" accuracy it logs is its alpha pass's, at a Gumbel sample
  in training mode (dnas logs that one as ``val_batch_acc``). The argmax path needs no key, as
  ``eval_weights`` has none, and the same network is evaluated every epoch.
* Derive weights: ``softmax(alpha)``, whose argmax on every edge is the reference's genotype
  (``TinyNetworkGDAS.genotype``: the argmax of alpha per edge).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy
from dnas.types import SampledOps


class GDASState(NamedTuple):
  """The temperature ``tau`` of the coming step, a float32 scalar."""
  tau: jax.Array


def straight_through(alpha: jax.Array, gumbels: jax.Array, tau) -> SampledOps:
  """GDAS' hard sample of every row of ``alpha`` given its Gumbel noise (module docstring).

  Args:
    alpha: ``[..., K]`` logits (one row per edge).
    gumbels: standard Gumbel noise shaped like ``alpha``.
    tau: the temperature, a positive scalar.

  Returns:
    ``SampledOps(index, weights)``: ``index = argmax(p)`` (int32), ``weights = one_hot(index)
    - stop_gradient(p) + p``, one-hot valued, whose gradient is the softmax's, with
    ``p = softmax((log_softmax(alpha) + gumbels) / tau)``.
  """
  probs = jax.nn.softmax((jax.nn.log_softmax(alpha, axis=-1) + gumbels) / tau, axis=-1)
  index = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  hard = jax.nn.one_hot(index, alpha.shape[-1], dtype=probs.dtype)
  return SampledOps(index, hard - jax.lax.stop_gradient(probs) + probs)


def temperature(step, total_steps, tau_max: float, tau_min: float,
                steps_per_epoch: int = 1) -> jax.Array:
  """The temperature of step ``step`` of ``total_steps`` (module docstring's schedule).

  Epoch ``e = step // steps_per_epoch`` of ``E = ceil(total_steps / steps_per_epoch)`` runs at
  ``tau_max - (tau_max - tau_min) * e / (E - 1)``; steps past the last epoch at ``tau_min``, a
  one-epoch run at ``tau_max``. ``steps_per_epoch=1`` makes the schedule fall every step.
  """
  epochs = max(-(-int(total_steps) // int(steps_per_epoch)), 1)
  epoch = jnp.minimum(jnp.asarray(step, jnp.int32) // steps_per_epoch, epochs - 1)
  frac = epoch.astype(jnp.float32) / max(epochs - 1, 1)
  # The reference's line, weighted so that the ends are exactly tau_max and tau_min in float32.
  return jnp.asarray(tau_max * (1.0 - frac) + tau_min * frac, jnp.float32)


def _leaf_keys(arch, key):
  """One key per leaf of ``arch`` (leaf ``i`` in ``jax.tree`` order: ``fold_in(key, i)``)."""
  leaves, treedef = jax.tree.flatten(arch)
  return jax.tree.unflatten(treedef, [jax.random.fold_in(key, i) for i in range(len(leaves))])


def gdas(tau_max: float = 10.0, tau_min: float = 0.1, steps_per_epoch: int = 1) -> Strategy:
  """The GDAS strategy: Gumbel-max sampled paths, straight-through first-order alpha gradient.

  Args:
    tau_max: the first epoch's temperature (GDAS on NAS-Bench-201: 10).
    tau_min: the last epoch's temperature (0.1).
    steps_per_epoch: the temperature holds for an epoch of this many steps, as the reference
      sets it per epoch; 1 makes it fall every step.

  Returns:
    A ``Strategy`` whose ``mix`` gives a ``dnas.types.SampledOps`` per cell type and whose
    state is a ``GDASState``; its ``update_state`` needs the run's ``total_steps``
    (``make_search_step(..., total_steps=n)``).

  Example::

    strategy = gdas(tau_max=10.0, tau_min=0.1, steps_per_epoch=len(loader))
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx, total_steps=n,
                               update_order="weights_first")
    ops = strategy.mix(arch, strategy.init(arch), key)  # {"cell": SampledOps([6], [6, 5])}

  Reference: Dong & Yang, CVPR 2019; D-X-Y/AutoDL-Projects ``exps/algos/GDAS.py``.
  """
  if not tau_min > 0:
    raise ValueError(f"search.gdas.tau_min must be positive, got {tau_min!r}")
  if not tau_max >= tau_min:
    raise ValueError(f"search.gdas.tau_max must be at least tau_min ({tau_min!r}), got "
                     f"{tau_max!r}")
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch!r}")

  def init(arch):
    del arch
    return GDASState(tau=jnp.asarray(tau_max, jnp.float32))

  def mix(arch, state: GDASState, key):
    if key is None:
      raise ValueError("GDAS samples its op weights: mix needs a key (its key-free weights are "
                       "derive_weights and eval_weights)")

    def sample(a, k):
      return straight_through(a, jax.random.gumbel(k, a.shape, a.dtype),
                              state.tau.astype(a.dtype))

    # A SampledOps is a pytree itself: map over arch's leaves, one sample per cell type.
    leaves, treedef = jax.tree.flatten(arch)
    keys = jax.tree.leaves(_leaf_keys(arch, key))
    return jax.tree.unflatten(treedef, [sample(a, k) for a, k in zip(leaves, keys)])

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    def val_loss(a):
      loss, (_, logits) = problem.loss_fn(params, mix(a, state, key), problem.batch_val)
      return loss, logits

    (loss, logits), g = jax.value_and_grad(val_loss, has_aux=True)(arch)
    return g, {"val_loss": loss, "val_logits": logits}

  def update_state(state, step, total_steps):
    del state
    return GDASState(tau=temperature(step, total_steps, tau_max, tau_min, steps_per_epoch))

  def derive_weights(arch, state):
    del state
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), arch)

  def eval_weights(arch, state):
    del state

    def argmax_path(a):
      index = jnp.argmax(a, axis=-1).astype(jnp.int32)
      return SampledOps(index, jax.nn.one_hot(index, a.shape[-1], dtype=a.dtype))

    leaves, treedef = jax.tree.flatten(arch)
    return jax.tree.unflatten(treedef, [argmax_path(a) for a in leaves])

  def metrics(arch, state: GDASState):
    del arch
    return {"tau": state.tau}

  return Strategy(init=init, mix=mix, arch_grad=arch_grad, update_state=update_state,
                  derive_weights=derive_weights, eval_weights=eval_weights, metrics=metrics)


@registry.register("gdas", defaults={"tau_max": 10.0, "tau_min": 0.1})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="gdas"``: ``search.gdas.{tau_max, tau_min}``; the temperature holds for
  each epoch of ``context.steps_per_epoch`` steps."""
  return gdas(tau_max=options["tau_max"], tau_min=options["tau_min"],
              steps_per_epoch=context.steps_per_epoch)
