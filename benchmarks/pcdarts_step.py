"""DARTS' search step against PC-DARTS' on the same NAS-Bench-201 supernet: time and memory.

Usage::

  python benchmarks/pcdarts_step.py --channels 16 --layers 5 --batch 64 --steps 5
  python benchmarks/pcdarts_step.py --channels 8 --layers 1 --batch 16 --steps 5   # small, CPU

Prints one JSON line per method (``darts``: every channel through the ops, ``softmax(alpha)``;
``pcdarts``: ``model.partial_channels=K`` and edge normalisation, ``softmax(alpha) *
softmax(beta)``), then one with the ratios (PC-DARTS over DARTS). Each line holds the median
step time, XLA's compile time, its FLOP count and its buffer plan (``xla_temp_bytes``,
``xla_peak_bytes_estimate``: ``compiled.memory_analysis()``, a plan rather than an allocator's
peak, which the CPU backend does not count; ``peak_mem_bytes`` where the device reports one).
Random inputs of CIFAR's shape; the persistent compilation cache is off.

Measured (2026-11-30, a 2-core CPU VM shared with other jobs, load about 6, JAX 0.10.2, XLA's
default CPU preset; ``--channels 16 --layers 1 --batch 32 --steps 5``, first order, K=4):

    method   step ms (median)  compile s  GFLOPs  XLA temp MB  weights
    darts              2548.9      124.6    16.6        201.4   395,866
    pcdarts             508.1       56.0     3.7         95.9    93,466
    ratio               0.199      0.449   0.226        0.476     0.236

The ops see a quarter of the channels, so a convolution costs 1/16; the stem, the residual
blocks between stages and the classifier do not shrink, hence the 0.23 of the FLOPs; XLA's
buffer plan is about half (the cells' states keep every channel). Times on this shared machine
vary by tens of percent.
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
from dnas.spaces import NB201SearchNet  # noqa: E402
from dnas.strategies import darts  # noqa: E402
from dnas.strategies.pcdarts import pcdarts  # noqa: E402


def measure(method: str, a) -> dict:
  """One method's search step on the supernet ``a`` describes: compile, then ``a.steps`` steps."""
  pc = method == "pcdarts"
  model = NB201SearchNet(channels=a.channels, cells_per_stage=a.layers,
                         partial_channels=a.k if pc else 1, edge_norm=pc)
  weight_tx, schedule = search.darts_weight_optimizer(total_steps=1000)
  strategy = (pcdarts if pc else darts)(order=a.order, learning_rate=schedule)
  arch_tx = search.darts_arch_optimizer()
  key = jax.random.key(0)
  images = jax.random.normal(key, (a.batch, 32, 32, 3))
  batch = {"image": images, "label": jnp.arange(a.batch) % 10}
  init = lambda k: search.init_search_state(model, strategy, weight_tx, arch_tx, k, images[:2])
  state = compiler.jit(init, cpu_preset=a.cpu_preset)(key)
  jax.block_until_ready(state)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  step = search.make_search_step(model, strategy, weight_tx, arch_tx, cpu_preset=a.cpu_preset)
  t = time.perf_counter()
  lowered = step.lower(state, batch, batch)
  trace_s = time.perf_counter() - t
  r = bench.time_step(step, (state, batch, batch), a.steps,
                      lambda out, args: (out[0],) + tuple(args[1:]), lowered=lowered)
  return {"benchmark": "pcdarts_step", "method": method, "label": a.label, **bench.device_info(),
          "space": "nb201", "channels": a.channels, "layers": a.layers, "batch": a.batch,
          "order": a.order, "partial_channels": model.partial_channels, "n_params": n_params,
          "trace_s": round(trace_s, 2), **r}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--layers", type=int, default=5, help="cells per stage")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--k", type=int, default=4, help="PC-DARTS' channel proportion 1/K")
  p.add_argument("--order", type=int, default=1)
  p.add_argument("--steps", type=int, default=5, help="steps timed after one untimed step")
  p.add_argument("--cpu-preset", default="default",
                 help="XLA's CPU optimisation preset: fast_compile, default or fast_runtime")
  p.add_argument("--label", default="")
  a = p.parse_args()
  compiler.no_triton_gemm()  # as every dnas command does
  compiler.low_memory_schedule()
  rows = {}
  for method in ("darts", "pcdarts"):
    rows[method] = measure(method, a)
    print(json.dumps(rows[method]), flush=True)
  ratio = lambda k: (round(rows["pcdarts"][k] / rows["darts"][k], 3)
                     if rows["darts"].get(k) and rows["pcdarts"].get(k) else None)
  print(json.dumps({"benchmark": "pcdarts_step_ratio", "label": a.label,
                    **{f"{k}_ratio": ratio(k) for k in (
                        "step_ms_median", "flops", "xla_temp_bytes", "xla_peak_bytes_estimate",
                        "n_params", "compile_s")}}), flush=True)


if __name__ == "__main__":
  main()
