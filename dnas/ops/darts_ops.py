"""The DARTS operations (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019).

Semantics follow the paper's reference implementation: ReLU-Conv-BN order, separable convs
applied twice, dilated convs with dilation 2, average pooling that does not count padding, and
``skip_connect`` as identity at stride 1 or a factorized reduce at stride 2. During search the
BatchNorms are affine-free (``affine=False``).
"""

from dnas.ops import layers
from dnas.ops.registry import register


@register("none")
def none(channels, stride):
  return layers.Zero(channels, stride)


@register("max_pool_3x3")
def max_pool_3x3(channels, stride):
  del channels
  return layers.Pool("max", stride)


@register("avg_pool_3x3")
def avg_pool_3x3(channels, stride):
  del channels
  return layers.Pool("avg", stride)


@register("skip_connect")
def skip_connect(channels, stride, affine=True):
  if stride == 1:
    return layers.Identity()
  return layers.FactorizedReduce(channels, affine=affine)


@register("sep_conv_3x3", depthwise=True)
def sep_conv_3x3(channels, stride, affine=True):
  return layers.SepConv(channels, 3, stride, 1, affine=affine)


@register("sep_conv_5x5", depthwise=True)
def sep_conv_5x5(channels, stride, affine=True):
  return layers.SepConv(channels, 5, stride, 2, affine=affine)


@register("dil_conv_3x3", depthwise=True)
def dil_conv_3x3(channels, stride, affine=True):
  return layers.DilConv(channels, 3, stride, 2, 2, affine=affine)


@register("dil_conv_5x5", depthwise=True)
def dil_conv_5x5(channels, stride, affine=True):
  return layers.DilConv(channels, 5, stride, 4, 2, affine=affine)
