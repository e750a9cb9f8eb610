"""Saved traces: a second run of the same config compiles its step without tracing it.

JAX's persistent compilation cache skips XLA's compilation on a second run, but not the Python
tracing and lowering in front of it, which it needs to compute its key: 14 s for the DARTS search
step at C=8, 5 cells on this project's CPU VM, about 30 s at the paper's size.
``compile_step`` saves the lowered step with ``jax.export`` the first time; a later run with the
same key deserializes it instead of tracing, and XLA's cache then finds its compiled executable.
``trace`` does the first half alone: its ``Trace`` knows the step's output shapes (from the saved
trace, without tracing: a resumed run's state template) and compiles when asked, so a caller
can load one step while it initialises another.

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


def _key_impl(x) -> str:
  """The PRNG implementation's name of a typed key (an array or a ``jax.ShapeDtypeStruct``)."""
  impl = []
  jax.eval_shape(lambda k: impl.append(str(jax.random.key_impl(k))), x)
  return impl[0]


def _spec(x) -> jax.ShapeDtypeStruct:
  """Shape, dtype and sharding of an argument leaf (a PRNG key as its raw data)."""
  sharding = getattr(x, "sharding", None)
  if _is_key(x):
    data = jax.eval_shape(jax.random.key_data, x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class Trace:
  """A step ready to compile: loaded from a saved trace, traced and exported, or plain.

  Made by ``trace``. ``out_specs`` gives the step's output shapes without running it (from the
  saved trace when there is one, so a resumed run needs no trace to know its state's shapes);
  ``compile()`` compiles it (XLA's persistent cache, when on, supplies the executable).
  """

  def __init__(self, fun, args, options, donate_argnums, exported=None, flat=None):
    self.fun, self.args, self.options = fun, tuple(args), options
    self.donate_argnums, self.exported, self.flat = donate_argnums, exported, flat
    self.traced = flat is None or flat.traced

  @functools.cached_property
  def out_specs(self) -> Any:
    """The step's output pytree as ``jax.ShapeDtypeStruct``s on the default device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if self.exported is None:
      shapes = jax.eval_shape(self.fun, *self.args)
    else:
      shapes = jax.tree.unflatten(self.flat.out_tree, [
          jax.eval_shape(functools.partial(jax.random.wrap_key_data, impl=k),
                         jax.ShapeDtypeStruct(a.shape, a.dtype)) if k else a
          for a, k in zip(self.exported.out_avals, self.flat.out_keys)])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        shapes)

  def compile(self) -> Callable:
    """The compiled step: ``step(*args)`` returns ``fun``'s pytree."""
    if self.exported is None:
      return jax.jit(self.fun, compiler_options=self.options,
                     donate_argnums=self.donate_argnums).lower(*self.args).compile()
    flat = self.flat
    compiled = jax.jit(self.exported.call, compiler_options=self.options,
                       donate_argnums=flat.donated).lower(*flat.specs).compile()

    def step(*call_args):
      xs = jax.tree.leaves(call_args)
      ys = compiled(*[jax.random.key_data(x) if k else x for x, k in zip(xs, flat.in_keys)])
      ys = [jax.random.wrap_key_data(y, impl=k) if k else y for y, k in zip(ys, flat.out_keys)]
      return jax.tree.unflatten(flat.out_tree, ys)

    return step


class _Flat:
  """``fun`` over flat arrays (typed PRNG keys as raw key data), as ``jax.export`` wants it."""

  def __init__(self, fun, args, donate_argnums):
    leaves, self.in_tree = jax.tree.flatten(tuple(args))
    self.fun = fun
    self.in_keys = [_key_impl(x) if _is_key(x) else None for x in leaves]
    self.specs = [_spec(x) for x in leaves]
    self.donated, start = [], 0
    for a, arg in enumerate(args):
      n = len(jax.tree.leaves(arg))
      self.donated += range(start, start + n) if a in donate_argnums else []
      start += n
    self.donated = tuple(self.donated)
    self.out_tree = self.out_keys = None
    self.traced = False

  def __call__(self, *xs):
    self.traced = True
    xs = [jax.random.wrap_key_data(x, impl=k) if k else x for x, k in zip(xs, self.in_keys)]
    result = self.fun(*jax.tree.unflatten(self.in_tree, xs))
    ys, self.out_tree = jax.tree.flatten(result)
    self.out_keys = [str(jax.random.key_impl(y)) if _is_key(y) else None for y in ys]
    return [jax.random.key_data(y) if _is_key(y) else y for y in ys]


def trace(fun: Callable, args: Sequence[Any], *, cache_dir: Optional[str], key: str,
          cpu_preset: Optional[str] = None, ynn_fusions: bool = True,
          donate_argnums: Tuple[int, ...] = ()) -> Trace:
  """``fun(*args)`` from a saved trace when one matches, else traced and saved; not compiled.

  Args:
    fun: the step, not jitted (pure; pytrees in and out).
    args: example arguments (arrays or ``jax.ShapeDtypeStruct``s); the compiled step takes
      arguments of their shapes, dtypes, shardings and tree structures only.
    cache_dir: folder of saved traces; ``None``: plain ``jax.jit`` (traced, nothing saved).
    key: what else the trace depends on (the caller's config, ...); see the module docstring.
    cpu_preset, ynn_fusions: XLA's CPU options (``dnas.compiler.options``).
    donate_argnums: arguments whose buffers the step may reuse.

  Returns:
    A ``Trace``; its ``traced`` is whether ``fun`` was traced (False: from a saved trace).
  """
  options = compiler.options(cpu_preset, ynn_fusions)
  plain = Trace(fun, args, options, donate_argnums)
  if cache_dir is None:  # nothing to save: no export (it costs a first run 3-12 s)
    return plain
  flat = _Flat(fun, args, donate_argnums)
  digest = hashlib.sha256("\n".join([
      f"format={FORMAT}", key, source_digest(), _versions(), repr(options), repr(flat.donated),
      repr(flat.in_tree), repr(flat.in_keys), repr(flat.specs)]).encode()).hexdigest()
  path = os.path.join(cache_dir, "dnas_traces", digest)
  exported = _load(path, flat)
  if exported is None:
    try:
      exported = jax.export.export(jax.jit(flat))(*flat.specs)
    except Exception as e:  # pylint: disable=broad-except
      # What jax.export refuses (e.g. a custom call it cannot vouch for) still runs under jit.
      print(f"warning: the step cannot be saved ({type(e).__name__}: {e}); compiling it "
            f"without a saved trace", file=sys.stderr)
      return plain
    _save(path, exported, flat)
  return Trace(fun, args, options, donate_argnums, exported, flat)


def compile_step(fun: Callable, args: Sequence[Any], **kwargs) -> Tuple[Callable, bool]:
  """``trace(fun, args, **kwargs)`` compiled: ``(step, traced)`` (see ``trace``)."""
  t = trace(fun, args, **kwargs)
  return t.compile(), t.traced


def _save(path: str, exported, flat: _Flat) -> None:
  """Writes the trace atomically; a cache that cannot be written only costs the next run time."""
  try:
    blob = pickle.dumps({"format": FORMAT, "exported": bytes(exported.serialize()),
                         "out_tree": flat.out_tree, "out_keys": flat.out_keys})
    io.atomic_write_bytes(path, blob)
  except (OSError, ImportError, pickle.PicklingError) as e:
    print(f"warning: could not save the step's trace to {path}: {e}", file=sys.stderr)


def _load(path: str, flat: _Flat) -> Optional[Any]:
  """The saved trace at ``path`` (filling ``flat``'s outputs); None when absent or unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      saved = pickle.load(f)
    if saved.get("format") != FORMAT:
      return None
    exported = jax.export.deserialize(bytearray(saved["exported"]))
    flat.out_tree, flat.out_keys = saved["out_tree"], saved["out_keys"]
    return exported
  except Exception as e:  # pylint: disable=broad-except
    print(f"warning: ignoring the unreadable saved trace {path} ({type(e).__name__}: {e}); "
          f"tracing the step again", file=sys.stderr)
    return None
