"""Type aliases used across the public surface."""

from typing import Any, Mapping

import jax

PRNGKey = jax.Array
Array = jax.Array
Params = Any  # a pytree of weight arrays ("params" collection)
Arch = Mapping[str, jax.Array]  # architecture parameters ("arch" collection)
BatchStats = Any
Batch = Mapping[str, jax.Array]  # {"image": [B, H, W, C], "label": [B]}
OpWeights = Mapping[str, jax.Array]  # same keys as Arch, relaxed weights per edge and op
