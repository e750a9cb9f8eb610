"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020, section 3).

A stem (3x3 conv to C, BN), three stages of ``cells_per_stage`` searched cells with ResNet basic
blocks (stride 2, channels doubled) between stages, a final BN-ReLU, global pooling and a linear
classifier. A cell has one input (node 0) and three nodes; node ``i`` sums a mixed edge from every
earlier node, and the cell outputs the last node. All cells share one alpha of 6 edges x 5 ops.
Edges are ordered ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2`` as in NAS-Bench-201's arch strings.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from dnas.ops import layers
from dnas.ops.sets import NB201, OpSet
from dnas.spaces import cell as cell_lib
from dnas.spaces.common import cell_arch_init, Classifier, Stem


class ResNetBasicBlock(nn.Module):
  """NAS-Bench-201's reduction block: two ReLU-Conv-BN 3x3 and an avg-pool + 1x1 shortcut."""
  features: int
  stride: int = 2

  @nn.compact
  def __call__(self, x, train: bool):
    y = layers.ReLUConvBN(self.features, 3, self.stride, 1, name="conv_a")(x, train)
    y = layers.ReLUConvBN(self.features, 3, 1, 1, name="conv_b")(y, train)
    if self.stride == 2:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = layers.Conv(self.features, 1, name="downsample")(x)
    elif x.shape[-1] != self.features:
      x = layers.ReLUConvBN(self.features, 1, name="downsample")(x, train)
    return x + y


class _CellLayer(nn.Module):
  """One searched cell as a scan step: ``(x, weights) -> (last node, None)``."""
  op_set: OpSet
  channels: int
  nodes: int
  affine: bool
  train: bool
  scan_nodes: bool
  scan_inputs: bool
  remat: bool
  pack: bool
  partial_channels: int = 1

  @nn.compact
  def __call__(self, x, weights):
    nodes = cell_lib.SearchCell(self.op_set, self.channels, n_inputs=1, n_nodes=self.nodes,
                                affine=self.affine, train=self.train,
                                scan_nodes=self.scan_nodes, scan_inputs=self.scan_inputs,
                                remat=self.remat, pack=self.pack,
                                partial_channels=self.partial_channels, name="cell")([x], weights)
    return nodes[-1], None


class NB201SearchNet(nn.Module):
  """The NAS-Bench-201 supernet; call with ``op_weights={"cell": [6, 5]}``.

  The cells of a stage have equal shapes and share alpha, so by default (``scan_cells``) each
  stage is one ``nn.scan`` over its cells with weights stacked along a leading cell axis: XLA
  compiles one cell per stage instead of ``cells_per_stage``.

  PC-DARTS (Xu et al., ICLR 2020): ``partial_channels = P > 1`` makes every edge a partial
  channel connection (``dnas.spaces.cell``); ``edge_norm`` gives each cell type edge weights
  beta beside alpha (``common.cell_arch_init``), which ``search.strategy="pcdarts"`` mixes in.
  """
  num_classes: int = 10
  channels: int = 16
  cells_per_stage: int = 5
  nodes: int = 3
  op_set: OpSet = NB201
  affine: bool = False
  scan_nodes: bool = True  # see SearchCell
  scan_inputs: bool = False  # see SearchCell
  scan_cells: bool = True
  remat: bool = True  # see SearchCell
  pack: bool = True  # see SearchCell: the edges between nodes run 3 x 1 instead of 2 x 2
  partial_channels: int = 1  # see SearchCell
  edge_norm: bool = False

  def arch_shapes(self) -> Dict[str, Tuple[int, int]]:
    return {"cell": (cell_lib.edge_count(1, self.nodes), len(self.op_set.ops))}

  def genotype(self, op_weights):
    """NAS-Bench-201's rule (``dnas.discretize.nb201_genotype``): the argmax op on every edge."""
    from dnas import discretize  # pylint: disable=g-import-not-at-top
    return discretize.nb201_genotype(op_weights, self.op_set, self.nodes)

  @nn.compact
  def __call__(self, x, op_weights: Optional[Dict[str, jnp.ndarray]] = None, train: bool = True):
    shapes = self.arch_shapes()
    if self.is_initializing():
      per_node = tuple(1 + j for j in range(self.nodes)) if self.edge_norm else None
      for name, shape in shapes.items():
        self.variable("arch", name, cell_arch_init, self.make_rng("params"), shape, per_node)
    if op_weights is None:
      op_weights = {k: jnp.full(s, 1.0 / s[1]) for k, s in shapes.items()}
    c = self.channels
    x = Stem(c)(x, train)
    for stage in range(3):
      if stage > 0:
        c *= 2
        x = ResNetBasicBlock(c, 2, name=f"reduce{stage}")(x, train)
      if self.scan_cells:
        cells = nn.scan(_CellLayer, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, in_axes=nn.broadcast,
                        length=self.cells_per_stage)
        x, _ = cells(self.op_set, c, self.nodes, self.affine, train, self.scan_nodes,
                     self.scan_inputs, self.remat, self.pack, self.partial_channels,
                     name=f"stage{stage}_cells")(
                         x, op_weights["cell"])
        continue
      for i in range(self.cells_per_stage):
        nodes = cell_lib.SearchCell(self.op_set, c, n_inputs=1, n_nodes=self.nodes,
                                    affine=self.affine, train=train,
                                    scan_nodes=self.scan_nodes,
                                    scan_inputs=self.scan_inputs, remat=self.remat,
                                    pack=self.pack, partial_channels=self.partial_channels,
                                    name=f"stage{stage}_cell{i}")([x], op_weights["cell"])
        x = nodes[-1]
    x = nn.relu(layers.batch_norm(train, affine=True, name="lastact")(x))
    return Classifier(self.num_classes)(x)
