"""DARTS-: DARTS with an auxiliary skip connection whose weight decays to zero.

Chu, Wang, Zhang, Lu, Wei & Yan, "DARTS-: Robustly Stepping out of Performance Collapse Without
Indicators", ICLR 2021.

Every mixed edge gains an auxiliary identity path of weight ``beta``, outside the softmax::

    o(x) = sum_k softmax(alpha)_k op_k(x) + beta * x.

The identity path carries the residual gradient that otherwise lets ``skip_connect`` win alpha's
competition unfairly; ``beta`` falls linearly, once per epoch, to 0, so the supernet ends as
plain DARTS'::

    beta_e = beta_0 * (1 - e / E),   e = 0 .. E-1, E the search's epochs.

The candidate ``skip_connect`` is that identity on a stride-1 edge (every NAS-Bench-201 edge), so
the auxiliary path is ``beta`` added to the ``skip_connect`` column of the op weights: ``mix``
returns ``softmax(alpha) + beta * onehot(skip)``, with the skip's column looked up by name in the
op set. Both passes (weights and alpha) and the validation run the supernet with the path, as the
reference does; the genotype is derived from ``softmax(alpha)`` alone (``derive_weights``), which
the path must not bias. On a stride-2 edge (DARTS' reduction cells) ``skip_connect`` is a
factorized reduce and the path is ``beta`` times that op, sharing its weights, where the
reference gives the auxiliary path a factorized reduce of its own.

Reference code (Meituan-AutoML/DARTS-): ``src/search/model_search.py``, ``MixedOp.forward``
(``res += self.auxiliary_op(x) * beta_decay_scheduler.decay_rate``); ``src/utils.py``,
``DecayScheduler.step``, ``"linear"``: ``base_lr * (T_max - epoch) / (T_max - T_start)``, stepped
at the start of each epoch (``src/search/train_search.py``, ``train_epochs``), with
``--skip_beta 1 --decay linear`` (``scripts/run_darts_minus.sh``) and ``T_max`` = 50 = the epochs.
Alpha's gradient is first order (the script passes no ``--unrolled``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from dnas.ops import sets
from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy
from dnas.strategies.betadarts import linear_schedule


class DartsMinusState(NamedTuple):
  """The auxiliary skip's weight ``beta`` in the coming step, a float32 scalar."""
  beta: jax.Array


def skip_index(ops: Sequence[str], skip_op: str = "skip_connect") -> int:
  """The column of ``skip_op`` (the identity skip) in the op list ``ops``.

  Raises:
    ValueError: ``ops`` has no ``skip_op``: DARTS- needs an identity op to carry its path.
  """
  ops = tuple(ops)
  if skip_op not in ops:
    raise ValueError(f"DARTS- adds its auxiliary skip to the identity op {skip_op!r}, which the op "
                     f"set {list(ops)} lacks; use an op set with an identity skip")
  return ops.index(skip_op)


def dartsminus(skip: int, beta0: float = 1.0, steps_per_epoch: Optional[int] = None) -> Strategy:
  """The DARTS- strategy.

  Args:
    skip: the ``skip_connect`` column of alpha's last axis (``skip_index(op_set.ops)``).
    beta0: the auxiliary skip's first weight (the reference's ``--skip_beta 1``).
    steps_per_epoch: hold ``beta`` for an epoch of this many steps; ``None``: every step.

  Returns:
    A ``Strategy`` whose state is a ``DartsMinusState``; its ``update_state`` needs the run's
    ``total_steps``.

  Example::

    strategy = dartsminus(skip_index(sets.get("nb201").ops), beta0=1.0, steps_per_epoch=n_e)
    weights = strategy.mix(arch, strategy.init(arch), None)   # softmax(alpha) + [0, 1, 0, 0, 0]

  Reference: Chu et al., ICLR 2021; Meituan-AutoML/DARTS- ``src/search/model_search.py``.
  """
  if not beta0 >= 0:
    raise ValueError(f"beta0 must be non-negative, got {beta0!r}")
  if steps_per_epoch is not None and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch!r}")

  def init(arch):
    del arch
    return DartsMinusState(beta=jnp.asarray(beta0, jnp.float32))

  def with_skip(a, beta):
    if not 0 <= skip < a.shape[-1]:
      raise ValueError(f"the skip column {skip} is outside alpha's {a.shape[-1]} ops")
    w = jax.nn.softmax(a, axis=-1)
    return w.at[..., skip].add(beta.astype(w.dtype))

  def mix(arch, state: DartsMinusState, key):
    del key
    return jax.tree.map(lambda a: with_skip(a, state.beta), arch)

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    def val_loss(a):
      loss, (_, logits) = problem.loss_fn(params, mix(a, state, key), problem.batch_val)
      return loss, logits

    (loss, logits), g = jax.value_and_grad(val_loss, has_aux=True)(arch)
    return g, {"val_loss": loss, "val_logits": logits}

  def update_state(state, step, total_steps):
    del state
    return DartsMinusState(beta=linear_schedule(step, total_steps, beta0, 0.0, steps_per_epoch))

  def derive_weights(arch, state):
    del state
    return jax.tree.map(lambda a: jax.nn.softmax(a, axis=-1), arch)

  def eval_weights(arch, state):
    return mix(arch, state, None)

  def metrics(arch, state: DartsMinusState):
    del arch
    return {"skip_beta": state.beta}

  return Strategy(init=init, mix=mix, arch_grad=arch_grad, update_state=update_state,
                  derive_weights=derive_weights, eval_weights=eval_weights, metrics=metrics)


@registry.register("dartsminus", defaults={"beta0": 1.0, "op_set": "nb201", "ops": (),
                                           "skip_op": "skip_connect"})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="dartsminus"``: ``search.dartsminus.{beta0, op_set, ops, skip_op}``.

  ``ops`` (the op names, as ``model.ops``) or else the registered op set ``op_set`` gives the
  skip's column; a config points both at ``model.op_set``/``model.ops`` (``get_ref``) so they
  follow the model's. ``beta`` holds for each epoch of ``context.steps_per_epoch`` steps.
  """
  try:
    ops = tuple(options["ops"]) or sets.get(options["op_set"]).ops
  except sets.UnknownOpSetError:
    raise ValueError(f"op_set names no registered op set ({options['op_set']!r}); registered: "
                     f"{sets.names()}") from None
  return dartsminus(skip_index(ops, options["skip_op"]), beta0=options["beta0"],
                    steps_per_epoch=context.steps_per_epoch)
