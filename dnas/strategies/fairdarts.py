"""FairDARTS: independent sigmoid op weights and the zero-one loss.

Chu, Zhou, Zhang & Li, "Fair DARTS: Eliminating Unfair Advantages in Differentiable Architecture
Search", ECCV 2020.

Each op's weight is its own ``sigmoid(alpha_{e,k})``, not normalised over the edge: ops do not
compete for a share of one, so a skip connection's advantage no longer starves the others. Alpha's
upper-level loss adds the zero-one loss, which pushes every sigmoid away from 0.5 towards 0 or 1
(the paper's eq. 4)::

    L_val(w, sigma(alpha)) + w01 * L01,   L01 = -(1/N) sum_{e,k} (sigma(alpha_{e,k}) - 1/2)^2,

``N`` all of alpha's entries (every leaf's), ``w01`` the paper's ``w_{0-1}`` (10). Its gradient is
``-(2 w01 / N) (sigma - 1/2) sigma (1 - sigma)``. Alpha's gradient is first order, as the
reference's ``Architect.step`` takes it.

Reference code (xiaomi-automl/FairDARTS): ``fairdarts/separate_loss.py``, ``ConvSeparateLoss``
(l. 16: ``-F.mse_loss(sigmoid(alpha), 0.5)`` over the normal and reduction alphas concatenated);
``fairdarts/architect.py``, ``step`` (l. 20-26: cross-entropy plus ``weight * loss2`` on the
validation batch, first order); ``fairdarts/train_search.py``, ``--aux_loss_weight 10``.

Selection: FairDARTS keeps, on the DARTS space, every op whose sigmoid exceeds 0.85
(``--op_threshold 0.85``, ``--parse_method threshold_sparse``). A NAS-Bench-201 cell needs exactly
one op per edge, so dnas derives its genotype from ``sigmoid(alpha)`` by the space's own rule: the
argmax on each edge (the op with the largest sigmoid, threshold or not); ``metrics`` logs the
share of ops above ``threshold`` (``above_threshold``), which the paper's rule would keep. The
derive and evaluation weights are the sigmoids themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, Strategy


def sigmoid_mix(arch, state, key):
  """``sigmoid(alpha)`` elementwise: each op's weight on its own, not normalised over the edge."""
  del state, key
  return jax.tree.map(jax.nn.sigmoid, arch)


def _all_entries(arch) -> jax.Array:
  return jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(arch)])


def zero_one_loss(arch) -> jax.Array:
  """``-mean((sigmoid(alpha) - 1/2)^2)`` over every entry of every leaf of ``arch``."""
  return -jnp.mean(jnp.square(jax.nn.sigmoid(_all_entries(arch)) - 0.5))


def fairdarts(zero_one_weight: float = 10.0, threshold: float = 0.85) -> Strategy:
  """The FairDARTS strategy.

  Args:
    zero_one_weight: ``w_{0-1}``, the zero-one loss's weight (the paper's and code's 10).
    threshold: the paper's selection threshold on the sigmoid (0.85); only logged here (the
      genotype is the argmax; module docstring).

  Returns:
    A ``Strategy``; the zero-one loss is its ``regularizer``.

  Example::

    strategy = fairdarts(zero_one_weight=10.0)
    weights = strategy.mix(arch, (), None)   # sigmoid(alpha), rows need not sum to 1

  Reference: Chu et al., ECCV 2020; xiaomi-automl/FairDARTS ``fairdarts/separate_loss.py``.
  """
  if not zero_one_weight >= 0:
    raise ValueError(f"zero_one_weight must be non-negative, got {zero_one_weight!r}")
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")

  def init(arch):
    del arch
    return ()

  def arch_grad(problem: BilevelProblem, params, arch, state, key):
    def val_loss(a):
      loss, (_, logits) = problem.loss_fn(params, sigmoid_mix(a, state, key), problem.batch_val)
      return loss, logits

    (loss, logits), g = jax.value_and_grad(val_loss, has_aux=True)(arch)
    return g, {"val_loss": loss, "val_logits": logits}

  def regularizer(arch):
    return zero_one_weight * zero_one_loss(arch)

  def metrics(arch, state):
    del state
    w = jax.nn.sigmoid(_all_entries(arch))
    return {"zero_one": zero_one_loss(arch),
            "above_threshold": jnp.mean((w > threshold).astype(jnp.float32))}

  return Strategy(init=init, mix=sigmoid_mix, arch_grad=arch_grad, regularizer=regularizer,
                  metrics=metrics)


@registry.register("fairdarts", defaults={"zero_one_weight": 10.0, "threshold": 0.85})
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="fairdarts"``: ``search.fairdarts.{zero_one_weight, threshold}``."""
  del context
  return fairdarts(zero_one_weight=options["zero_one_weight"], threshold=options["threshold"])
