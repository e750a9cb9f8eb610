"""Benchmark of the DARTS search step: init, compile and step time; prints one JSON line per run.

Usage::

  python benchmarks/search_step.py --channels 16 --layers 8 --batch 64 --order 1 --steps 5
  python benchmarks/search_step.py --channels 8 --layers 5 --batch 8 --order 1 --steps 10

Random inputs of CIFAR's shape (the step's cost does not depend on pixel values). The persistent
compilation cache is off here so that ``compile_s`` is the cold compile time; ``--cache DIR`` turns
it on to measure a warm start. Set ``XLA_FLAGS`` in the environment to compare compiler options
(``--ynn-fusions on|off`` for XLA's YNNPACK fusions, ``--xla-scheduler memory|concurrency`` for
XLA's CPU scheduler: ``memory``, the ``dnas search`` default, turns the concurrency-optimised one
off), ``DNAS_DEPTHWISE=conv|shift`` to compare the depthwise convolution's two forms.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnas import bench, compiler, search  # noqa: E402
from dnas.ops import layers  # noqa: E402
from dnas.spaces import DartsSearchNet, NB201SearchNet  # noqa: E402
from dnas.strategies import darts  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--space", default="darts", choices=["darts", "nb201"])
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--nodes", type=int, default=4)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--order", type=int, default=1)
  p.add_argument("--hessian", default="exact", choices=["exact", "finite_difference"],
                 help="second order: the exact hypergradient or DARTS' finite difference")
  p.add_argument("--steps", type=int, default=5, help="steps timed; 0: compile only")
  p.add_argument("--cache", default="")
  p.add_argument("--cpu-preset", default="fast_compile",
                 help="XLA's CPU optimisation preset: fast_compile, default or fast_runtime")
  p.add_argument("--ynn-fusions", choices=["on", "off"], default="off",
                 help="XLA CPU YNNPACK fusions (dnas.compiler; the search default: off)")
  p.add_argument("--xla-scheduler", choices=["memory", "concurrency"], default="memory",
                 help="XLA's CPU scheduler (dnas.compiler.low_memory_schedule; the search default: "
                      "memory); an XLA_FLAGS that names it wins")
  p.add_argument("--label", default="")
  p.add_argument("--unroll-nodes", action="store_true",
                 help="one op group per source node instead of the scan over node-to-node edges")
  p.add_argument("--scan-inputs", action=argparse.BooleanOptionalAction, default=None,
                 help="run a cell's stride-1 input edges in its node scan (ops compiled once); "
                      "default: the supernet's")
  p.add_argument("--profile", default="",
                 help="a folder: also trace 5 steps with jax.profiler and print the device's "
                      "kernels (one more JSON line)")
  p.add_argument("--no-remat", action="store_true",
                 help="keep each op's insides for the backward pass instead of recomputing them")
  p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                 help="pack the node scans' edges by destination (model.pack); default: the "
                      "supernet's")
  p.add_argument("--trace-only", action="store_true",
                 help="only trace and lower the step (on abstract state): trace_s, lower_s")
  a = p.parse_args()
  compiler.no_triton_gemm()  # as every dnas command does (XLA's GPU compiler crashed with them)
  if a.xla_scheduler == "memory":
    compiler.low_memory_schedule()
  if a.cache:
    jax.config.update("jax_compilation_cache_dir", a.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

  layout = {k: v for k, v in (("scan_inputs", a.scan_inputs), ("pack", a.pack)) if v is not None}
  if a.space == "darts":
    model = DartsSearchNet(channels=a.channels, layers=a.layers, nodes=a.nodes,
                           multiplier=a.nodes, scan_nodes=not a.unroll_nodes,
                           remat=not a.no_remat, **layout)
  else:
    model = NB201SearchNet(channels=a.channels, cells_per_stage=a.layers,
                           scan_nodes=not a.unroll_nodes, remat=not a.no_remat, **layout)
  weight_tx, schedule = search.darts_weight_optimizer(total_steps=1000)
  strategy = darts(order=a.order, hessian=a.hessian, learning_rate=schedule)
  arch_tx = search.darts_arch_optimizer()
  key = jax.random.key(0)
  images = jax.random.normal(key, (a.batch, 32, 32, 3))
  batch = {"image": images, "label": jnp.arange(a.batch) % 10}

  init = lambda k: search.init_search_state(model, strategy, weight_tx, arch_tx, k, images[:2])
  ynn = a.ynn_fusions == "on"
  step = search.make_search_step(model, strategy, weight_tx, arch_tx, cpu_preset=a.cpu_preset,
                                 ynn_fusions=ynn)
  if a.trace_only:
    state = jax.eval_shape(init, key)
    t = time.perf_counter()
    traced = step.trace(state, batch, batch)
    trace_s = time.perf_counter() - t
    t = time.perf_counter()
    traced.lower()
    print(json.dumps({
        "benchmark": "search_step_trace", "label": a.label, **bench.device_info(),
        "space": a.space, "channels": a.channels, "layers": a.layers, "nodes": a.nodes,
        "batch": a.batch, "order": a.order, "hessian": a.hessian,
        "scan_inputs": model.scan_inputs, "pack": model.pack, "trace_s": round(trace_s, 2),
        "lower_s": round(time.perf_counter() - t, 2),
        "jaxpr_eqns": len(traced.jaxpr.eqns)}), flush=True)
    return

  t = time.perf_counter()
  state = compiler.jit(init, cpu_preset=a.cpu_preset, ynn_fusions=ynn)(key)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t

  t = time.perf_counter()
  lowered = step.lower(state, batch, batch)  # tracing and lowering, timed apart from compiling
  trace_s = time.perf_counter() - t
  r = bench.time_step(step, (state, batch, batch), a.steps,
                      lambda out, args: (out[0],) + tuple(args[1:]), lowered=lowered,
                      profile_dir=a.profile)
  profile = r.pop("profile", None)
  print(json.dumps({
      "benchmark": "search_step", "label": a.label, **bench.device_info(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "space": a.space, "channels": a.channels, "layers": a.layers, "nodes": a.nodes,
      "batch": a.batch, "order": a.order, "hessian": a.hessian, "scan_nodes": not a.unroll_nodes,
      "scan_inputs": model.scan_inputs, "remat": not a.no_remat, "pack": model.pack,
      "depthwise": layers._depthwise_impl(),  # pylint: disable=protected-access
      "compiler_options": compiler.options(a.cpu_preset, ynn),
      "init_s": round(init_s, 2), "trace_s": round(trace_s, 2), **r,
      "images_per_s": (round(2 * a.batch / (r["step_ms_median"] / 1e3), 1)
                       if r["step_ms_median"] else None)}), flush=True)
  if profile:
    print(json.dumps({"benchmark": "search_step_profile", "label": a.label, **profile}),
          flush=True)


if __name__ == "__main__":
  main()
