"""The NAS-Bench-201 operations (Dong & Yang, "NAS-Bench-201", ICLR 2020).

``none``, ``skip_connect`` and ``avg_pool_3x3`` are shared with the DARTS set (same semantics);
this module adds the ReLU-Conv-BN convolutions.
"""

from dnas.ops import darts_ops  # noqa: F401  registers none, skip_connect, avg_pool_3x3
from dnas.ops import layers
from dnas.ops.registry import register


@register("nor_conv_1x1")
def nor_conv_1x1(channels, stride, affine=True):
  return layers.ReLUConvBN(channels, 1, stride, 0, affine=affine)


@register("nor_conv_3x3")
def nor_conv_3x3(channels, stride, affine=True):
  return layers.ReLUConvBN(channels, 3, stride, 1, affine=affine)
