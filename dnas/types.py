"""Type aliases used across the public surface."""

from typing import Any, Mapping, NamedTuple

import jax

PRNGKey = jax.Array
Array = jax.Array
Params = Any  # a pytree of weight arrays ("params" collection)
Arch = Mapping[str, jax.Array]  # architecture parameters ("arch" collection)
BatchStats = Any
Batch = Mapping[str, jax.Array]  # {"image": [B, H, W, C], "label": [B]}
OpWeights = Mapping[str, jax.Array]  # same keys as Arch, relaxed weights per edge and op


class SampledOps(NamedTuple):
  """One op picked per edge, in place of a cell's dense ``[E, K]`` op weights.

  A sampling strategy (GDAS, SPOS, ...) gives this instead of an array; a supernet then computes
  only the picked op on each edge (``dnas.spaces.cell``)::

      edge(x) = weights[e, index[e]] * op_{index[e]}(x) + sum_{k != index[e]} weights[e, k]

  The second term is zero-valued (the weights are one-hot) but carries the other ops' gradients,
  as GDAS' reference forward does (D-X-Y/AutoDL-Projects, ``forward_gdas``).

  Attributes:
    index: ``[E]`` int32, the op picked on every edge.
    weights: ``[E, K]``, one-hot valued (exactly 1 at ``index``), possibly carrying
      straight-through gradients.
  """
  index: jax.Array
  weights: jax.Array
