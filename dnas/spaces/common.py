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


def cell_arch_init(key, shape, edges_per_node=None):
  """A cell type's architecture parameters: alpha ``[E, K]`` (``arch_init``), or with
  ``edges_per_node`` ``{"alpha": [E, K], "beta": (b_0, b_1, ...)}``.

  ``b_j`` holds PC-DARTS' edge weights of node ``j``'s ``edges_per_node[j]`` incoming edges
  (``n_inputs + j`` in a ``dnas.spaces.cell.SearchCell``), in alpha's edge order, the edges of
  one softmax (Xu et al., ICLR 2020, section 3.3). Both are ``1e-3 * N(0, 1)``, as the
  reference's ``_initialize_alphas`` (yuhuixu1993/PC-DARTS, ``model_search.py``).
  """
  if edges_per_node is None:
    return arch_init(key, shape)
  if sum(edges_per_node) != shape[0]:
    raise ValueError(f"edges_per_node {tuple(edges_per_node)} do not add up to the {shape[0]} "
                     f"edges of alpha")
  k_alpha, k_beta = jax.random.split(key)
  return {"alpha": arch_init(k_alpha, shape),
          "beta": tuple(arch_init(k, (n,)) for k, n in
                        zip(jax.random.split(k_beta, len(edges_per_node)), edges_per_node))}


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
