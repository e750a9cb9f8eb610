"""Step benchmarks: compile time, step time, throughput and XLA's cost analysis of one step.

``dnas bench search|train --config ... --steps N --json`` and the scripts under ``benchmarks/``
call these. Inputs are random arrays of the dataset's shape: a step's cost does not depend on
pixel values, so no data is read.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s of accelerators (vendor datasheets), for the achieved fraction.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_info() -> Dict[str, Any]:
  dev = jax.devices()[0]
  return {"device": f"{dev.platform}:{dev.device_kind}", "n_devices": jax.device_count(),
          "host": platform.node(), "jax": jax.__version__}


def xla_cost(compiled) -> Dict[str, Any]:
  """XLA's cost analysis of a compiled function as one dict (older JAX: one per device)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return cost or {}


def xla_memory(compiled) -> Dict[str, Any]:
  """XLA's static buffer assignment of a compiled function, in bytes.

  ``xla_peak_bytes_estimate`` = arguments + outputs - donated (aliased) buffers + temporaries:
  what the step holds at once by the compiler's plan. It is reported on every backend (the CPU
  backend's allocator keeps no peak counter), and is a plan, not an allocator's measurement.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    m = None
  if m is None:
    return {"xla_temp_bytes": None, "xla_peak_bytes_estimate": None}
  args, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
  alias, temp = int(m.alias_size_in_bytes), int(m.temp_size_in_bytes)
  return {"xla_temp_bytes": temp, "xla_peak_bytes_estimate": args + out - alias + temp}


def time_step(step: Callable, args: Sequence[Any], steps: int,
              carry: Callable[[Any, Sequence[Any]], Sequence[Any]],
              lowered: Any = None, profile_dir: str = "") -> Dict[str, Any]:
  """Compiles ``step`` for ``args`` and times ``steps`` calls after one untimed call.

  Args:
    step: a jitted function.
    args: its arguments for the first call.
    steps: calls to time; 0 compiles only (the step fields are then None).
    carry: ``carry(outputs, args) -> args`` for the next call (a step donates its state, so
      the next call must take the state it returned).
    lowered: ``step.lower(*args)`` if the caller already has it (to time tracing apart).
    profile_dir: if set, 5 more calls are traced there and ``profile_kernels``' summary is
      returned under ``"profile"``.

  Returns:
    ``compile_s``, ``step_ms_median``, ``step_ms_min``, XLA's ``flops`` and
    ``bytes_accessed`` for one call, ``peak_mem_bytes`` where the backend reports it, and
    XLA's planned memory (``xla_memory``).
  """
  if steps < 0:
    raise ValueError(f"steps must be >= 0 (0: compile only), got {steps}")
  t = time.perf_counter()
  compiled = (lowered if lowered is not None else step.lower(*args)).compile()
  compile_s = time.perf_counter() - t
  cost = xla_cost(compiled)
  times = []
  for _ in range(steps + 1 if steps else 0):
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
    args = carry(out, args)
  times = times[1:]  # the first call includes one-off allocation
  profile = None
  if profile_dir and steps:
    def call():
      nonlocal args
      out = compiled(*args)
      jax.block_until_ready(out)
      args = carry(out, args)
    profile = profile_kernels(call, profile_dir, 5)
  mem = jax.devices()[0].memory_stats() or {}
  median = statistics.median(times) if times else None
  flops = cost.get("flops")
  result = {"compile_s": round(compile_s, 2),
            "step_ms_median": round(1e3 * median, 2) if times else None,
            "step_ms_min": round(1e3 * min(times), 2) if times else None, "steps": steps,
            "flops": flops, "bytes_accessed": cost.get("bytes accessed"),
            "peak_mem_bytes": mem.get("peak_bytes_in_use"), **xla_memory(compiled)}
  kind = jax.devices()[0].device_kind
  peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
  result["peak_fraction"] = (round(flops / median / peak, 4)
                             if flops and peak and times else None)
  if profile is not None:
    result["profile"] = profile
  return result


def profile_kernels(run: Callable[[], Any], logdir: str, calls: int,
                    top: int = 25) -> Dict[str, Any]:
  """Traces ``calls`` calls of ``run`` with ``jax.profiler`` and sums the device's kernels.

  Reads the trace's device planes (``/device:...``; the CPU backend has none, so there the
  result is empty): per kernel name, its launches and total time per call, the ``top`` most
  expensive first, and the kernels' summed time per call (``kernel_ms_per_call``) beside the
  number of launches per call. Their gap to the step's wall time is launch and host overhead.
  """
  import glob  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  jax.profiler.start_trace(logdir)
  try:
    for _ in range(calls):
      run()
  finally:
    jax.profiler.stop_trace()
  paths = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))
  totals: Dict[str, list] = {}
  lines = set()
  if paths:
    for plane in ProfileData.from_file(paths[-1]).planes:
      if not plane.name.startswith("/device:"):
        continue
      for line in plane.lines:
        lines.add(f"{plane.name}/{line.name}")
        if "stream" not in line.name.lower():
          continue
        for ev in line.events:
          t = totals.setdefault(ev.name, [0, 0.0])
          t[0] += 1
          t[1] += ev.duration_ns
  rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
  return {"profiled_calls": calls, "device_lines": sorted(lines)[:20],
          "kernel_launches_per_call": round(sum(v[0] for v in totals.values()) / calls, 1),
          "kernel_ms_per_call": round(sum(v[1] for v in totals.values()) / calls / 1e6, 3),
          "kernels": [{"name": k[:120], "n": v[0] // calls, "ms": round(v[1] / calls / 1e6, 3)}
                      for k, v in rows[:top]]}


def _random_batch(key, batch: int, shape, num_classes: int):
  return {"image": jax.random.normal(key, (batch,) + tuple(shape)),
          "label": jnp.arange(batch) % num_classes}


def bench_search(config, steps: int, num_classes: int, image_shape,
                 cpu_preset: Optional[str] = None) -> Dict[str, Any]:
  """Times the search step a search config builds (``dnas.train_lib.run_search``'s step).

  ``cpu_preset`` is XLA's CPU optimisation preset (``dnas.compiler.options``); default: the
  config's ``xla_cpu_preset``. Matmuls and convolutions run at the config's ``precision``.
  """
  from dnas import compiler, train_lib  # pylint: disable=g-import-not-at-top
  train_lib.validate_search_config(config)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _bench_search(config, steps, num_classes, image_shape, cpu_preset)


def _bench_search(config, steps, num_classes, image_shape, cpu_preset):
  from dnas import compiler, search, train_lib  # pylint: disable=g-import-not-at-top
  from dnas.ops import layers  # pylint: disable=g-import-not-at-top
  c = config
  cpu_preset = cpu_preset or c.xla_cpu_preset
  ynn = c.get("xla_cpu_ynn_fusions", False)
  model = train_lib.build_search_model(c, num_classes)
  weight_tx, schedule = train_lib.search_weight_optimizer(c, 10_000)
  arch_tx = search.darts_arch_optimizer(c.search.arch_learning_rate,
                                        weight_decay=c.search.arch_weight_decay)
  strategy = train_lib.make_strategy(c, schedule, total_steps=10_000, steps_per_epoch=1_000)
  key = jax.random.key(c.seed)
  batch = _random_batch(key, c.data.batch_size, image_shape, num_classes)
  state = compiler.jit(lambda k: search.init_search_state(model, strategy, weight_tx, arch_tx, k,
                                                          batch["image"][:2]),
                       cpu_preset=cpu_preset, ynn_fusions=ynn)(key)
  step = search.make_search_step(model, strategy, weight_tx, arch_tx, cpu_preset=cpu_preset,
                                 ynn_fusions=ynn,
                                 update_order=c.search.get("update_order", "arch_first"),
                                 total_steps=10_000)
  r = time_step(step, (state, batch, batch), steps, lambda out, a: (out[0],) + tuple(a[1:]))
  # A search step trains on one batch and updates alpha on another.
  r["images_per_s"] = (round(2 * c.data.batch_size / (r["step_ms_median"] / 1e3), 1)
                       if r["step_ms_median"] else None)
  return {"benchmark": "search", **device_info(), "space": c.model.space,
          "channels": c.model.channels, "layers": c.model.layers, "nodes": c.model.nodes,
          "batch": c.data.batch_size, "strategy": train_lib.strategy_name(c),
          "options": train_lib.strategy_options(c),
          "precision": c.get("precision", "default"),
          "depthwise": layers._depthwise_impl(),  # pylint: disable=protected-access
          "compiler_options": compiler.options(cpu_preset, ynn), **r}


def bench_train(config, genotype, steps: int, num_classes: int, image_shape,
                dtypes: Optional[Sequence[str]] = None, cpu_preset: Optional[str] = None) -> list:
  """Times the retraining step of ``genotype``'s network, once per compute dtype.

  ``cpu_preset`` is XLA's CPU optimisation preset (``dnas.compiler.options``); default: the
  config's ``xla_cpu_preset``. Matmuls and convolutions run at the config's ``precision``.
  """
  from dnas import compiler, train_lib  # pylint: disable=g-import-not-at-top
  train_lib.validate_train_config(config, genotype)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _bench_train(config, genotype, steps, num_classes, image_shape, dtypes, cpu_preset)


def _bench_train(config, genotype, steps, num_classes, image_shape, dtypes, cpu_preset):
  from dnas import compiler, retrain, train_lib  # pylint: disable=g-import-not-at-top
  c = config
  cpu_preset = cpu_preset or c.xla_cpu_preset
  ynn = c.get("xla_cpu_ynn_fusions", True)
  model = train_lib.build_train_model(c, genotype, num_classes)
  tx, _ = train_lib.train_optimizer(c, 10_000, 100)
  key = jax.random.key(c.seed)
  batch = _random_batch(key, c.data.batch_size, image_shape, num_classes)
  rows = []
  for name in dtypes or [c.train.compute_dtype]:
    dtype = train_lib.compute_dtype(name)
    state = retrain.init_train_state(model, tx, key, batch["image"][:2], cpu_preset=cpu_preset)
    step = retrain.make_train_step(model, tx, aux_weight=c.train.aux_weight,
                                   label_smoothing=c.train.label_smoothing, compute_dtype=dtype,
                                   cpu_preset=cpu_preset, ynn_fusions=ynn)
    dpp = jnp.float32(c.train.drop_path_prob)
    r = time_step(step, (state, batch, dpp), steps, lambda out, a: (out[0],) + tuple(a[1:]))
    r["images_per_s"] = (round(c.data.batch_size / (r["step_ms_median"] / 1e3), 1)
                         if r["step_ms_median"] else None)
    rows.append({"benchmark": "train", **device_info(), "space": c.model.space,
                 "channels": c.model.channels, "layers": c.model.layers,
                 "batch": c.data.batch_size, "dtype": jnp.dtype(dtype).name,
                 "precision": c.get("precision", "default"),
                 "compiler_options": compiler.options(cpu_preset, ynn),
                 "n_params": int(sum(x.size for x in jax.tree.leaves(state.params))), **r})
  return rows
