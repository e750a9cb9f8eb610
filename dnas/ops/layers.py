"""Building blocks shared by the op sets: convolutions, BatchNorm, pools, factorized reduce.

Layout is NHWC. Padding is explicit and symmetric, as in the reference PyTorch code, so that
stride-2 ops produce exactly ``ceil(H / 2)`` rows and a genotype trained here matches the
published networks shape for shape.
"""

from __future__ import annotations

import os
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)) is a uniform variance
# scaling with scale 1/3 over fan_in; using it keeps early training comparable to the papers.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(train: bool, affine: bool, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5)."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      use_scale=affine, use_bias=affine, name=name)


class Conv(nn.Module):
  """Bias-free 2D convolution with explicit symmetric padding (a dense or depthwise kernel)."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  depthwise: bool = False

  @nn.compact
  def __call__(self, x):
    in_ch = x.shape[-1]
    if self.depthwise and self.features != in_ch:
      raise ValueError(f"depthwise conv keeps channels: {in_ch} in, {self.features} out")
    if self.kernel == 1 and not self.depthwise:
      # A 1x1 convolution is a matmul over channels: cheaper to compile and to batch over edges.
      if self.stride > 1:
        x = x[:, ::self.stride, ::self.stride, :]
      w = self.param("kernel", torch_default_init, (1, 1, in_ch, self.features))
      return jnp.einsum("bhwc,cd->bhwd", x, w[0, 0].astype(x.dtype))
    groups = in_ch if self.depthwise else 1
    w = self.param("kernel", torch_default_init,
                   (self.kernel, self.kernel, in_ch // groups, self.features))
    p = self.padding
    if self.depthwise and _depthwise_impl() == "shift":
      return depthwise_conv_shift(x, w.astype(x.dtype), self.stride, p, self.dilation)
    if not self.depthwise and _dense_impl() == "im2col":
      return dense_conv_im2col(x, w.astype(x.dtype), self.stride, p, self.dilation)
    return jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(self.stride, self.stride),
        padding=((p, p), (p, p)), rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


DEPTHWISE_IMPLS = ("auto", "conv", "shift")


def _depthwise_impl() -> str:
  """How depthwise convolutions are computed: ``$DNAS_DEPTHWISE`` (auto, conv or shift).

  XLA's CPU backend runs grouped convolutions (and their filter gradients) through a slow
  generic path; a sum of shifted, scaled copies is several times faster there, so ``auto``
  picks ``shift`` on the CPU. Accelerators keep the native depthwise convolution. Read when a
  model is traced.
  """
  return _impl_from_env("DNAS_DEPTHWISE", DEPTHWISE_IMPLS, on_cpu="shift")


def _impl_from_env(var: str, valid: Tuple[str, ...], on_cpu: str) -> str:
  """``$var`` (default ``auto``) checked against ``valid``; ``auto`` is ``on_cpu`` on the CPU
  and ``conv`` (XLA's native convolution) elsewhere."""
  impl = os.environ.get(var, "auto")
  if impl not in valid:
    raise ValueError(f"{var}={impl!r} is not one of {list(valid)}")
  if impl == "auto":
    return on_cpu if jax.default_backend() == "cpu" else "conv"
  return impl


DENSE_IMPLS = ("auto", "conv", "im2col")


def _dense_impl() -> str:
  """How dense ``k x k`` convolutions (``k > 1``) are computed: ``$DNAS_DENSE_CONV``.

  ``im2col`` gathers the ``k * k`` shifted views into one ``[B, H, W, k * k * C]`` array and
  multiplies it by the reshaped kernel. Its gradients are matrix products too, whereas XLA's
  CPU backend computes a convolution's kernel gradient as a convolution with a window the size
  of the image (measured 1.8 GFLOP/s on the NAS-Bench-201 supernet). ``auto`` picks ``im2col``
  on the CPU and the native convolution on accelerators. Read when a model is traced.
  """
  return _impl_from_env("DNAS_DENSE_CONV", DENSE_IMPLS, on_cpu="im2col")


def _shifted_views(x, k: int, stride: int, padding: int, dilation: int):
  """The ``k * k`` strided views of the zero-padded ``x`` a ``k x k`` convolution reads."""
  h, wd = x.shape[1], x.shape[2]
  out_h = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  out_w = (wd + 2 * padding - dilation * (k - 1) - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return [jax.lax.slice(
      xp, (0, i * dilation, j * dilation, 0),
      (xp.shape[0], i * dilation + (out_h - 1) * stride + 1,
       j * dilation + (out_w - 1) * stride + 1, xp.shape[3]),
      (1, stride, stride, 1)) for i in range(k) for j in range(k)]


def dense_conv_im2col(x, w, stride: int, padding: int, dilation: int):
  """Dense convolution as one matrix product over gathered patches (im2col).

  Equal to ``lax.conv_general_dilated`` with kernel ``w`` of shape ``[k, k, C, D]`` (HWIO),
  symmetric ``padding``, ``stride`` and kernel ``dilation``.
  """
  k, _, c, d = w.shape
  patches = jnp.concatenate(_shifted_views(x, k, stride, padding, dilation), axis=-1)
  return jnp.einsum("bhwk,kd->bhwd", patches, w.reshape(k * k * c, d))


def depthwise_conv_shift(x, w, stride: int, padding: int, dilation: int):
  """Depthwise convolution as a sum of ``k * k`` shifted, channel-scaled views of ``x``.

  Equal to ``lax.conv_general_dilated(..., feature_group_count=C)`` with kernel ``w`` of shape
  ``[k, k, 1, C]``, symmetric ``padding``, ``stride`` and kernel ``dilation``.
  """
  k = w.shape[0]
  out = None
  for n, view in enumerate(_shifted_views(x, k, stride, padding, dilation)):
    term = view * w[n // k, n % k, 0]
    out = term if out is None else out + term
  return out


def max_pool_3x3(x, stride: int):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))


def avg_pool_3x3(x, stride: int):
  """3x3 average pool, padding 1, that does not count padding (``count_include_pad=False``).

  The window sums come from ``reduce_window``; the divisor (how many real pixels each window
  covers) depends only on the shape, so it is computed here with numpy. Deriving it from a
  pooled tensor of ones instead makes XLA constant-fold a ``reduce_window`` over an array the
  size of the activations, which took minutes of compile time per supernet.
  """
  sums = nn.pool(x, 0.0, jax.lax.add, (3, 3), (stride, stride), ((1, 1), (1, 1)))
  counts = np.outer(_window_counts(x.shape[1], stride), _window_counts(x.shape[2], stride))
  return sums / counts[None, :, :, None].astype(x.dtype)


def _window_counts(n: int, stride: int) -> np.ndarray:
  """Pixels of ``[0, n)`` inside each size-3, padding-1 window along one axis."""
  starts = np.arange(0, n, stride) - 1
  return np.minimum(starts + 3, n) - np.maximum(starts, 0)


class ReLUConvBN(nn.Module):
  """ReLU -> Conv -> BN."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(x)
    x = Conv(self.features, self.kernel, self.stride, self.padding, self.dilation)(x)
    return batch_norm(train, self.affine)(x)


class FactorizedReduce(nn.Module):
  """ReLU, two 1x1 stride-2 convs on pixel grids offset by one, concatenated, then BN."""
  features: int
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
    if x.shape[1] % 2 or x.shape[2] % 2:
      raise ValueError(f"FactorizedReduce needs even H and W, got {x.shape[1:3]}")
    x = nn.relu(x)
    a = Conv(self.features // 2, 1, stride=2)(x)
    b = Conv(self.features // 2, 1, stride=2)(x[:, 1:, 1:, :])
    return batch_norm(train, self.affine)(jnp.concatenate([a, b], axis=-1))


class DilConv(nn.Module):
  """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BN."""
  features: int
  kernel: int
  stride: int
  padding: int
  dilation: int
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    x = nn.relu(x)
    x = Conv(c, self.kernel, self.stride, self.padding, self.dilation, depthwise=True)(x)
    x = Conv(self.features, 1)(x)
    return batch_norm(train, self.affine)(x)


class SepConv(nn.Module):
  """Two DilConv blocks without dilation: the first strided, the second at stride 1."""
  features: int
  kernel: int
  stride: int
  padding: int
  affine: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    x = DilConv(c, self.kernel, self.stride, self.padding, 1, self.affine)(x, train)
    return DilConv(self.features, self.kernel, 1, self.padding, 1, self.affine)(x, train)


class Zero(nn.Module):
  """The ``none`` op: zeros of the output's shape."""
  features: int
  stride: int = 1

  def __call__(self, x, train: bool):
    del train
    shape: Tuple[int, ...] = (x.shape[0], -(-x.shape[1] // self.stride),
                              -(-x.shape[2] // self.stride), self.features)
    return jnp.zeros(shape, x.dtype)


class Identity(nn.Module):

  def __call__(self, x, train: bool):
    del train
    return x


class Pool(nn.Module):
  """3x3 max or average pool (padding 1)."""
  kind: str
  stride: int = 1

  def __call__(self, x, train: bool):
    del train
    return (max_pool_3x3 if self.kind == "max" else avg_pool_3x3)(x, self.stride)
