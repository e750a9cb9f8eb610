"""Saved traces: a second run of the same config compiles its step without tracing it.

JAX's persistent compilation cache skips XLA's compilation on a second run, but not the Python
tracing and lowering in front of it, which it needs to compute its key: 14 s for the DARTS search
step at C=8, 5 cells on this project's CPU VM, about 30 s at the paper's size.
``compile_step`` saves the lowered step with ``jax.export`` the first time; a later run with the
same key deserializes it instead of tracing, and XLA's cache then finds its compiled executable.

Being keyed, a saved trace is only as safe as its key. The key here covers the arguments'
shapes, dtypes and shardings, the compiler options, donation, the jax/jaxlib/flax/optax versions,
the JAX flags that change a trace, and every source file of the ``dnas`` package; the caller adds
everything else the trace depends on (``train_lib`` adds the config, the genotype and the number
of steps, and does not use a saved trace when an op comes from outside ``dnas``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from dnas import compiler, io

FORMAT = 1
ENV_VARS = ("DNAS_DEPTHWISE", "DNAS_DENSE_CONV")  # read while tracing (dnas.ops.layers)
JAX_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
             "jax_threefry_partitionable", "jax_numpy_dtype_promotion",
             "jax_numpy_rank_promotion", "jax_softmax_custom_jvp")


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
  """sha256 of every ``.py`` file of the ``dnas`` package (paths and contents)."""
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        h.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
          h.update(f.read())
  return h.hexdigest()


def _versions() -> str:
  parts = [f"{m}={getattr(sys.modules.get(m), '__version__', None)}"
           for m in ("jax", "jaxlib", "flax", "optax")]
  parts += [f"{f}={getattr(jax.config, f, None)}" for f in JAX_FLAGS]
  parts += [f"{v}={os.environ.get(v, '')}" for v in ENV_VARS]
  device = jax.devices()[0]
  return ";".join(parts + [f"{device.platform}:{device.device_kind}:{jax.device_count()}"])


def _is_key(x) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _spec(x) -> jax.ShapeDtypeStruct:
  """Shape, dtype and sharding of an argument leaf (a PRNG key as its raw data)."""
  sharding = getattr(x, "sharding", None)
  if _is_key(x):
    data = jax.eval_shape(jax.random.key_data, x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def compile_step(fun: Callable, args: Sequence[Any], *, cache_dir: Optional[str], key: str,
                 cpu_preset: Optional[str] = None, ynn_fusions: bool = True,
                 donate_argnums: Tuple[int, ...] = ()) -> Tuple[Callable, bool]:
  """Compiles ``fun(*args)``, from a saved trace when one matches, else tracing and saving it.

  Args:
    fun: the step, not jitted (pure; pytrees in and out).
    args: example arguments (arrays); the compiled step takes arguments of their shapes, dtypes,
      shardings and tree structures only.
    cache_dir: folder of saved traces; ``None``: plain ``jax.jit`` (traced, nothing saved).
    key: what else the trace depends on (the caller's config, ...); see the module docstring.
    cpu_preset, ynn_fusions: XLA's CPU options (``dnas.compiler.options``).
    donate_argnums: arguments whose buffers the step may reuse.

  Returns:
    ``(step, traced)``: ``step(*args)`` runs the compiled step and returns ``fun``'s pytree;
    ``traced`` is whether ``fun`` was traced (False: it came from a saved trace).
  """
  options = compiler.options(cpu_preset, ynn_fusions)

  def plain():
    return jax.jit(fun, compiler_options=options, donate_argnums=donate_argnums).lower(
        *args).compile(), True

  if cache_dir is None:  # nothing to save: no export (it costs a first run 3-12 s)
    return plain()
  leaves, in_tree = jax.tree.flatten(tuple(args))
  in_keys = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
  specs = [_spec(x) for x in leaves]
  donated, start = [], 0
  for a, arg in enumerate(args):
    n = len(jax.tree.leaves(arg))
    donated += range(start, start + n) if a in donate_argnums else []
    start += n
  out = {}

  def flat(*xs):
    xs = [jax.random.wrap_key_data(x, impl=k) if k else x for x, k in zip(xs, in_keys)]
    result = fun(*jax.tree.unflatten(in_tree, xs))
    ys, out["tree"] = jax.tree.flatten(result)
    out["keys"] = [str(jax.random.key_impl(y)) if _is_key(y) else None for y in ys]
    return [jax.random.key_data(y) if _is_key(y) else y for y in ys]

  digest = hashlib.sha256("\n".join([
      f"format={FORMAT}", key, source_digest(), _versions(), repr(options), repr(donated),
      repr(in_tree), repr(in_keys), repr(specs)]).encode()).hexdigest()
  path = os.path.join(cache_dir, "dnas_traces", digest)
  exported = _load(path, out)
  traced = exported is None
  if traced:
    try:
      exported = jax.export.export(jax.jit(flat))(*specs)
    except Exception as e:  # pylint: disable=broad-except
      # What jax.export refuses (e.g. a custom call it cannot vouch for) still runs under jit.
      print(f"warning: the step cannot be saved ({type(e).__name__}: {e}); compiling it "
            f"without a saved trace", file=sys.stderr)
      return plain()
    _save(path, exported, out)
  compiled = jax.jit(exported.call, compiler_options=options,
                     donate_argnums=tuple(donated)).lower(*specs).compile()
  out_tree, out_keys = out["tree"], out["keys"]

  def step(*call_args):
    xs = jax.tree.leaves(call_args)
    ys = compiled(*[jax.random.key_data(x) if k else x for x, k in zip(xs, in_keys)])
    ys = [jax.random.wrap_key_data(y, impl=k) if k else y for y, k in zip(ys, out_keys)]
    return jax.tree.unflatten(out_tree, ys)

  return step, traced


def _save(path: str, exported, out) -> None:
  """Writes the trace atomically; a cache that cannot be written only costs the next run time."""
  try:
    blob = pickle.dumps({"format": FORMAT, "exported": bytes(exported.serialize()),
                         "out_tree": out["tree"], "out_keys": out["keys"]})
    io.atomic_write_bytes(path, blob)
  except (OSError, ImportError, pickle.PicklingError) as e:
    print(f"warning: could not save the step's trace to {path}: {e}", file=sys.stderr)


def _load(path: str, out) -> Optional[Any]:
  """The saved trace at ``path`` (filling ``out``); None when absent or unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      saved = pickle.load(f)
    if saved.get("format") != FORMAT:
      return None
    exported = jax.export.deserialize(bytearray(saved["exported"]))
    out["tree"], out["keys"] = saved["out_tree"], saved["out_keys"]
    return exported
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: ignoring the unreadable saved trace {path} ({type(e).__name__}: {e}); "
          f"tracing the step again", file=sys.stderr)
    return None
