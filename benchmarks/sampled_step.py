"""Benchmark: GDAS' sampled search step against DARTS' first-order step, same NB201 supernet.

GDAS gives the supernet one op per edge (``dnas.types.SampledOps``), which ``dnas.spaces.cell``
computes alone (a ``lax.switch`` per edge); DARTS' first order computes every op on every edge.
Both steps are ``dnas.search.make_search_step`` (the weights first, then alpha, as
NAS-Bench-201's scripts order them). Prints one JSON line per strategy (compile and step
times, as ``benchmarks/search_step.py``) and a last line comparing them.

Usage::

  python benchmarks/sampled_step.py                                   # C=16, N=5, batch 16
  python benchmarks/sampled_step.py --channels 16 --layers 5 --batch 64 --steps 10  # the papers'
  python benchmarks/sampled_step.py --channels 8 --layers 2 --batch 8 --strategies gdas

Random inputs of CIFAR's shape (the cost does not depend on pixel values); the persistent
compilation cache is off, so ``compile_s`` is a cold compile. ``--scan-inputs``, ``--pack`` and
``--no-remat`` set the supernet's layout (``NB201SearchNet``).
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
from dnas.strategies.gdas import gdas  # noqa: E402

STRATEGIES = ("gdas", "darts")


def _strategy(name: str):
  if name == "gdas":
    return gdas(tau_max=10.0, tau_min=0.1, steps_per_epoch=10)
  return darts(order=1)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--layers", type=int, default=5, help="cells per stage (N)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=5, help="steps timed after one untimed call")
  p.add_argument("--strategies", default=",".join(STRATEGIES),
                 help=f"comma-separated, of {list(STRATEGIES)}")
  p.add_argument("--cpu-preset", default="default",
                 help="XLA's CPU preset (the NAS-Bench-201 search configs use XLA's default)")
  p.add_argument("--scan-inputs", action=argparse.BooleanOptionalAction, default=None,
                 help="default: the supernet's (False)")
  p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None,
                 help="default: the supernet's (True)")
  p.add_argument("--no-remat", action="store_true")
  p.add_argument("--label", default="")
  a = p.parse_args()
  names = [s for s in a.strategies.split(",") if s]
  for s in names:
    if s not in STRATEGIES:
      p.error(f"unknown strategy {s!r}; valid: {', '.join(STRATEGIES)}")
  compiler.no_triton_gemm()
  compiler.low_memory_schedule()  # as `dnas search` does

  layout = {k: v for k, v in (("scan_inputs", a.scan_inputs), ("pack", a.pack)) if v is not None}
  model = NB201SearchNet(channels=a.channels, cells_per_stage=a.layers, remat=not a.no_remat,
                         **layout)
  key = jax.random.key(0)
  images = jax.random.normal(key, (a.batch, 32, 32, 3))
  batch = {"image": images, "label": jnp.arange(a.batch) % 10}
  weight_tx, _ = search.darts_weight_optimizer(total_steps=1000)
  arch_tx = search.darts_arch_optimizer()

  rows = {}
  for name in names:
    strategy = _strategy(name)
    init = lambda k, s=strategy: search.init_search_state(model, s, weight_tx, arch_tx, k,
                                                          images[:2])
    state = compiler.jit(init, cpu_preset=a.cpu_preset, ynn_fusions=False)(key)
    step = search.make_search_step(model, strategy, weight_tx, arch_tx,
                                   update_order="weights_first", total_steps=1000,
                                   cpu_preset=a.cpu_preset)
    t = time.perf_counter()
    lowered = step.lower(state, batch, batch)
    trace_s = time.perf_counter() - t
    r = bench.time_step(step, (state, batch, batch), a.steps,
                        lambda out, args: (out[0],) + tuple(args[1:]), lowered=lowered)
    rows[name] = {"trace_s": round(trace_s, 2), **r}
    print(json.dumps({
        "benchmark": "sampled_step", "label": a.label, **bench.device_info(),
        "date": time.strftime("%Y-%m-%d"), "strategy": name, "space": "nb201",
        "channels": a.channels, "layers": a.layers, "batch": a.batch, "steps": a.steps,
        "scan_inputs": model.scan_inputs, "pack": model.pack, "remat": model.remat,
        "compiler_options": compiler.options(a.cpu_preset, False), **rows[name]}), flush=True)
  if "gdas" in rows and "darts" in rows:
    g, d = rows["gdas"], rows["darts"]
    ratio = lambda k: (round(d[k] / g[k], 2) if d.get(k) and g.get(k) else None)
    print(json.dumps({
        "benchmark": "sampled_step_summary", "label": a.label, "channels": a.channels,
        "layers": a.layers, "batch": a.batch,
        "gdas_step_ms_median": g["step_ms_median"], "darts_step_ms_median": d["step_ms_median"],
        "step_speedup": ratio("step_ms_median"),
        "gdas_compile_s": g["compile_s"], "darts_compile_s": d["compile_s"],
        "compile_speedup": ratio("compile_s"),
        "gdas_flops": g.get("flops"), "darts_flops": d.get("flops")}), flush=True)


if __name__ == "__main__":
  main()
