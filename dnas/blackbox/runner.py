"""Runners: drive a strategy for a budget of evaluations and record the history.

- ``run``: a plain Python loop, for any evaluator (training a network, a proxy, a table).
- ``run_on_table``: the whole search in JAX, ``lax.scan`` over the budget and ``vmap`` over
  keys (independent runs), evaluating by a gather from a table column.

For one key both give the same history (the same jitted ``ask``/``tell``, the same scores).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dnas.blackbox.base import Strategy


class History(NamedTuple):
  """What a search evaluated, in order (a leading runs axis when from ``run_on_table``).

  Attributes:
    codes: ``[..., budget, num_dims]`` int32, the architectures asked.
    scores: ``[..., budget]`` float32, their scores (as the strategy was told them).
    best: ``[..., budget]`` float32, the best score so far.
  """
  codes: Any
  scores: Any
  best: Any


def _check_budget(budget: int) -> None:
  if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
    raise ValueError(f"budget must be a positive int (evaluations), got {budget!r}")


def run(strategy: Strategy, space: Any, evaluate: Callable[[np.ndarray], float], budget: int,
        key: jax.Array) -> History:
  """Searches ``space`` with ``strategy`` for ``budget`` evaluations, in a Python loop.

  Args:
    strategy: an ask/tell ``Strategy``.
    space: the ``Space`` searched (``space.decode(codes)`` gives the architecture).
    evaluate: ``codes ([num_dims] int32 numpy) -> score`` (higher is better); any Python.
    budget: the number of evaluations.
    key: a PRNG key.

  Returns:
    A ``History`` of numpy arrays.

  Raises:
    ValueError: ``evaluate`` returned NaN or something that is not a number (naming the codes).
  """
  _check_budget(budget)
  ask, tell = jax.jit(strategy.ask), jax.jit(strategy.tell)
  state = strategy.init(key, space)
  codes_out = np.empty((budget, len(space.cardinalities)), np.int32)
  scores_out = np.empty(budget, np.float32)
  for t in range(budget):
    state, codes = ask(state)
    c = np.asarray(codes)
    try:
      score = float(evaluate(c))
    except (TypeError, ValueError) as e:
      raise ValueError(f"evaluate({c.tolist()}) did not return a number: {e}") from None
    if math.isnan(score):
      raise ValueError(f"evaluate({c.tolist()}) returned NaN (step {t})")
    codes_out[t] = c
    scores_out[t] = score
    state = tell(state, codes, scores_out[t])
  return History(codes_out, scores_out, np.maximum.accumulate(scores_out))


def make_run_on_table(strategy: Strategy, space: Any, budget: int
                      ) -> Callable[[Any, jax.Array], History]:
  """A jitted ``(scores_array, keys) -> History`` running ``len(keys)`` searches at once.

  ``space`` must be bound to the table (``space.with_table(table)``); each evaluation is
  ``scores_array[space.table_index(codes)]``.
  """
  _check_budget(budget)

  def one(scores, key):
    def step(state, _):
      state, codes = strategy.ask(state)
      score = scores[space.table_index(codes)]
      return strategy.tell(state, codes, score), (codes, score)

    _, (codes, got) = jax.lax.scan(step, strategy.init(key, space), None, length=budget)
    return History(codes, got, jax.lax.cummax(got))

  return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def run_on_table(strategy: Strategy, space: Any, scores_array: Any, budget: int,
                 keys: jax.Array) -> History:
  """Runs ``len(keys)`` independent searches against a table column, entirely in JAX.

  Args:
    strategy: an ask/tell ``Strategy``.
    space: a ``Space`` bound to the table (``nb201_space(table)``).
    scores_array: ``[rows]`` scores, e.g. ``table.column("cifar10_valid")`` (cast to float32).
    budget: evaluations per run.
    keys: ``[runs]`` PRNG keys (``jax.random.split(key, runs)``).

  Returns:
    A ``History`` with a leading ``[runs]`` axis.
  """
  scores = jnp.asarray(scores_array, jnp.float32)
  if scores.ndim != 1:
    raise ValueError(f"scores_array must be one table column ([rows]), got shape {scores.shape}")
  return make_run_on_table(strategy, space, budget)(scores, keys)
