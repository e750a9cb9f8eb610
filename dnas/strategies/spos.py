"""SPOS / RSPS: train the supernet on uniformly sampled single paths, pick the genotype after.

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020;
Li & Talwalkar, "Random Search and Reproducibility for Neural Architecture Search" (RSPS), UAI
2019, as NAS-Bench-201 runs it (D-X-Y/AutoDL-Projects, ``exps/algos/RANDOM-NAS.py``).

Every weight step draws one op per edge, uniformly and independently (SPOS eq. 4 with the
uniform prior ``Gamma(A)``; RSPS' ``random_genotype``, ``lib/models/cell_searchs/
search_model_random.py``, called before every step in ``search_func``), and trains the weights
of that path alone: ``mix`` gives a ``dnas.types.SampledOps`` per cell type, its weights one-hot
and constant (no gradient reaches alpha, which stays as initialised). The strategy learns no
alpha (``learns_arch=False``): the step runs no architecture pass. After training, the loop
picks the genotype with ``dnas.oneshot.select`` under ``strategy.select``: RSPS' random search
(``"random"``) or SPOS' evolution (``"evolution"``).

Where dnas differs: ``derive_weights`` and ``eval_weights``, which a learning strategy's
genotype and per-epoch validation come from, are the expected op weights ``E[mix] = 1/K`` on
every op (the supernet's average path); NAS-Bench-201's ``valid_func`` instead draws a new random
path for every validation batch. Neither names a genotype: only ``select``'s does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dnas.oneshot import check_settings, SelectSettings
from dnas.strategies import registry
from dnas.strategies.base import Strategy
from dnas.types import SampledOps


def uniform_path_mix(arch, state, key):
  """One op per edge, uniformly at random: ``{name: SampledOps(index, one_hot(index))}``.

  ``arch`` only gives the shapes ``[E, K]``; each cell type draws from its own fold of ``key``
  (cell types in sorted order). The weights are constants: no gradient reaches ``arch``.
  """
  del state
  if key is None:
    raise ValueError("spos samples a path per step and needs a key; for key-free op weights "
                     "use dnas.strategies.derive_weights (the expected weights)")
  out = {}
  for i, name in enumerate(sorted(arch)):
    e, k = arch[name].shape
    index = jax.random.randint(jax.random.fold_in(key, i), (e,), 0, k, dtype=jnp.int32)
    out[name] = SampledOps(index, jax.nn.one_hot(index, k, dtype=arch[name].dtype))
  return out


def expected_weights(arch, state):
  """``E[one_hot(index)] = 1/K`` on every op: the sampled weights' mean, needing no key."""
  del state
  return {name: jnp.full(a.shape, 1.0 / a.shape[-1], a.dtype) for name, a in arch.items()}


def _no_arch_grad(problem, params, arch, state, key):
  del problem, params, arch, state, key
  raise NotImplementedError("spos learns no alpha (learns_arch=False): the search step runs no "
                            "architecture pass")


def spos(settings: SelectSettings = SelectSettings()) -> Strategy:
  """The SPOS / RSPS strategy: uniform single-path sampling, selection after training.

  Args:
    settings: how ``dnas.oneshot.select`` picks the genotype (``Strategy.select``); the default
      is NAS-Bench-201's RSPS: 100 random paths, one validation batch each, BatchNorm's running
      statistics.

  Returns:
    A ``Strategy`` with ``learns_arch=False``.

  Example::

    strategy = spos(SelectSettings(selection="evolution", calibration_batches=200,
                                   eval_batches=40))
    step = make_search_step(model, strategy, weight_tx, arch_tx)   # weights only
    ...
    weights, records = oneshot.select(model, state.params, state.batch_stats,
                                      strategy.select, train_batches, val_batches, key)
  """
  check_settings(settings, "config.search.spos")
  return Strategy(init=lambda arch: (), mix=uniform_path_mix, arch_grad=_no_arch_grad,
                  derive_weights=expected_weights, eval_weights=expected_weights,
                  learns_arch=False, select=settings)


_DEFAULTS = SelectSettings()._asdict()


@registry.register("spos", defaults=_DEFAULTS)
def _build(options, context: registry.StrategyContext) -> Strategy:
  """``search.strategy="spos"``: ``search.spos.{selection, candidates, calibration_batches,
  eval_batches, eval_batch_size, population, parents, mutations, crossovers, mutation_prob,
  generations}`` (``dnas.oneshot.SelectSettings``; defaults: RSPS as NAS-Bench-201 ran it)."""
  del context
  return spos(SelectSettings(**options))
