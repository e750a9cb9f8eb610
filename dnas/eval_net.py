"""Networks built from a genotype, for training from scratch (the "retrain" stage).

Three networks, each a Flax Linen module with one calling convention::

    logits, aux_logits = model.apply(variables, images, train=..., drop_path_prob=...,
                                     rngs={"dropout": key}, mutable=["batch_stats"])

``aux_logits`` is ``None`` unless the network has an auxiliary head and ``train`` is True.

- ``CifarNetwork``: DARTS' ``NetworkCIFAR`` (Liu et al., ICLR 2019, section 3.3): a 3x3 stem to
  ``3C`` channels, ``layers`` cells with reductions at 1/3 and 2/3 of the depth, an auxiliary
  head after the second reduction, global pooling and a linear classifier.
- ``ImageNetNetwork``: DARTS' ``NetworkImageNet``: two stride-2 stems (input/8), then as above.
- ``NB201Network``: NAS-Bench-201's ``TinyNetwork`` (Dong & Yang, ICLR 2020, section 3): three
  stages of cells joined by ResNet basic blocks.

Ops come from the op registry (``dnas.ops.registry``), so a genotype may name a user's own op.
Every BatchNorm is affine, and parameter counts equal the reference PyTorch code's
(``sum(p.numel() for p in model.parameters())``): DARTS_V2 at C=36, 20 cells, 10 classes has
3,349,342 weights (3,825,768 with the auxiliary head).

References:
  github.com/quark0/darts cnn/model.py (NetworkCIFAR, NetworkImageNet, AuxiliaryHead*, Cell),
  cnn/utils.py (drop_path); github.com/D-X-Y/NAS-Bench-201 (models/cell_infers/tiny_network.py,
  cells.py InferCell, cell_operations.py ResNetBasicblock).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnas import genotypes as genotypes_lib
from dnas.genotypes import DartsGenotype, Edge, NB201Genotype
from dnas.ops import layers, registry
from dnas.spaces.common import Classifier, Stem

Array = jax.Array
DropPathProb = Union[float, Array]
Output = Tuple[Array, Optional[Array]]


def drop_path(key: jax.Array, x: Array, rate: DropPathProb) -> Array:
  """Zeroes whole samples with probability ``rate`` and rescales the rest by ``1 / (1 - rate)``.

  ``y_b = x_b * m_b / (1 - p)`` with ``m_b ~ Bernoulli(1 - p)`` drawn once per sample ``b``
  (DARTS' ``utils.drop_path``, after FractalNet's drop-path, Larsson et al. 2017). ``rate``
  may be a traced scalar in ``[0, 1)``; at ``rate = 0`` the output equals ``x``.

  Args:
    key: PRNG key.
    x: ``[B, ...]`` activations.
    rate: drop probability ``p``.

  Returns:
    An array of ``x``'s shape and dtype.
  """
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


def _drop_path_active(train: bool, rate: DropPathProb) -> bool:
  # A Python 0 skips drop-path statically (no "dropout" rng needed); a traced rate always
  # applies it, which is exact at rate 0 too, so one compiled step serves the whole schedule.
  if not train:
    return False
  return not (isinstance(rate, (int, float)) and rate == 0)


def _linear(features: int, fan_in: int, name: str) -> nn.Dense:
  """``nn.Linear``'s default init: weight and bias uniform in ``+-1/sqrt(fan_in)``."""
  bound = 1.0 / math.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(features, kernel_init=layers.torch_default_init, bias_init=bias_init,
                  name=name)


class _EdgeOp(nn.Module):
  """One genotype edge: the registered op, then drop-path unless the op is an identity."""
  op: str
  channels: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool, drop_path_prob: DropPathProb):
    op = registry.build(self.op, self.channels, self.stride, affine=True)
    y = op(x, train)
    # DARTS skips drop-path on Identity so that skip connections always carry the signal.
    if _drop_path_active(train, drop_path_prob) and not isinstance(op, layers.Identity):
      y = drop_path(self.make_rng("dropout"), y, drop_path_prob)
    return y


class DartsCell(nn.Module):
  """A discrete DARTS cell (``model.Cell`` in the reference code).

  Preprocesses the two inputs to ``channels`` channels (``s0`` with a factorized reduce if the
  previous cell reduced, otherwise a 1x1 ReLU-Conv-BN; ``s1`` with a 1x1 ReLU-Conv-BN), then
  computes node ``i`` as ``op_a(h_a) + op_b(h_b)`` from its two genotype edges (stride 2 on
  edges from the inputs in a reduction cell) and returns the concatenation of ``concat``.

  Attributes:
    edges: two ``(op, source)`` pairs per node; sources 0 and 1 are the inputs.
    concat: the states concatenated into the output.
    channels: channels of every state inside the cell.
    reduction: halve H and W.
    reduction_prev: ``s0`` has twice ``s1``'s resolution.
  """
  edges: Tuple[Edge, ...]
  concat: Tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool

  @nn.compact
  def __call__(self, s0, s1, train: bool, drop_path_prob: DropPathProb = 0.0):
    c = self.channels
    if self.reduction_prev:
      s0 = layers.FactorizedReduce(c, affine=True, name="preprocess0")(s0, train)
    else:
      s0 = layers.ReLUConvBN(c, 1, affine=True, name="preprocess0")(s0, train)
    s1 = layers.ReLUConvBN(c, 1, affine=True, name="preprocess1")(s1, train)
    states = [s0, s1]
    for node in range(len(self.edges) // 2):
      total = None
      for e in (2 * node, 2 * node + 1):
        op, src = self.edges[e]
        stride = 2 if self.reduction and src < 2 else 1
        y = _EdgeOp(op, c, stride, name=f"op{e}")(states[src], train, drop_path_prob)
        total = y if total is None else total + y
      states.append(total)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nn.Module):
  """DARTS' auxiliary classifier (``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet``).

  ReLU, 5x5 average pool (stride 3 for CIFAR's 8x8 input, 2 for ImageNet's 7x7; no padding),
  1x1 conv to 128, BN, ReLU, 2x2 conv to 768, [BN,] ReLU, linear. The ImageNet head has no BN
  after the 2x2 conv: the reference code dropped it by a typo and kept it out for consistency
  with the paper's experiments, and the published parameter counts include that omission.
  """
  num_classes: int
  pool_stride: int = 3
  second_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(x)
    x = nn.avg_pool(x, (5, 5), strides=(self.pool_stride, self.pool_stride))
    x = layers.Conv(128, 1, name="conv0")(x)
    x = nn.relu(layers.batch_norm(train, affine=True, name="bn0")(x))
    x = layers.Conv(768, 2, name="conv1")(x)
    if self.second_bn:
      x = layers.batch_norm(train, affine=True, name="bn1")(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1)
    return _linear(self.num_classes, x.shape[-1], name="classifier")(x)


def _check_darts(genotype) -> DartsGenotype:
  if not isinstance(genotype, DartsGenotype):
    raise TypeError(f"expected a DartsGenotype, got {type(genotype).__name__}")
  return genotypes_lib.validate(genotype)


class _DartsCells(nn.Module):
  """The cell stack shared by the CIFAR and ImageNet networks; returns (s1, aux_input)."""
  genotype: DartsGenotype
  channels: int
  layers: int
  reduction_prev: bool

  @nn.compact
  def __call__(self, s0, s1, train: bool, drop_path_prob: DropPathProb):
    g = self.genotype
    reductions = (self.layers // 3, 2 * self.layers // 3)
    c = self.channels
    reduction_prev = self.reduction_prev
    aux_input = None
    for i in range(self.layers):
      reduction = i in reductions
      if reduction:
        c *= 2
      edges, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
      cell = DartsCell(tuple(edges), tuple(concat), c, reduction, reduction_prev,
                       name=f"cell{i}")
      s0, s1 = s1, cell(s0, s1, train, drop_path_prob)
      reduction_prev = reduction
      if i == 2 * self.layers // 3:
        aux_input = s1
    return s1, aux_input


class CifarNetwork(nn.Module):
  """DARTS' evaluation network for CIFAR (``NetworkCIFAR``).

  Attributes:
    genotype: a ``DartsGenotype``.
    num_classes: classifier outputs.
    channels: ``C``, the first cells' channel count (36 in the paper's CIFAR-10 network).
    layers: number of cells (20); cells ``layers // 3`` and ``2 * layers // 3`` reduce.
    auxiliary: build the auxiliary head after cell ``2 * layers // 3`` (input must give it
      8x8 features there, i.e. 32x32 images); it runs only when ``train`` is True.

  Example::

    model = CifarNetwork(published.get("DARTS_V2"))
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=True)
    (logits, aux), updates = model.apply(variables, images, train=True, drop_path_prob=0.2,
                                         rngs={"dropout": key}, mutable=["batch_stats"])
  """
  genotype: DartsGenotype
  num_classes: int = 10
  channels: int = 36
  layers: int = 20
  auxiliary: bool = True
  stem_multiplier: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False, drop_path_prob: DropPathProb = 0.0) -> Output:
    """Returns ``(logits, aux_logits)``; ``aux_logits`` is None outside training.

    Args:
      x: ``[B, H, W, 3]`` images.
      train: BatchNorm uses batch statistics; drop-path and the auxiliary head are active.
      drop_path_prob: per-op drop-path probability (a float or a traced scalar); needs a
        ``"dropout"`` rng when training with a traced or nonzero value.
    """
    g = _check_darts(self.genotype)
    s = Stem(self.stem_multiplier * self.channels, name="stem")(x, train)
    s1, aux_input = _DartsCells(g, self.channels, self.layers, False, name="cells")(
        s, s, train, drop_path_prob)
    aux = None
    if self.auxiliary and train:
      aux = AuxiliaryHead(self.num_classes, pool_stride=3, second_bn=True,
                          name="auxiliary_head")(aux_input, train)
    return Classifier(self.num_classes, name="classifier")(s1), aux


class ImageNetNetwork(nn.Module):
  """DARTS' evaluation network for ImageNet (``NetworkImageNet``).

  ``stem0``: 3x3 conv stride 2 to ``C/2``, BN, ReLU, 3x3 conv stride 2 to ``C``, BN; ``stem1``:
  ReLU, 3x3 conv stride 2, BN. The first cell takes ``stem0``'s output through a factorized
  reduce. The reference code's final ``AvgPool2d(7)`` is global pooling at 224x224 input; global
  average pooling is used here so other input sizes work too.

  Attributes:
    genotype: a ``DartsGenotype``.
    num_classes: classifier outputs (1000).
    channels: ``C`` (48 in the paper's mobile setting).
    layers: number of cells (14).
    auxiliary: auxiliary head after cell ``2 * layers // 3`` (without its second BN, as the
      reference code); runs only when ``train`` is True.
  """
  genotype: DartsGenotype
  num_classes: int = 1000
  channels: int = 48
  layers: int = 14
  auxiliary: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False, drop_path_prob: DropPathProb = 0.0) -> Output:
    """Returns ``(logits, aux_logits)``; arguments as ``CifarNetwork.__call__``."""
    g = _check_darts(self.genotype)
    c = self.channels
    s0 = layers.Conv(c // 2, 3, stride=2, padding=1, name="stem0_conv0")(x)
    s0 = nn.relu(layers.batch_norm(train, affine=True, name="stem0_bn0")(s0))
    s0 = layers.Conv(c, 3, stride=2, padding=1, name="stem0_conv1")(s0)
    s0 = layers.batch_norm(train, affine=True, name="stem0_bn1")(s0)
    s1 = layers.Conv(c, 3, stride=2, padding=1, name="stem1_conv")(nn.relu(s0))
    s1 = layers.batch_norm(train, affine=True, name="stem1_bn")(s1)
    s1, aux_input = _DartsCells(g, c, self.layers, True, name="cells")(
        s0, s1, train, drop_path_prob)
    aux = None
    if self.auxiliary and train:
      aux = AuxiliaryHead(self.num_classes, pool_stride=2, second_bn=False,
                          name="auxiliary_head")(aux_input, train)
    return Classifier(self.num_classes, name="classifier")(s1), aux


class ResNetBasicBlock(nn.Module):
  """NAS-Bench-201's ``ResNetBasicblock`` at stride 2 (between stages).

  ``conv_b(conv_a(x)) + shortcut(x)`` with ``conv_a`` a 3x3 ReLU-Conv-BN at stride 2, ``conv_b``
  a 3x3 ReLU-Conv-BN, and the shortcut a 2x2 average pool (stride 2) then a bias-free 1x1 conv.
  """
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    y = layers.ReLUConvBN(self.features, 3, 2, 1, affine=True, name="conv_a")(x, train)
    y = layers.ReLUConvBN(self.features, 3, 1, 1, affine=True, name="conv_b")(y, train)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = layers.Conv(self.features, 1, name="downsample")(x)
    return x + y


class NB201Cell(nn.Module):
  """NAS-Bench-201's ``InferCell``: node ``i`` sums ``op(node_src)`` over its edges."""
  nodes: Tuple[Tuple[Edge, ...], ...]
  channels: int

  @nn.compact
  def __call__(self, x, train: bool):
    states = [x]
    for i, node in enumerate(self.nodes):
      total = None
      for j, (op, src) in enumerate(node):
        y = _EdgeOp(op, self.channels, 1, name=f"node{i + 1}_edge{j}")(states[src], train, 0.0)
        total = y if total is None else total + y
      states.append(total)
    return states[-1]


class NB201Network(nn.Module):
  """NAS-Bench-201's evaluation network (``TinyNetwork``).

  A 3x3 stem to ``C`` and BN; three stages of ``cells_per_stage`` cells at ``C``, ``2C``,
  ``4C`` channels with a stride-2 ``ResNetBasicBlock`` before the second and third; a final BN
  and ReLU, global average pooling and a linear classifier.

  Attributes:
    genotype: an ``NB201Genotype`` or its arch string (``"|nor_conv_3x3~0|+|...|"``).
    num_classes: classifier outputs.
    channels: ``C`` (16 in NAS-Bench-201).
    cells_per_stage: ``N`` (5 in NAS-Bench-201).

  The call signature matches the DARTS networks; NAS-Bench-201 trains without drop-path or an
  auxiliary head, so ``drop_path_prob`` is ignored and ``aux_logits`` is always None.
  """
  genotype: Union[NB201Genotype, str]
  num_classes: int = 10
  channels: int = 16
  cells_per_stage: int = 5

  @nn.compact
  def __call__(self, x, train: bool = False, drop_path_prob: DropPathProb = 0.0) -> Output:
    del drop_path_prob
    g = self.genotype
    if isinstance(g, str):
      g = NB201Genotype.from_arch(g)
    elif isinstance(g, NB201Genotype):
      genotypes_lib.validate(g)
    else:
      raise TypeError(f"expected an NB201Genotype or arch string, got {type(g).__name__}")
    c = self.channels
    x = Stem(c, name="stem")(x, train)
    for stage in range(3):
      if stage > 0:
        c *= 2
        x = ResNetBasicBlock(c, name=f"reduce{stage}")(x, train)
      for i in range(self.cells_per_stage):
        x = NB201Cell(g.nodes, c, name=f"stage{stage}_cell{i}")(x, train)
    x = nn.relu(layers.batch_norm(train, affine=True, name="lastact")(x))
    return Classifier(self.num_classes, name="classifier")(x), None


def param_count(model: nn.Module, input_shape: Sequence[int], exclude: Sequence[str] = ()) -> int:
  """Counts a network's ``"params"`` (no running statistics) without computing anything.

  Equals PyTorch's ``sum(p.numel() for p in model.parameters())`` for these networks.

  Args:
    model: a network of this module.
    input_shape: ``[B, H, W, C]`` of the images it is built for.
    exclude: top-level parameter names to leave out (e.g. ``("auxiliary_head",)``, as DARTS'
      ``utils.count_parameters_in_MB``).

  Returns:
    The number of scalar weights.
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=True))
  params = {k: v for k, v in shapes["params"].items() if k not in exclude}
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
