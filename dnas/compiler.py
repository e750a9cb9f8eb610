"""The XLA options dnas compiles its steps with.

XLA's CPU backend has optimisation presets (``xla_cpu_opt_preset``). On the DARTS search step
(C=8, 5 cells, batch 8, this project's 2-core CPU VM) ``FAST_COMPILE`` cut compilation from 121
to 87 s and the step itself from 3.4 to 2.2 s, and sped up retraining a little; the
NAS-Bench-201 step ran 14 % slower with it (``benchmarks/RESULTS.md``). So dnas compiles with
``fast_compile`` on the CPU unless told otherwise (``xla_cpu_preset`` in the configs; the NB201
search config keeps XLA's default). Other backends get no options. The preset is passed per compilation
(``jax.jit(..., compiler_options=...)``), so nothing global changes and it is part of the
persistent compilation cache's key.

XLA's CPU backend also hands dots and convolutions to YNNPACK as "library fusions". A search step
is thousands of small kernels; a cached executable with YNNPACK fusions takes XLA 19 s to load
at C=8, 5 cells (its loader scans the module for every fusion), 6 s without them, and the search
steps ran no slower without them (the NB201 search step faster). Retraining's dense convolutions
ran faster with them. So the search steps turn them off (``ynn_fusions=False``; config key
``xla_cpu_ynn_fusions``) and retraining keeps XLA's default (``benchmarks/RESULTS.md``).

XLA's CPU scheduler is by default its concurrency-optimised one, which on a search step moves
thousands of buffers (the zero-initialised outputs of the node scans) to the start of the
program, where they all stay live. Without it (``XLA_FLAGS``
``--xla_cpu_enable_concurrency_optimized_scheduler=false``) the search steps' buffer plans at C=8,
5 cells, batch 8 shrank from 1.10 to 0.90 GB (first order) and from 3.46 to 1.24 GB (exact
second order), and NAS-Bench-201's at batch 16 from 1.16 to 0.70 GB, with steps no slower
(``benchmarks/RESULTS.md``). XLA reads this option from the process's flags only (as a
per-compilation option it changes nothing), so ``low_memory_schedule`` sets it in ``XLA_FLAGS``
before JAX starts its backends; ``dnas search`` and ``dnas bench search`` do so. Every command
that compiles also turns XLA's Triton GEMM fusions off (``no_triton_gemm``): on a GPU they
crashed XLA's compiler on the DARTS supernet.

Matmul and convolution precision (config key ``precision``): JAX's default lets TPUs run float32
convolutions and matmuls in one bfloat16 pass and lets NVIDIA GPUs from Ampere on use TF32, so
"float32" training is not float32 there. ``precision = "highest"`` (every paper config) makes them
full float32; ``"high"`` is three bfloat16 passes (TF32 on GPUs), ``"default"`` is JAX's default
(the fastest). On the CPU all three give the same numbers. ``matmul_precision`` sets JAX's
``jax_default_matmul_precision`` for a run and restores it after; that flag is part of the key of
a saved trace (``dnas.aot``) and of the compilation cache.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Dict, Optional

import jax
import numpy as np

CPU_PRESETS = {
    "fast_compile": "CPU_OPT_PRESET_FAST_COMPILE",
    "default": "CPU_OPT_PRESET_DEFAULT",
    "fast_runtime": "CPU_OPT_PRESET_FAST_RUNTIME",
}
DEFAULT_CPU_PRESET = "fast_compile"
# config.precision -> jax_default_matmul_precision (None: JAX's default).
PRECISIONS = {"default": None, "high": "high", "highest": "highest"}
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"  # "": no YNNPACK library fusions
SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"
TRITON_GEMM_FLAG = "xla_gpu_enable_triton_gemm"


@functools.lru_cache(maxsize=None)
def _supported(value: str, option: str = "xla_cpu_opt_preset") -> bool:
  """Whether this jaxlib's CPU compiler knows the option and value (older ones lack some)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(np.float32(0)).compile()
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def options(cpu_preset: Optional[str] = None,
            ynn_fusions: bool = True) -> Optional[Dict[str, str]]:
  """``compiler_options`` for ``jax.jit``: XLA's CPU preset on the CPU, else ``None``.

  Args:
    cpu_preset: ``fast_compile`` (the default), ``default`` (XLA's own default) or
      ``fast_runtime``.
    ynn_fusions: let XLA's CPU backend fuse dots and convolutions into YNNPACK calls (XLA's
      default); ``False`` turns them off.

  Returns:
    ``{"xla_cpu_opt_preset": ...}`` (and ``"xla_cpu_experimental_ynn_fusion_type": ""`` without
    YNNPACK fusions) when the default backend is the CPU, for the options its compiler supports;
    ``None`` otherwise (XLA's defaults).
  """
  preset = cpu_preset or DEFAULT_CPU_PRESET
  if preset not in CPU_PRESETS:
    raise ValueError(f"cpu_preset {preset!r} is not one of {sorted(CPU_PRESETS)}")
  if jax.default_backend() != "cpu":
    return None
  result = {}
  if _supported(CPU_PRESETS[preset]):
    result["xla_cpu_opt_preset"] = CPU_PRESETS[preset]
  if not ynn_fusions and _supported("", YNN_OPTION):
    result[YNN_OPTION] = ""
  return result or None


def jit(fun, *, cpu_preset: Optional[str] = None, ynn_fusions: bool = True, **kwargs):
  """``jax.jit(fun, **kwargs)`` with ``options(cpu_preset, ynn_fusions)`` as compiler options."""
  return jax.jit(fun, compiler_options=options(cpu_preset, ynn_fusions), **kwargs)


def _backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  return started is None or started()


def _add_process_flag(name: str, value: str) -> bool:
  """Appends ``--name=value`` to ``XLA_FLAGS`` unless it names ``name`` or JAX has started."""
  flags = os.environ.get("XLA_FLAGS", "")
  if name in flags or _backends_started():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()
  return True


def low_memory_schedule() -> bool:
  """Turns XLA's CPU concurrency-optimised scheduler off for this process (``XLA_FLAGS``).

  Leaves ``XLA_FLAGS`` as it is when it already names the option (the user's choice wins) or
  when JAX has started its backends (XLA has read its flags; changing them then would only
  change the compilation cache's keys). Other backends ignore the option.

  Returns:
    Whether the option was added to ``XLA_FLAGS``.
  """
  return _add_process_flag(SCHEDULER_FLAG, "false")


def no_triton_gemm() -> bool:
  """Turns XLA's Triton matrix-multiplication fusions off on GPUs (``XLA_FLAGS``).

  With them, XLA 0.11.2's GPU compiler aborted the process while compiling the DARTS supernet's
  init at C=16, 8 cells on an H100 (``triton_tiling_propagation.cc``: "Check failed:
  subdim_size_accumulator == dim_size (256 vs. 32)"); without them its matrix products go to
  cuBLAS and the search compiled and ran (``benchmarks/RESULTS.md``). The same rules as
  ``low_memory_schedule``: a user's ``XLA_FLAGS`` that names the option wins, and nothing
  changes once JAX has started. The CPU backend ignores the option.

  Returns:
    Whether the option was added to ``XLA_FLAGS``.
  """
  return _add_process_flag(TRITON_GEMM_FLAG, "false")


@contextlib.contextmanager
def matmul_precision(name: str):
  """Within the block, matmuls and convolutions run at ``name``'s precision (``PRECISIONS``).

  Sets JAX's global flag, not a thread-local one, so that steps traced on a worker thread (as the
  loop compiles alongside initialisation) get it too; the old value comes back on exit.

  Example::

    with compiler.matmul_precision("highest"):
      run_search(config, workdir)
  """
  if name not in PRECISIONS:
    raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
  old = jax.config.jax_default_matmul_precision
  jax.config.update("jax_default_matmul_precision", PRECISIONS[name])
  try:
    yield
  finally:
    jax.config.update("jax_default_matmul_precision", old)
