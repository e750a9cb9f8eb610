"""The ask/tell interface of discrete search strategies.

A strategy is a NamedTuple of three pure functions, optax-style::

    state = strategy.init(key, space)
    state, codes = strategy.ask(state)          # codes: [num_dims] int32
    state = strategy.tell(state, codes, score)  # higher score is better

States are pytrees of fixed-shape arrays, so ``ask`` and ``tell`` run under ``jit``, inside
``lax.scan`` and under ``vmap`` over independent runs. ``ask`` and ``tell`` alternate: each
``tell`` reports the codes of the ``ask`` before it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp

PRNGKey = jax.Array
Codes = jax.Array  # [num_dims] int32
State = Any

NEG_INF = -jnp.inf


class Strategy(NamedTuple):
  """An ask/tell search strategy over a discrete ``Space``.

  Attributes:
    init: ``(key, space) -> state``.
    ask: ``state -> (state, codes)``, the next architecture to evaluate.
    tell: ``(state, codes, score) -> state``, its score (higher is better).
  """
  init: Callable[[PRNGKey, Any], State]
  ask: Callable[[State], Tuple[State, Codes]]
  tell: Callable[[State, Codes, Any], State]


def uniform_codes(key: PRNGKey, cardinalities: jax.Array) -> Codes:
  """A code vector drawn uniformly: entry ``i`` uniform in ``[0, cardinalities[i])``."""
  return jax.random.randint(key, cardinalities.shape, 0, cardinalities, jnp.int32)


def where_tree(cond: jax.Array, a: Any, b: Any) -> Any:
  """``a`` where ``cond`` else ``b``, leaf by leaf (a scalar ``cond``)."""
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)
