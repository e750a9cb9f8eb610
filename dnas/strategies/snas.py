"""SNAS: relaxed Gumbel-softmax op weights under an annealed temperature.

Xie, Zheng, Liu & Lin, "SNAS: Stochastic Neural Architecture Search", ICLR 2019.

Every edge's op weights are one relaxed (Concrete) sample of the paper's one-hot ``Z``, drawn
afresh in each pass::

    Z = softmax((alpha + G) / tau),   G_k = -log(-log U_k),   U_k ~ Uniform(0, 1),

``alpha`` the edge's logits and ``tau`` the temperature. The paper writes ``log alpha + G`` with
``alpha`` unnormalised class probabilities; the official code (SNAS-Series/SNAS-Series,
``SNAS/model_search.py``, ``Network._get_categ_mask``) keeps the logits themselves as the
parameter (``log_alpha``), as dnas does. Normalising them first (``log_softmax(alpha)``) shifts an
edge's logits by one constant and leaves ``Z`` unchanged. Alpha's gradient is the pathwise
gradient through the sample (the paper's search gradient), first order.

The temperature falls linearly, once per epoch (both references set it per epoch)::

    tau_e = tau_max - (tau_max - tau_min) * e / E,   e = 0 .. E-1, E the search's epochs,

as DrNAS' NAS-Bench-201 code anneals its SNAS baseline (xiangning-chen/DrNAS,
``201-space/train_search.py``, ``main``: ``tau_step = (tau_min - tau_max) / epochs``, 10 -> 1),
kept at ``tau_min`` past the last epoch. The factory's defaults are the SNAS authors': 1 -> 0.03
(``SNAS/train_search.py`` and its README's command, ``--temp 1 --temp_min 0.03
--temp_annealing``; ``SNAS/utils.py``, ``Temp_Scheduler.decay_whole_process``, the same line with
its ``total_epochs`` fixed at 150, and stepped before each epoch, so one epoch ahead of this
schedule).

Where dnas differs from the references:

* The update. SNAS trains alpha and the weights together on the training batch, one loss, one
  sample, one backward pass (``SNAS/train_search.py``, ``neural_architecture_search.train``).
  Here alpha steps on the validation batch, in dnas' bilevel step, as DrNAS' NAS-Bench-201 SNAS
  baseline does (``201-space/train_search.py``, ``train``: ``architect.step`` on a validation
  batch, first order, then the weights); each pass draws its own sample, as each forward pass of
  that code does. NAS-Bench-201 itself (D-X-Y/AutoDL-Projects, ``exps/algos``) has no SNAS.
* SNAS' resource constraint (the sampled child's parameter count, FLOPs and memory access
  cost, penalised by policy gradient, reparameterisation or a discrete estimate; the official
  code's ``--resource_efficient``) is left out: nothing here counts an op's cost.
* SNAS clips alpha's gradient norm at 10 (``train``: ``clip_grad_norm_(arch_parameters(),
  10.)``); DrNAS' baseline does not, nor does dnas (compose ``optax.clip_by_global_norm`` into
  the alpha optimizer for it).
* Derive weights: ``softmax(alpha)``, noise-free, as SNAS derives its genotype
  (``Network.genotype``) and DrNAS its (``201-space/search_model.py``, ``genotype``: softmax of
  alpha). Eval weights: ``softmax(alpha / tau)``, the noise-free relaxed sample at the current
  temperature (same argmax), where both references evaluate the supernet at a random sample.
* Initial alpha: the space's (``1e-3 * N(0, 1)``, as DrNAS'); SNAS draws ``N(1, 0.01)``, whose
  mean of 1 cancels in the softmax.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy


class SNASState(NamedTuple):
  """The temperature ``tau`` of the coming step, a float32 scalar."""
  tau: jax.Array


def _leaf_keys(arch, key):
  """One key per leaf of ``arch`` (leaf ``i`` in ``jax.tree`` order: ``fold_in(key, i)``)."""
  leaves, treedef = jax.tree.flatten(arch)
  return jax.tree.unflatten(treedef, [jax.random.fold_in(key, i) for i in range(len(leaves))])


def relaxed_sample(logits: jax.Array, tau, key) -> jax.Array:
  """``softmax((logits + G) / tau)`` along the last axis, ``G`` standard Gumbel noise from
  ``key``: the Concrete (Gumbel-softmax) sample SNAS relaxes ``Z`` to."""
  g = jax.random.gumbel(key, logits.shape, logits.dtype)
  return jax.nn.softmax((logits + g) / tau, axis=-1)


def temperature(step, total_steps, tau_max: float, tau_min: float,
                steps_per_epoch: Optional[int] = None) -> jax.Array:
  """The temperature after ``step`` of ``total_steps`` steps (module docstring's schedule).

  With ``steps_per_epoch`` it holds for an epoch, ``tau_max - (tau_max - tau_min) * e / E``,
  ``e = step // steps_per_epoch`` and ``E = total_steps / steps_per_epoch``; without, it falls
  every step, ``tau_max - (tau_max - tau_min) * step / total_steps``. Never below ``tau_min``.
  """
  step = jnp.asarray(step, jnp.float32)
  total = jnp.asarray(max(total_steps, 1), jnp.float32)
  if steps_per_epoch:
    step = jnp.floor(step / steps_per_epoch) * steps_per_epoch
  frac = jnp.minimum(step / total, 1.0)
  return jnp.asarray(tau_max - (tau_max - tau_min) * frac, jnp.float32)


def snas(tau_max: float = 1.0, tau_min: float = 0.03,
         steps_per_epoch: Optional[int] = None) -> Strategy:
  """The SNAS strategy: Gumbel-softmax op weights, first-order pathwise alpha gradient.

  Args:
    tau_max: the first epoch's temperature (SNAS: 1; DrNAS' NAS-Bench-201 baseline: 10).
    tau_min: the temperature the schedule ends at (SNAS: 0.03; DrNAS' baseline: 1).
    steps_per_epoch: hold the temperature for an epoch of this many steps, as the references
      do; ``None`` anneals it every step.

  Returns:
    A ``Strategy`` whose state is an ``SNASState``; its ``update_state`` needs the run's
    ``total_steps`` (``make_search_step(..., total_steps=n)``).

  Example::

    strategy = snas(tau_max=10.0, tau_min=1.0, steps_per_epoch=len(loader))
    step_fn = make_search_step(model, strategy, weight_tx, arch_tx, total_steps=n)
    weights = strategy.mix(arch, strategy.init(arch), key)   # {"cell": [6, 5]}, rows sum to 1

  Reference: Xie et al., ICLR 2019; SNAS-Series/SNAS-Series ``SNAS/model_search.py``.
  """
  if not tau_min > 0:
    raise ValueError(f"search.snas.tau_min must be positive, got {tau_min!r}")
  if not tau_max >= tau_min:
    raise ValueError(f"search.snas.tau_max must be at least tau_min ({tau_min!r}), got "
                     f"{tau_max!r}")
  if steps_per_epoch is not None and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch!r}")

  def init(arch):
    del arch
    return SNASState(tau=jnp.asarray(tau_max, jnp.float32))

  def mix(arch, state: SNASState, key):
    if key is None:
      raise ValueError("SNAS draws its op weights at random: mix needs a key (its key-free "
                       "weights are derive_weights)")
    return jax.tree.map(lambda a, k: relaxed_sample(a, state.tau.astype(a.dtype), k), arch,
                        _leaf_keys(arch, key))

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    def val_loss(a):
      loss, (_, logits) = problem.loss_fn(params, mix(a, state, key), problem.batch_val)
      return loss, logits

    (loss, logits), g = jax.value_and_grad(val_loss, has_aux=True)(arch)
    return g, {"val_loss": loss, "val_logits": logits}

  def update_state(state, step, total_steps):
    del state
    return SNASState(tau=temperature(step, total_steps, tau_max, tau_min, steps_per_epoch))

  def derive_weights(arch, state):
    del state
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), arch)

  def eval_weights(arch, state: SNASState):
    return jax.tree.map(lambda a: jax.nn.softmax(a / state.tau.astype(a.dtype), axis=-1), arch)

  def metrics(arch, state: SNASState):
    del arch
    return {"tau": state.tau}

  return Strategy(init=init, mix=mix, arch_grad=arch_grad, update_state=update_state,
                  derive_weights=derive_weights, eval_weights=eval_weights, metrics=metrics)


@registry.register("snas", defaults={"tau_max": 1.0, "tau_min": 0.03})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="snas"``: ``search.snas.{tau_max, tau_min}``; the temperature holds for
  each epoch of ``context.steps_per_epoch`` steps."""
  return snas(tau_max=options["tau_max"], tau_min=options["tau_min"],
              steps_per_epoch=context.steps_per_epoch)
