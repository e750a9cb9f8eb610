"""Pieces shared by the search spaces: stems, the classifier, alpha's initialisation."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnas.ops import layers


def arch_init(key, shape, scale: float = 1e-3):
  """DARTS' alpha initialisation: ``1e-3 * N(0, 1)``."""
  return scale * jax.random.normal(key, shape, jnp.float32)


class Classifier(nn.Module):
  """Global average pool and a linear layer (PyTorch's default init)."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x, axis=(1, 2))
    bound = 1.0 / math.sqrt(x.shape[-1])
    return nn.Dense(self.num_classes, kernel_init=layers.torch_default_init,
                    bias_init=nn.initializers.uniform_range(-bound, bound)
                    if hasattr(nn.initializers, "uniform_range") else _uniform(bound))(x)


def _uniform(bound):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Stem(nn.Module):
  """3x3 convolution and (affine) BatchNorm."""
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.Conv(self.features, 3, padding=1)(x)
    return layers.batch_norm(train, affine=True)(x)
