"""REINFORCE: a policy over code vectors trained by policy gradient on the scores it gets.

Williams' REINFORCE ("Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 1992) as used for architecture search by Zoph & Le
("Neural Architecture Search with Reinforcement Learning", ICLR 2017). Each ``ask`` samples a
code vector from the policy ``pi_theta``; each ``tell`` takes one optimizer step on::

    loss(theta) = -(R - b) * log pi_theta(codes)      # R: the score, b: the baseline
    grad loss   = -(R - b) * grad log pi_theta(codes)

with ``b`` an exponential moving average of the scores, debiased as NAS-Bench-201's
``ExponentialMovingAverage`` (its numerator and denominator both decay)::

    num <- m * num + (1 - m) * R;  den <- m * den + (1 - m);  b = num / den

``b`` is updated with ``R`` *before* the step, as NAS-Bench-201 does, so the first step has
``R - b = 0``.

Two controllers:

- ``"table"``: NAS-Bench-201's policy (Dong & Yang, "NAS-Bench-201", ICLR 2020, section 5; the
  authors' ``exps/algos/reinforce.py``): one independent softmax per dimension over a learnable
  ``[num_dims, num_choices]`` logits table initialised as ``1e-3 * N(0, 1)``, trained by Adam.
  NAS-Bench-201's script uses learning rate 0.001 and EMA momentum 0.9
  (``scripts-search/algos/REINFORCE.sh``); NATS-Bench (Dong et al., TPAMI 2021) reruns it with
  learning rate 0.01 (``exps/NATS-algos/run-all.sh``). The default here is ``learning_rate=0.1``,
  chosen on the NB201 table: with 0.001 or 0.01 the logits barely move within 50-100 queries
  and the search is random search (see the test ``test_learned_strategies_beat_random_search``).
- ``"lstm"``: Zoph & Le's autoregressive controller: an LSTM takes one step per dimension, fed
  the embedding of the previous choice (a start token first), and a per-dimension linear head
  gives that dimension's logits. Zoph & Le use two layers of 35 units; this is one layer of
  ``hidden_size`` units (35 by default).

Dimensions with fewer choices than the largest are padded and their extra logits masked out.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dnas.blackbox import registry
from dnas.blackbox.base import Strategy

_MASKED = -1e9  # a finite "minus infinity" keeps log_softmax's gradient NaN-free
CONTROLLERS = ("table", "lstm")


class ReinforceState(NamedTuple):
  """REINFORCE's state.

  Attributes:
    key: the PRNG key.
    cardinalities: ``[D]`` int32.
    params: the controller's parameters (``{"logits": [D, K]}`` for the table controller).
    opt_state: the optimizer's state.
    baseline_num, baseline_den: the debiased EMA of the scores is ``num / den``.
    count: how many scores were told.
  """
  key: jax.Array
  cardinalities: jax.Array
  params: Any
  opt_state: Any
  baseline_num: jax.Array
  baseline_den: jax.Array
  count: jax.Array


class LSTMController(nn.Module):
  """One step of Zoph & Le's controller: previous choice in, this dimension's logits out.

  Attributes:
    num_dims: ``D``, the number of steps (one per dimension).
    num_choices: ``K``, the largest cardinality; token ``K`` is the start token.
    hidden_size: LSTM units.
  """
  num_dims: int
  num_choices: int
  hidden_size: int = 35

  def setup(self):
    self.embed = nn.Embed(self.num_choices + 1, self.hidden_size)
    self.cell = nn.OptimizedLSTMCell(self.hidden_size)
    init = nn.initializers.lecun_normal(batch_axis=(0,))
    self.heads = self.param("heads", init, (self.num_dims, self.hidden_size, self.num_choices))
    self.head_bias = self.param("head_bias", nn.initializers.zeros,
                                (self.num_dims, self.num_choices))

  def __call__(self, carry, token, dim):
    carry, h = self.cell(carry, self.embed(token))
    return carry, h @ self.heads[dim] + self.head_bias[dim]

  def initial_carry(self):
    zeros = jnp.zeros((self.hidden_size,), jnp.float32)
    return zeros, zeros


def _valid(cardinalities: jax.Array, num_choices: int) -> jax.Array:
  return jnp.arange(num_choices)[None, :] < cardinalities[:, None]


def table_log_prob(params: Any, codes: jax.Array, cardinalities: jax.Array) -> jax.Array:
  """``log pi(codes)`` under the table controller: ``sum_d log_softmax(logits[d])[codes[d]]``."""
  logits = params["logits"]
  logits = jnp.where(_valid(cardinalities, logits.shape[1]), logits, _MASKED)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.sum(jnp.take_along_axis(logp, codes[:, None], axis=1))


def _lstm_rollout(model, params, cardinalities, key, codes):
  """Runs the controller over the dimensions; samples (``codes`` None) or scores ``codes``.

  Returns:
    ``(codes, log_prob)``.
  """
  d, k = model.num_dims, model.num_choices
  valid = _valid(cardinalities, k)
  keys = jax.random.split(key, d)
  given = jnp.zeros((d,), jnp.int32) if codes is None else codes

  def step(carry, i):
    lstm_carry, token = carry
    lstm_carry, logits = model.apply(params, lstm_carry, token, i)
    logits = jnp.where(valid[i], logits, _MASKED)
    if codes is None:
      choice = jax.random.categorical(keys[i], logits).astype(jnp.int32)
    else:
      choice = given[i]
    logp = jax.nn.log_softmax(logits)[choice]
    return (lstm_carry, choice), (choice, logp)

  start = (model.apply(params, method=LSTMController.initial_carry), jnp.asarray(k, jnp.int32))
  _, (choices, logps) = jax.lax.scan(step, start, jnp.arange(d))
  return choices, jnp.sum(logps)


@registry.register("reinforce")
def reinforce(controller: str = "table", learning_rate: float = 0.1,
              ema_momentum: float = 0.9, hidden_size: int = 35,
              optimizer: Optional[optax.GradientTransformation] = None) -> Strategy:
  """REINFORCE with an EMA baseline (Williams 1992; Zoph & Le, ICLR 2017; NAS-Bench-201).

  Example::

      strategy = blackbox.get("reinforce", controller="lstm")
      hist = blackbox.run_on_table(strategy, space, table.column("cifar10_valid"), 100, keys)

  Args:
    controller: ``"table"`` (NAS-Bench-201's independent logits per dimension) or ``"lstm"``
      (Zoph & Le's autoregressive LSTM).
    learning_rate: Adam's learning rate (NAS-Bench-201: 0.001; NATS-Bench: 0.01; see the
      module docstring for the default).
    ema_momentum: ``m`` of the baseline's moving average (NAS-Bench-201: 0.9).
    hidden_size: the LSTM's units (``controller="lstm"`` only).
    optimizer: an optax transformation to use instead of ``optax.adam(learning_rate)``.

  Returns:
    A ``Strategy`` with ``ReinforceState``.
  """
  if controller not in CONTROLLERS:
    raise ValueError(f"reinforce: controller must be one of {list(CONTROLLERS)}, got "
                     f"{controller!r}")
  if not 0.0 <= float(ema_momentum) < 1.0:
    raise ValueError(f"reinforce: ema_momentum must be in [0, 1), got {ema_momentum!r}")
  if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
    raise ValueError(f"reinforce: hidden_size must be a positive int, got {hidden_size!r}")
  if optimizer is None:
    if not float(learning_rate) > 0.0:
      raise ValueError(f"reinforce: learning_rate must be positive, got {learning_rate!r}")
    optimizer = optax.adam(learning_rate)

  def model_for(params):
    """The LSTM controller; its shapes are read from ``params`` (static under jit)."""
    num_dims, num_choices = params["params"]["head_bias"].shape
    return LSTMController(num_dims, num_choices, hidden_size)

  def log_prob(params, codes, cardinalities):
    if controller == "table":
      return table_log_prob(params, codes, cardinalities)
    # Scoring given codes draws nothing: the key is unused.
    return _lstm_rollout(model_for(params), params, cardinalities, jax.random.key(0), codes)[1]

  def init(key, space):
    cards = jnp.asarray(space.cardinalities, jnp.int32)
    k = max(space.cardinalities)
    key, sub = jax.random.split(key)
    if controller == "table":
      params = {"logits": 1e-3 * jax.random.normal(sub, (cards.shape[0], k), jnp.float32)}
    else:
      model = LSTMController(cards.shape[0], k, hidden_size)
      params = model.init(sub, model.initial_carry(), jnp.asarray(k, jnp.int32), 0)
    zero = jnp.zeros((), jnp.float32)
    return ReinforceState(key, cards, params, optimizer.init(params), zero, zero,
                          jnp.zeros((), jnp.int32))

  def ask(state):
    key, sub = jax.random.split(state.key)
    cards = state.cardinalities
    if controller == "table":
      logits = state.params["logits"]
      logits = jnp.where(_valid(cards, logits.shape[1]), logits, _MASKED)
      codes = jax.random.categorical(sub, logits, axis=-1).astype(jnp.int32)
    else:
      codes, _ = _lstm_rollout(model_for(state.params), state.params, cards, sub, None)
    return state._replace(key=key), codes

  def tell(state, codes, score):
    codes = jnp.asarray(codes, jnp.int32)
    reward = jnp.asarray(score, jnp.float32)
    num = ema_momentum * state.baseline_num + (1.0 - ema_momentum) * reward
    den = ema_momentum * state.baseline_den + (1.0 - ema_momentum)
    advantage = reward - num / den

    def loss(params):
      return -advantage * log_prob(params, codes, state.cardinalities)

    grads = jax.grad(loss)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, baseline_num=num, baseline_den=den,
                          count=state.count + 1)

  return Strategy(init, ask, tell)

