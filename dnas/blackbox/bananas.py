"""BANANAS: Bayesian optimisation with a neural predictor ensemble and path encodings.

White, Neiswanger & Savani, "BANANAS: Bayesian Optimization with Neural Architectures for
Neural Architecture Search", AAAI 2021, Algorithm 1::

    query num_init random architectures
    repeat:
      train an ensemble of neural predictors on the (encoding, score) pairs seen so far
      candidates = mutations of the best architectures seen (+ some random ones), unseen
      sample s_i ~ N(mean_i, std_i) per candidate (independent Thompson sampling, ITS)
      query the candidate(s) with the largest s_i

Public pieces, usable on their own:

- ``path_encoding(codes)``: the path encoding of NAS-Bench-201 cells.
- ``mlp_ensemble(...)``: a ``Predictor`` with ``fit(key, X, y, mask) -> params`` and
  ``predict(params, X) -> (mean, std)``.
- ``bananas(...)``: the ask/tell strategy, registered as ``"bananas"``.

Departures from the paper, for speed inside ``run_on_table`` (all documented as options):

- BANANAS' predictor is 5 feed-forward nets of 10 layers of width 20, trained by Adam
  (lr 0.01, mean absolute error, 200 epochs). The default here is 5 nets of 2 hidden layers of
  width 20, full-batch Adam for ``fit_steps`` steps, retrained from scratch at each refit.
- Algorithm 1 queries one architecture per refit; the authors' code queries ``k = 10`` per
  refit. ``queries_per_fit`` sets it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnas.blackbox import registry
from dnas.blackbox.base import NEG_INF, Strategy, uniform_codes
from dnas.blackbox.strategies import mutate

Params = Any

# --- Path encoding of NAS-Bench-201 cells ----------------------------------------------------

# Input-to-output paths of NB201's 4-node cell, as indices into the code vector's edges
# (``spaces.NB201_EDGES``: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2), shortest first.
NB201_PATHS = ((3,), (0, 4), (1, 5), (0, 2, 5))
NB201_NUM_OPS = 5  # none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3
NB201_NONE = 0


def path_encoding_size(include_none: bool = False) -> int:
  """84 (paths over the 4 non-``none`` ops, lengths 1..3) or 155 (all 5 ops)."""
  n = NB201_NUM_OPS if include_none else NB201_NUM_OPS - 1
  return sum(n ** length for length in (1, 2, 3))


def path_encoding(codes: jax.Array, include_none: bool = False) -> jax.Array:
  """The path encoding of NAS-Bench-201 cells (White et al., AAAI 2021, section 4).

  Feature ``j`` is 1 when some input-to-output path of the cell carries the op sequence
  numbered ``j``. A path of length ``L`` with ops ``(o_1, ..., o_L)`` has number
  ``offset(L) + sum_k (o_k - s) * n ** (L - k)``, with ``n`` the ops counted and ``s`` the
  first: by default ``none`` is left out (``n = 4``, ``s = 1``; a path through ``none``
  carries nothing and sets no feature), giving ``4 + 16 + 64 = 84`` features;
  ``include_none=True`` keeps it (``n = 5``, ``s = 0``, 155 features). Two paths with the same
  ops (``0->1->3`` and ``0->2->3``) set the same feature, as in BANANAS.

  Args:
    codes: ``[..., 6]`` int NB201 codes (``nb201_space``: ops in NB201's order).
    include_none: keep paths through ``none``.

  Returns:
    ``[..., 84]`` (or ``[..., 155]``) float32 of 0s and 1s.
  """
  codes = jnp.asarray(codes, jnp.int32)
  if codes.shape[-1] != len(NB201_PATHS[-1]) * 2:
    raise ValueError(f"path_encoding: codes must be [..., 6] NB201 codes, got shape "
                     f"{codes.shape}")
  n = NB201_NUM_OPS if include_none else NB201_NUM_OPS - 1
  first = 0 if include_none else 1
  out = jnp.zeros(codes.shape[:-1] + (path_encoding_size(include_none),), jnp.float32)
  for path in NB201_PATHS:
    length = len(path)
    ops = codes[..., list(path)]
    number = jnp.sum((ops - first) * n ** jnp.arange(length - 1, -1, -1), axis=-1)
    live = jnp.ones(codes.shape[:-1], bool) if include_none else jnp.all(ops != NB201_NONE, -1)
    block = jax.nn.one_hot(number, n ** length) * live[..., None]
    start = sum(n ** l for l in range(1, length))
    out = out.at[..., start:start + n ** length].max(block)
  return out


def onehot_features(cardinalities: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
  """``(feature_dim, feature_value)``: feature ``f`` of ``onehot_encoding`` is
  ``codes[feature_dim[f]] == feature_value[f]``; ``sum(cardinalities)`` features."""
  dims = np.array([d for d, c in enumerate(cardinalities) for _ in range(c)], np.int32)
  values = np.array([v for c in cardinalities for v in range(c)], np.int32)
  return dims, values


def onehot_encoding(codes: jax.Array, feature_dim: jax.Array,
                    feature_value: jax.Array) -> jax.Array:
  """Each dimension one-hot, concatenated (``onehot_features``): ``[..., F]`` float32."""
  codes = jnp.asarray(codes, jnp.int32)
  return (codes[..., feature_dim] == feature_value).astype(jnp.float32)


# --- Predictors ------------------------------------------------------------------------------


class Predictor(NamedTuple):
  """A score predictor with uncertainty, fitted on masked, fixed-size data.

  Attributes:
    fit: ``(key, X [N, F], y [N], mask [N] bool) -> params``; rows where ``mask`` is False
      are ignored (fixed shapes for jit).
    predict: ``(params, X [M, F]) -> (mean [M], std [M])``.
  """
  fit: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], Params]
  predict: Callable[[Params, jax.Array], Tuple[jax.Array, jax.Array]]


class MLP(nn.Module):
  """A ReLU MLP with one output."""
  hidden: Tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(1)(x)[..., 0]


def _masked_moments(y, mask):
  w = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w), 1.0)
  mean = jnp.sum(w * y) / n
  std = jnp.sqrt(jnp.sum(w * (y - mean) ** 2) / n)
  return mean, jnp.where(std > 0, std, 1.0)


def mlp_ensemble(num_members: int = 5, hidden: Sequence[int] = (20, 20), fit_steps: int = 200,
                 learning_rate: float = 0.01, loss: str = "mae") -> Predictor:
  """An ensemble of MLPs, each from its own initialisation (BANANAS' predictor).

  Targets are standardised with the masked mean and std before fitting. Each member takes
  ``fit_steps`` full-batch Adam steps on the mean absolute (``"mae"``, BANANAS' choice) or
  squared (``"mse"``) error of the rows in ``mask``. ``predict`` gives the members' mean and
  (population) std, in the targets' units.

  Example::

      predictor = mlp_ensemble()
      params = predictor.fit(key, path_encoding(codes), scores, jnp.ones(len(scores), bool))
      mean, std = predictor.predict(params, path_encoding(candidates))

  Args:
    num_members: nets in the ensemble (BANANAS: 5).
    hidden: widths of the hidden layers (BANANAS: 10 layers of 20).
    fit_steps: Adam steps per fit.
    learning_rate: Adam's learning rate (BANANAS: 0.01).
    loss: ``"mae"`` or ``"mse"``.

  Returns:
    A ``Predictor``.
  """
  for field, value in (("num_members", num_members), ("fit_steps", fit_steps)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"mlp_ensemble: {field} must be a positive int, got {value!r}")
  if loss not in ("mae", "mse"):
    raise ValueError(f"mlp_ensemble: loss must be 'mae' or 'mse', got {loss!r}")
  hidden = tuple(int(h) for h in hidden)
  if any(h < 1 for h in hidden):
    raise ValueError(f"mlp_ensemble: hidden widths must be positive, got {hidden!r}")
  model = MLP(hidden)
  tx = optax.adam(learning_rate)

  def fit(key, x, y, mask):
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    mask = jnp.asarray(mask, bool)
    mean, std = _masked_moments(y, mask)
    target = jnp.where(mask, (y - mean) / std, 0.0)
    w = mask.astype(jnp.float32) / jnp.maximum(jnp.sum(mask), 1)

    def objective(p):
      err = model.apply(p, x) - target
      return jnp.sum(w * (jnp.abs(err) if loss == "mae" else err ** 2))

    def one(k):
      p = model.init(k, x[:1])

      def step(_, carry):
        p, opt = carry
        updates, opt = tx.update(jax.grad(objective)(p), opt, p)
        return optax.apply_updates(p, updates), opt

      return jax.lax.fori_loop(0, fit_steps, step, (p, tx.init(p)))[0]

    nets = jax.vmap(one)(jax.random.split(key, num_members))
    return {"nets": nets, "y_mean": mean, "y_std": std}

  def predict(params, x):
    x = jnp.asarray(x, jnp.float32)
    out = jax.vmap(lambda p: model.apply(p, x))(params["nets"])
    out = out * params["y_std"] + params["y_mean"]
    return jnp.mean(out, axis=0), jnp.std(out, axis=0)

  return Predictor(fit, predict)


# --- The strategy ----------------------------------------------------------------------------


class BananasState(NamedTuple):
  """BANANAS' state: everything told so far, in fixed-size buffers, and the next proposals.

  Attributes:
    key: the PRNG key.
    cardinalities: ``[D]`` int32.
    codes: ``[capacity, D]`` int32, the architectures told (row ``i`` is the ``i``-th).
    scores: ``[capacity]`` float32, their scores (``-inf`` where empty).
    count: how many were told (beyond ``capacity`` they are not kept).
    proposals: ``[queries_per_fit, D]`` int32, the next asks after the random start.
    feature_dim, feature_value: ``[F]`` int32, the one-hot encoding's features
      (``onehot_features``; empty for the path encoding).
  """
  key: jax.Array
  cardinalities: jax.Array
  codes: jax.Array
  scores: jax.Array
  count: jax.Array
  proposals: jax.Array
  feature_dim: jax.Array
  feature_value: jax.Array


ENCODINGS = ("path", "onehot")


@registry.register("bananas")
def bananas(capacity: int = 200, num_init: int = 10, queries_per_fit: int = 1,
            num_parents: int = 10, num_candidates: int = 100, num_random: int = 10,
            encoding: str = "path", num_members: int = 5, hidden: Sequence[int] = (20, 20),
            fit_steps: int = 200, learning_rate: float = 0.01, loss: str = "mae") -> Strategy:
  """BANANAS (White et al., AAAI 2021): predictor ensemble + ITS over mutated candidates.

  The first ``num_init`` asks are uniform random. After that, every ``queries_per_fit``
  tells the ensemble (``mlp_ensemble``) is refitted from scratch on all told pairs and a new
  candidate pool is made: ``num_candidates`` one-edge mutants of the ``num_parents`` best
  architectures told (parents drawn uniformly among them), plus ``num_random`` uniform ones;
  candidates already told, or repeated in the pool, are dropped. Each candidate gets one ITS
  draw ``s ~ N(mean, std)``; the ``queries_per_fit`` largest are the next asks.

  Fixed shapes: the told pairs live in ``[capacity]`` buffers (give at least the budget; tells
  beyond it are not remembered), and the refit runs ``fit_steps`` Adam steps in a
  ``lax.fori_loop``. The refit is a ``lax.cond`` on the tell count, which ``run_on_table``
  keeps unbatched, so between refits ``tell`` costs almost nothing.

  Args:
    capacity: the most (architecture, score) pairs remembered.
    num_init: random architectures before the first fit (BANANAS: 10).
    queries_per_fit: asks per refit (Algorithm 1: 1; the authors' code: 10).
    num_parents: the best architectures mutated (BANANAS: 10).
    num_candidates: mutants in the pool (BANANAS: 100).
    num_random: uniform random candidates added to the pool.
    encoding: ``"path"`` (NAS-Bench-201 spaces only, ``path_encoding``) or ``"onehot"``.
    num_members, hidden, fit_steps, learning_rate, loss: the predictor (``mlp_ensemble``).

  Returns:
    A ``Strategy`` with ``BananasState``.
  """
  for field, value in (("capacity", capacity), ("num_init", num_init),
                       ("queries_per_fit", queries_per_fit), ("num_parents", num_parents),
                       ("num_candidates", num_candidates)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"bananas: {field} must be a positive int, got {value!r}")
  if isinstance(num_random, bool) or not isinstance(num_random, int) or num_random < 0:
    raise ValueError(f"bananas: num_random must be a non-negative int, got {num_random!r}")
  if num_init > capacity:
    raise ValueError(f"bananas: num_init ({num_init}) must not exceed capacity ({capacity})")
  if num_candidates + num_random < queries_per_fit:
    raise ValueError(f"bananas: queries_per_fit ({queries_per_fit}) exceeds the pool "
                     f"(num_candidates + num_random = {num_candidates + num_random})")
  if encoding not in ENCODINGS:
    raise ValueError(f"bananas: encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
  predictor = mlp_ensemble(num_members, hidden, fit_steps, learning_rate, loss)

  def encode(codes, state):
    if encoding == "path":
      return path_encoding(codes)
    return onehot_encoding(codes, state.feature_dim, state.feature_value)

  def init(key, space):
    cards = tuple(space.cardinalities)
    if encoding == "path" and cards != (NB201_NUM_OPS,) * 6:
      raise ValueError(f"bananas: encoding='path' needs NAS-Bench-201's space (6 dimensions "
                       f"of 5 ops), got space {space.name!r} with cardinalities {cards}; use "
                       f"encoding='onehot'")
    d = len(cards)
    features = onehot_features(() if encoding == "path" else cards)
    return BananasState(key, jnp.asarray(cards, jnp.int32),
                        jnp.zeros((capacity, d), jnp.int32),
                        jnp.full((capacity,), NEG_INF, jnp.float32), jnp.zeros((), jnp.int32),
                        jnp.zeros((queries_per_fit, d), jnp.int32),
                        *(jnp.asarray(f) for f in features))

  def ask(state):
    key, sub = jax.random.split(state.key)
    start = uniform_codes(sub, state.cardinalities)
    slot = jnp.maximum(state.count - num_init, 0) % queries_per_fit
    codes = jnp.where(state.count < num_init, start, state.proposals[slot])
    return state._replace(key=key), codes

  def propose(state, key):
    """Refits the predictor and returns the next ``queries_per_fit`` asks."""
    k_fit, k_par, k_dim, k_off, k_rand, k_its = jax.random.split(key, 6)
    cards = state.cardinalities
    filled = jnp.isfinite(state.scores)
    params = predictor.fit(k_fit, encode(state.codes, state), state.scores, filled)
    best = jax.lax.top_k(state.scores, min(num_parents, capacity))[1]
    n_best = jnp.minimum(jnp.sum(filled), num_parents)
    parents = state.codes[best[jax.random.randint(k_par, (num_candidates,), 0, n_best)]]
    d = cards.shape[0]
    dims = jax.random.randint(k_dim, (num_candidates,), 0, d)
    flip = jnp.arange(d)[None, :] == dims[:, None]
    offsets = jax.random.randint(k_off, (num_candidates, d), 1, jnp.maximum(cards, 2))
    mutants = mutate(parents, flip, offsets, cards)
    randoms = jax.vmap(uniform_codes, (0, None))(jax.random.split(k_rand, num_random), cards)
    pool = jnp.concatenate([mutants, randoms], axis=0)
    seen = jnp.any(jnp.all(pool[:, None, :] == state.codes[None], -1) & filled[None], axis=1)
    same = jnp.all(pool[:, None, :] == pool[None, :, :], -1)
    repeated = jnp.any(jnp.tril(same, k=-1), axis=1)
    mean, std = predictor.predict(params, encode(pool, state))
    draw = mean + std * jax.random.normal(k_its, mean.shape)
    draw = jnp.where(seen | repeated, NEG_INF, draw)
    return pool[jax.lax.top_k(draw, queries_per_fit)[1]].astype(jnp.int32)

  def tell(state, codes, score):
    codes = jnp.asarray(codes, jnp.int32)
    score = jnp.asarray(score, jnp.float32)
    key, sub = jax.random.split(state.key)
    state = state._replace(
        key=key,
        codes=state.codes.at[state.count].set(codes, mode="drop"),
        scores=state.scores.at[state.count].set(score, mode="drop"),
        count=state.count + 1)
    refit = (state.count >= num_init) & ((state.count - num_init) % queries_per_fit == 0)
    proposals = jax.lax.cond(refit, lambda: propose(state, sub), lambda: state.proposals)
    return state._replace(proposals=proposals)

  return Strategy(init, ask, tell)

