"""From alpha to a genotype (pure functions of the op weights).

DARTS (Liu et al., 2019, section 2.4): for every intermediate node keep the two strongest incoming
edges, an edge's strength being its largest non-``none`` op weight; on each kept edge keep the
strongest non-``none`` op. Ties go to the lower index, as in the reference implementation.

NAS-Bench-201 (Dong & Yang, 2020): on every edge keep the op of largest weight (``none`` included).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from dnas import genotypes
from dnas.ops.sets import OpSet


def _darts_cell(weights: np.ndarray, ops: Sequence[str], nodes: int, keep: int = 2):
  weights = np.asarray(weights, np.float64)
  candidates = [k for k, op in enumerate(ops) if op != "none"]
  if not candidates:
    raise ValueError("the op set has no op besides 'none'; nothing to keep")
  gene = []
  start = 0
  for i in range(nodes):
    n_in = i + 2
    w = weights[start:start + n_in][:, candidates]
    strength = w.max(axis=1)
    # Stable sort on -strength: the stronger edge first, the lower source on ties.
    order = np.argsort(-strength, kind="stable")[:keep]
    for src in order:
      best = candidates[int(np.argmax(w[src]))]  # argmax returns the first maximum
      gene.append((ops[best], int(src)))
    start += n_in
  if start != weights.shape[0]:
    raise ValueError(f"op weights have {weights.shape[0]} edges, {nodes} nodes need {start}")
  return tuple(gene)


def darts_genotype(op_weights: Mapping[str, np.ndarray], op_set: OpSet, nodes: int = 4,
                   multiplier: int = 4) -> genotypes.DartsGenotype:
  """Derives a DARTS-space genotype from ``{"normal": [E, K], "reduce": [E, K]}`` op weights.

  Args:
    op_weights: relaxed weights per edge (``softmax(alpha)`` for DARTS), edges numbered node by
      node as in ``dnas.spaces.cell.edge_index``.
    op_set: the ops of the weights' last axis.
    nodes: intermediate nodes per cell.
    multiplier: how many of the last nodes the cell concatenates.

  Returns:
    A ``DartsGenotype``.
  """
  concat = tuple(range(2 + nodes - multiplier, 2 + nodes))
  return genotypes.DartsGenotype(
      _darts_cell(jax.device_get(op_weights["normal"]), op_set.ops, nodes), concat,
      _darts_cell(jax.device_get(op_weights["reduce"]), op_set.ops, nodes), concat)


def nb201_genotype(op_weights: Mapping[str, np.ndarray], op_set: OpSet,
                   nodes: int = 3) -> genotypes.NB201Genotype:
  """Derives an NB201 genotype: the argmax op on each of the cell's edges."""
  w = np.asarray(jax.device_get(op_weights["cell"]))
  out, e = [], 0
  for i in range(nodes):
    node = []
    for src in range(i + 1):
      node.append((op_set.ops[int(np.argmax(w[e]))], src))
      e += 1
    out.append(tuple(node))
  if e != w.shape[0]:
    raise ValueError(f"op weights have {w.shape[0]} edges, {nodes} nodes need {e}")
  return genotypes.NB201Genotype(tuple(out))


def derive(model, op_weights) -> genotypes.Genotype:
  """The genotype of a supernet at ``op_weights``, by the supernet's own rule.

  Each space knows how to discretize its alpha: a supernet module has a method
  ``genotype(op_weights) -> Genotype`` (``DartsSearchNet``: DARTS' rule; ``NB201SearchNet``:
  NAS-Bench-201's). A user's space adds one, usually calling a rule of this module.

  Raises:
    TypeError: the model has no ``genotype`` method (naming its class).
  """
  rule = getattr(model, "genotype", None)
  if not callable(rule):
    raise TypeError(f"{type(model).__name__} has no discretization rule: give it a method "
                    f"genotype(self, op_weights) -> Genotype (see dnas.spaces.nb201)")
  return rule(op_weights)
