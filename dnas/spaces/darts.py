"""The DARTS CNN search space (Liu et al., ICLR 2019, section 2.1 and appendix A.1.1).

A stem (3x3 conv to ``stem_multiplier * C`` channels, BN), ``layers`` cells with reductions at
1/3 and 2/3 of the depth (channels double there), global pooling and a linear classifier. Each
cell takes the outputs of the two previous cells, brings them to ``C`` channels (a 1x1
ReLU-Conv-BN, or a factorized reduce after a reduction cell), computes ``nodes`` intermediate
nodes over mixed edges, and outputs the concatenation of its last ``multiplier`` nodes.

At C=16, 8 cells, 10 classes the supernet has 1,930,618 weights, as the reference PyTorch
implementation, and alpha has 2 x 14 x 8 entries.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from dnas.ops import layers
from dnas.ops.sets import DARTS, OpSet
from dnas.spaces import cell as cell_lib
from dnas.spaces.common import arch_init, Classifier, Stem


def reduction_layers(layers_: int) -> Tuple[int, ...]:
  """Cell indices that reduce: 1/3 and 2/3 of the depth."""
  return (layers_ // 3, 2 * layers_ // 3)


def cell_plan(layers_: int, stem_multiplier: int = 3, multiplier: int = 4
              ) -> List[Tuple[str, Tuple[int, ...]]]:
  """How ``DartsSearchNet(scan_cells=True)`` groups its cells: ``[(kind, cell indices)]``.

  ``kind`` is ``"single"`` (one cell, unrolled), ``"run"`` (consecutive normal cells whose
  inputs have equal shapes: one ``nn.scan`` over them, carrying both inputs) or ``"pair"`` (two
  normal cells whose second inputs have equal shapes: one ``nn.scan`` carrying the second input,
  with each cell's first input preprocessed before the scan, which is possible because both are
  known then). At 8 cells: ``0, 1, 2, (3, 4), 5, (6, 7)``: XLA compiles 6 cells instead of 8.
  """
  reductions = reduction_layers(layers_)
  # Each cell's signature: (reduction, how its first input is preprocessed and from how many
  # channels relative to C, its second input's channels relative to C).
  sig = []
  prev_c, prev_prev_c, reduction_prev, c = stem_multiplier, stem_multiplier, False, 1
  for i in range(layers_):
    reduction = i in reductions
    if reduction:
      c *= 2
    sig.append((reduction, "fr" if reduction_prev else "rcb", prev_prev_c / c, prev_c / c))
    prev_prev_c, prev_c, reduction_prev = prev_c, multiplier * c, reduction
  plan, i = [], 0
  while i < layers_:
    j = i
    while j + 1 < layers_ and not sig[i][0] and sig[j + 1] == sig[i]:
      j += 1
    if j > i:
      plan.append(("run", tuple(range(i, j + 1))))
    elif (i + 1 < layers_ and not sig[i][0] and not sig[i + 1][0]
          and sig[i + 1][3] == sig[i][3]):
      plan.append(("pair", (i, i + 1)))
      j = i + 1
    else:
      plan.append(("single", (i,)))
    i = j + 1
  return plan


class _ScannedCell(nn.Module):
  """One normal cell as an ``nn.scan`` step (see ``cell_plan``).

  ``pair``: ``(s1, p0) -> (out, out)`` with ``p0`` the cell's preprocessed first input.
  Otherwise: ``((s0, s1), None) -> ((s1, out), None)``.
  """
  op_set: OpSet
  channels: int
  nodes: int
  multiplier: int
  affine: bool
  train: bool
  scan_nodes: bool
  scan_inputs: bool
  pair: bool

  @nn.compact
  def __call__(self, carry, p0, weights):
    if self.pair:
      s1 = carry
    else:
      s0, s1 = carry
      p0 = layers.ReLUConvBN(self.channels, 1, affine=self.affine, name="pre0")(s0, self.train)
    p1 = layers.ReLUConvBN(self.channels, 1, affine=self.affine, name="pre1")(s1, self.train)
    nodes = cell_lib.SearchCell(
        self.op_set, self.channels, n_inputs=2, n_nodes=self.nodes, affine=self.affine,
        train=self.train, scan_nodes=self.scan_nodes, scan_inputs=self.scan_inputs,
        name="cell")([p0, p1], weights)
    out = jnp.concatenate(nodes[-self.multiplier:], axis=-1)
    return (out, out) if self.pair else ((s1, out), None)


class DartsSearchNet(nn.Module):
  """The DARTS supernet.

  Call as ``model.apply(variables, images, op_weights, train=...)`` with ``op_weights`` a dict
  ``{"normal": [E, K], "reduce": [E, K]}`` (a strategy's relaxation of alpha). ``model.init``
  creates the ``"arch"`` collection (alpha, ``1e-3 * N(0, 1)``) beside ``"params"`` and
  ``"batch_stats"``; without ``op_weights`` every op weighs ``1 / K``.

  ``scan_cells`` runs groups of equal-shape normal cells (``cell_plan``) as one ``nn.scan``
  with their weights stacked along a leading axis (submodule ``cells{i}_{j}``): same results and
  parameter count, fewer cells for XLA to compile.
  """
  num_classes: int = 10
  channels: int = 16
  layers: int = 8
  nodes: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  op_set: OpSet = DARTS
  affine: bool = False
  scan_nodes: bool = True  # see SearchCell
  scan_inputs: bool = False  # see SearchCell (normal cells only)
  scan_cells: bool = False

  def arch_shapes(self) -> Dict[str, Tuple[int, int]]:
    shape = (cell_lib.edge_count(2, self.nodes), len(self.op_set.ops))
    return {"normal": shape, "reduce": shape}

  @nn.compact
  def __call__(self, x, op_weights: Optional[Dict[str, jnp.ndarray]] = None, train: bool = True):
    if self.multiplier > self.nodes:
      raise ValueError(f"multiplier ({self.multiplier}) cannot exceed nodes ({self.nodes})")
    shapes = self.arch_shapes()
    if self.is_initializing():
      for name, shape in shapes.items():
        self.variable("arch", name, arch_init, self.make_rng("params"), shape)
    if op_weights is None:
      op_weights = {k: jnp.full(s, 1.0 / s[1]) for k, s in shapes.items()}

    c = self.channels
    s0 = s1 = Stem(self.stem_multiplier * c)(x, train)
    reductions = reduction_layers(self.layers)
    if self.scan_cells:
      plan = cell_plan(self.layers, self.stem_multiplier, self.multiplier)
    else:
      plan = [("single", (i,)) for i in range(self.layers)]
    reduction_prev = False
    for kind, cells in plan:
      i = cells[0]
      reduction = i in reductions
      if reduction:
        c *= 2
      if kind != "single":
        s0, s1 = self._scan(kind, cells, c, s0, s1, op_weights["normal"], reduction_prev, train)
        reduction_prev = False
        continue
      p0 = self._pre0(c, reduction_prev, f"cell{i}_pre0", s0, train)
      p1 = layers.ReLUConvBN(c, 1, affine=self.affine, name=f"cell{i}_pre1")(s1, train)
      nodes = cell_lib.SearchCell(
          self.op_set, c, n_inputs=2, n_nodes=self.nodes, reduction=reduction,
          affine=self.affine, train=train, scan_nodes=self.scan_nodes,
          scan_inputs=self.scan_inputs, name=f"cell{i}")(
              [p0, p1], op_weights["reduce" if reduction else "normal"])
      s0, s1 = s1, jnp.concatenate(nodes[-self.multiplier:], axis=-1)
      reduction_prev = reduction
    return Classifier(self.num_classes)(s1)

  def _pre0(self, c, reduction_prev, name, s0, train):
    if reduction_prev:
      return layers.FactorizedReduce(c, affine=self.affine, name=name)(s0, train)
    return layers.ReLUConvBN(c, 1, affine=self.affine, name=name)(s0, train)

  def _scan(self, kind, cells, c, s0, s1, weights, reduction_prev, train):
    """Normal cells ``cells`` as one ``nn.scan``; returns the last two cells' outputs."""
    name = f"cells{cells[0]}_{cells[-1]}"
    pair = kind == "pair"
    layer = nn.scan(_ScannedCell, variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True}, in_axes=(0, nn.broadcast) if pair
                    else (nn.broadcast, nn.broadcast), length=len(cells))
    layer = layer(self.op_set, c, self.nodes, self.multiplier, self.affine, train,
                  self.scan_nodes, self.scan_inputs, pair, name=name)
    if not pair:
      (s0, s1), _ = layer((s0, s1), None, weights)
      return s0, s1
    # Both cells' first inputs exist before the scan: s0 and s1 of the first cell.
    p0 = jnp.stack([self._pre0(c, reduction_prev, f"{name}_pre0_{cells[0]}", s0, train),
                    layers.ReLUConvBN(c, 1, affine=self.affine,
                                      name=f"{name}_pre0_{cells[1]}")(s1, train)])
    _, outs = layer(s1, p0, weights)
    return outs[0], outs[1]
