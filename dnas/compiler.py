"""The XLA options dnas compiles its steps with.

XLA's CPU backend has optimisation presets (``xla_cpu_opt_preset``). On the DARTS search step
(C=8, 5 cells, batch 8, this project's 2-core CPU VM) ``FAST_COMPILE`` cut compilation from 121
to 87 s and the step itself from 3.4 to 2.2 s, and sped up retraining a little; the
NAS-Bench-201 step ran 14 % slower with it (``benchmarks/RESULTS.md``). So dnas compiles with
``fast_compile`` on the CPU unless told otherwise (``xla_cpu_preset`` in the configs; the NB201
search config keeps XLA's default). Other backends get no options. The preset is passed per compilation
(``jax.jit(..., compiler_options=...)``), so nothing global changes and it is part of the
persistent compilation cache's key.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional

import jax
import numpy as np

CPU_PRESETS = {
    "fast_compile": "CPU_OPT_PRESET_FAST_COMPILE",
    "default": "CPU_OPT_PRESET_DEFAULT",
    "fast_runtime": "CPU_OPT_PRESET_FAST_RUNTIME",
}
DEFAULT_CPU_PRESET = "fast_compile"


@functools.lru_cache(maxsize=None)
def _supported(value: str) -> bool:
  """Whether this jaxlib's CPU compiler knows the preset (older ones lack the option)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={"xla_cpu_opt_preset": value}).lower(
        np.float32(0)).compile()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def options(cpu_preset: Optional[str] = None) -> Optional[Dict[str, str]]:
  """``compiler_options`` for ``jax.jit``: XLA's CPU preset on the CPU, else ``None``.

  Args:
    cpu_preset: ``fast_compile`` (the default), ``default`` (XLA's own default) or
      ``fast_runtime``.

  Returns:
    ``{"xla_cpu_opt_preset": ...}`` when the default backend is the CPU and its compiler
    supports the option; ``None`` otherwise (XLA's defaults).
  """
  preset = cpu_preset or DEFAULT_CPU_PRESET
  if preset not in CPU_PRESETS:
    raise ValueError(f"cpu_preset {preset!r} is not one of {sorted(CPU_PRESETS)}")
  if jax.default_backend() != "cpu" or not _supported(CPU_PRESETS[preset]):
    return None
  return {"xla_cpu_opt_preset": CPU_PRESETS[preset]}


def jit(fun, *, cpu_preset: Optional[str] = None, **kwargs):
  """``jax.jit(fun, **kwargs)`` with ``options(cpu_preset)`` as its compiler options."""
  return jax.jit(fun, compiler_options=options(cpu_preset), **kwargs)
