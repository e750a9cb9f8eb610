"""``no_repeat``: any strategy, never evaluating one architecture twice.

Strategies propose architectures they have already been told about (an evolution child equal
to a member, a policy sampling its favourite again). On a table or a training budget those
repeats waste queries, and a strategy that repeats can miss the best architecture even with
the whole space as budget. ``no_repeat(strategy)`` fixes both:

- every architecture told is remembered with its score (a ``[space.size]`` bitmap and score
  array, so spaces of at most 10^7 architectures, such as NAS-Bench-201's 15,625);
- when the strategy proposes a remembered one, it is told the remembered score at once (a
  repeat costs no query: the strategy's own logic runs as if it had been evaluated) and asked
  again, up to ``max_retries`` times;
- if its proposal is still a repeat, the wrapper replaces it with an architecture drawn
  uniformly from those not yet evaluated, and the strategy is told that architecture's score
  as the answer to its proposal.

So ``size`` asks evaluate every architecture exactly once, and the search finds the table's
argmax by then, whatever the strategy. After that (every architecture evaluated) proposals
pass through unchanged. The state is a pytree of fixed-shape arrays: it runs under ``jit``,
``scan`` and ``vmap`` and checkpoints like any strategy state.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dnas.blackbox.base import Strategy
from dnas.blackbox.strategies import _digits

MAX_SIZE = 10 ** 7


class NoRepeatState(NamedTuple):
  """``no_repeat``'s state.

  Attributes:
    inner: the wrapped strategy's state.
    key: the PRNG key of the fallback draws.
    cardinalities: ``[D]`` int32.
    strides: ``[D]`` int32, the mixed-radix weights of ``flat = sum(codes * strides)``.
    visited: ``[size]`` bool, the architectures told so far.
    cache: ``[size, *score_shape]`` float32, their scores.
    count: the number of distinct architectures told.
  """
  inner: Any
  key: jax.Array
  cardinalities: jax.Array
  strides: jax.Array
  visited: jax.Array
  cache: jax.Array
  count: jax.Array


def no_repeat(strategy: Strategy, max_retries: int = 10,
              score_shape: Sequence[int] = ()) -> Strategy:
  """``strategy`` with repeated proposals answered from memory and finally replaced.

  Args:
    strategy: any ask/tell ``Strategy``.
    max_retries: how many remembered proposals in a row are told back to the strategy before
      the wrapper draws an unevaluated architecture instead (0: replace at once).
    score_shape: the shape of one score (``()``; ``(m,)`` for ``m``-objective strategies such
      as ``nsga2``).

  Returns:
    A ``Strategy`` with ``NoRepeatState``.

  Raises:
    ValueError: a bad ``max_retries``; at ``init``, a space of more than 10^7 architectures.
  """
  if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
    raise ValueError(f"no_repeat: max_retries must be a non-negative int, got {max_retries!r}")
  score_shape = tuple(int(s) for s in score_shape)

  def flat(state, codes):
    return jnp.sum(jnp.asarray(codes, jnp.int32) * state.strides)

  def init(key, space):
    if space.size > MAX_SIZE:
      raise ValueError(f"no_repeat: needs a space of at most 10^7 architectures to remember "
                       f"them; {space.name!r} has {space.size}")
    k_inner, key = jax.random.split(key)
    cards = tuple(space.cardinalities)
    strides = np.cumprod((1,) + cards[:0:-1])[::-1]
    return NoRepeatState(
        strategy.init(k_inner, space), key, jnp.asarray(cards, jnp.int32),
        jnp.asarray(strides, jnp.int32), jnp.zeros((space.size,), bool),
        jnp.zeros((space.size,) + score_shape, jnp.float32), jnp.zeros((), jnp.int32))

  def ask(state):
    def repeat(carry):
      inner, codes, tries = carry
      return state.visited[flat(state, codes)] & (tries < max_retries)

    def retry(carry):
      inner, codes, tries = carry
      inner = strategy.tell(inner, codes, state.cache[flat(state, codes)])
      inner, codes = strategy.ask(inner)
      return inner, codes, tries + 1

    inner, codes = strategy.ask(state.inner)
    inner, codes, _ = jax.lax.while_loop(repeat, retry, (inner, codes, jnp.zeros((), jnp.int32)))
    key, sub = jax.random.split(state.key)
    size = state.visited.shape[0]
    fresh = jax.random.categorical(sub, jnp.where(state.visited, -jnp.inf, 0.0))
    replace = state.visited[flat(state, codes)] & (state.count < size)
    codes = jnp.where(replace, _digits(fresh, state.cardinalities), codes)
    return state._replace(inner=inner, key=key), codes.astype(jnp.int32)

  def tell(state, codes, score):
    codes = jnp.asarray(codes, jnp.int32)
    i = flat(state, codes)
    new = ~state.visited[i]
    return state._replace(
        inner=strategy.tell(state.inner, codes, score),
        visited=state.visited.at[i].set(True),
        cache=state.cache.at[i].set(jnp.asarray(score, jnp.float32)),
        count=state.count + new.astype(jnp.int32))

  return Strategy(init, ask, tell)
