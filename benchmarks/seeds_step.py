"""Benchmark of ``search.num_seeds``: K seeds' search steps vmapped into one program against K
separate single-seed steps; prints one JSON line per K.

Usage::

  python benchmarks/seeds_step.py --seeds 2 4 --space nb201 --channels 8 --layers 1 --batch 16

Both sides step the same supernet on random inputs of CIFAR's shape (the step's cost does not
depend on pixel values), each seed with its own state and batches: ``vmapped_ms`` is the median
time of one call of the vmapped step (``jax.vmap`` of ``make_search_step`` over the seed axis,
as ``dnas.seeds`` runs it), ``separate_ms`` the median time of K calls of the single-seed step,
one per seed, one after the other (as K runs in sequence step). ``speedup`` is their ratio.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnas import bench, compiler, search  # noqa: E402
from dnas.spaces import DartsSearchNet, NB201SearchNet  # noqa: E402
from dnas.strategies import darts  # noqa: E402


def _median_ms(call, steps):
  """Median wall time of ``call()`` over ``steps`` calls after one untimed call, in ms."""
  times = []
  for _ in range(steps + 1):
    t = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times[1:])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", type=int, nargs="+", default=[2, 4])
  p.add_argument("--space", default="nb201", choices=["darts", "nb201"])
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--order", type=int, default=1)
  p.add_argument("--steps", type=int, default=5, help="timed calls of each side")
  p.add_argument("--cpu-preset", default="fast_compile")
  a = p.parse_args()
  compiler.no_triton_gemm()
  compiler.low_memory_schedule()

  if a.space == "darts":
    model = DartsSearchNet(channels=a.channels, layers=a.layers)
  else:
    model = NB201SearchNet(channels=a.channels, cells_per_stage=a.layers)
  weight_tx, schedule = search.darts_weight_optimizer(total_steps=1000)
  strategy = darts(order=a.order, learning_rate=schedule)
  arch_tx = search.darts_arch_optimizer()
  init = jax.jit(lambda k: search.init_search_state(
      model, strategy, weight_tx, arch_tx, k, jnp.zeros((2, 32, 32, 3))))
  step_fn = search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False)
  single = compiler.jit(step_fn, cpu_preset=a.cpu_preset, donate_argnums=0)
  vmapped = compiler.jit(jax.vmap(step_fn), cpu_preset=a.cpu_preset, donate_argnums=0)

  def batches(key, k):
    ki, kl = jax.random.split(key)
    return {"image": jax.random.normal(ki, (k, a.batch, 32, 32, 3)),
            "label": jax.random.randint(kl, (k, a.batch), 0, 10)}

  for k in a.seeds:
    keys = [jax.random.key(s) for s in range(k)]
    states = [init(key) for key in keys]
    bt, bv = batches(jax.random.key(100), k), batches(jax.random.key(101), k)
    one = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    bts, bvs = [one(bt, i) for i in range(k)], [one(bv, i) for i in range(k)]

    t = time.perf_counter()
    jax.block_until_ready(single(states[0], bts[0], bvs[0]))
    states[0] = init(keys[0])  # the call above donated it
    single_compile_s = time.perf_counter() - t

    def separate():
      for i in range(k):
        states[i], _ = single(states[i], bts[i], bvs[i])
      return states

    separate_ms = _median_ms(separate, a.steps)

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(key) for key in keys])
    t = time.perf_counter()
    stacked, _ = vmapped(stacked, bt, bv)
    jax.block_until_ready(stacked)
    vmapped_compile_s = time.perf_counter() - t

    def together():
      nonlocal stacked
      stacked, _ = vmapped(stacked, bt, bv)
      return stacked

    vmapped_ms = _median_ms(together, a.steps)
    print(json.dumps({
        "benchmark": "seeds_step", **bench.device_info(), "space": a.space,
        "channels": a.channels, "layers": a.layers, "batch": a.batch, "order": a.order,
        "num_seeds": k, "steps": a.steps, "cpu_preset": a.cpu_preset,
        "single_compile_s": round(single_compile_s, 2),
        "vmapped_compile_s": round(vmapped_compile_s, 2),
        "separate_ms": round(separate_ms, 1), "vmapped_ms": round(vmapped_ms, 1),
        "speedup": round(separate_ms / vmapped_ms, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
  main()
