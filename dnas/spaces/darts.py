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

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from dnas.ops import layers
from dnas.ops.sets import DARTS, OpSet
from dnas.spaces import cell as cell_lib
from dnas.spaces.common import cell_arch_init, Classifier, Stem


def reduction_layers(layers_: int) -> Tuple[int, ...]:
  """Cell indices that reduce: 1/3 and 2/3 of the depth."""
  return (layers_ // 3, 2 * layers_ // 3)


class DartsSearchNet(nn.Module):
  """The DARTS supernet.

  Call as ``model.apply(variables, images, op_weights, train=...)`` with ``op_weights`` a dict
  ``{"normal": [E, K], "reduce": [E, K]}`` (a strategy's relaxation of alpha). ``model.init``
  creates the ``"arch"`` collection (alpha, ``1e-3 * N(0, 1)``) beside ``"params"`` and
  ``"batch_stats"``; without ``op_weights`` every op weighs ``1 / K``.

  PC-DARTS (Xu et al., ICLR 2020): ``partial_channels = P > 1`` makes every edge a partial
  channel connection (``dnas.spaces.cell``; the reference's ``P = 4``); ``edge_norm`` gives each
  cell type edge weights beta beside alpha (``common.cell_arch_init``), which
  ``search.strategy="pcdarts"`` mixes in.
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
  # See SearchCell. The defaults compile fastest and step fastest on a CPU (benchmarks/RESULTS.md,
  # "Packing the node scans"): a normal cell is one scan of 7 x 2 edges.
  scan_inputs: bool = True  # normal cells only: reductions' input edges have stride 2
  remat: bool = True
  pack: bool = True
  partial_channels: int = 1  # see SearchCell
  edge_norm: bool = False

  def arch_shapes(self) -> Dict[str, Tuple[int, int]]:
    shape = (cell_lib.edge_count(2, self.nodes), len(self.op_set.ops))
    return {"normal": shape, "reduce": shape}

  def genotype(self, op_weights):
    """DARTS' rule (``dnas.discretize.darts_genotype``): two strongest edges per node."""
    from dnas import discretize  # pylint: disable=g-import-not-at-top
    return discretize.darts_genotype(op_weights, self.op_set, self.nodes, self.multiplier)

  @nn.compact
  def __call__(self, x, op_weights: Optional[Dict[str, jnp.ndarray]] = None, train: bool = True):
    if self.multiplier > self.nodes:
      raise ValueError(f"multiplier ({self.multiplier}) cannot exceed nodes ({self.nodes})")
    shapes = self.arch_shapes()
    if self.is_initializing():
      per_node = tuple(2 + j for j in range(self.nodes)) if self.edge_norm else None
      for name, shape in shapes.items():
        self.variable("arch", name, cell_arch_init, self.make_rng("params"), shape, per_node)
    if op_weights is None:
      op_weights = {k: jnp.full(s, 1.0 / s[1]) for k, s in shapes.items()}

    c = self.channels
    s0 = s1 = Stem(self.stem_multiplier * c)(x, train)
    reductions = reduction_layers(self.layers)
    reduction_prev = False
    for i in range(self.layers):
      reduction = i in reductions
      if reduction:
        c *= 2
      if reduction_prev:
        p0 = layers.FactorizedReduce(c, affine=self.affine, name=f"cell{i}_pre0")(s0, train)
      else:
        p0 = layers.ReLUConvBN(c, 1, affine=self.affine, name=f"cell{i}_pre0")(s0, train)
      p1 = layers.ReLUConvBN(c, 1, affine=self.affine, name=f"cell{i}_pre1")(s1, train)
      nodes = cell_lib.SearchCell(
          self.op_set, c, n_inputs=2, n_nodes=self.nodes, reduction=reduction,
          affine=self.affine, train=train, scan_nodes=self.scan_nodes,
          scan_inputs=self.scan_inputs, remat=self.remat, pack=self.pack,
          partial_channels=self.partial_channels, name=f"cell{i}")(
              [p0, p1], op_weights["reduce" if reduction else "normal"])
      s0, s1 = s1, jnp.concatenate(nodes[-self.multiplier:], axis=-1)
      reduction_prev = reduction
    return Classifier(self.num_classes)(s1)
