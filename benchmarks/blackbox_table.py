"""Benchmark of ask/tell search on the NAS-Bench-201 table: JAX (scan + vmap) vs a Python loop.

Usage::

  DNAS_NB201_DIR=../shared/nasbench python benchmarks/blackbox_table.py --runs 10 --budget 1000

For each strategy, the same ``--runs`` searches (same keys) run twice: all at once in JAX
(``run_on_table``: ``lax.scan`` over the budget, ``vmap`` over runs; compile time apart) and one
after another in the Python-loop runner (``run``: jitted ask and tell, a numpy table lookup as
the evaluator). Prints one JSON object: median seconds per run for each, whether both give the
same histories, and NAS-Bench-201's protocol result (search on ``cifar10_valid``, report the
``cifar10_test`` of the best-valid arch, mean and std over runs; Dong & Yang, ICLR 2020).
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnas import benchmarks, blackbox  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", default=None, help="NAS-Bench-201 folder (default: $DNAS_NB201_DIR)")
  p.add_argument("--runs", type=int, default=10)
  p.add_argument("--budget", type=int, default=1000)
  p.add_argument("--repeats", type=int, default=5, help="timed repeats of the JAX batch")
  p.add_argument("--strategies",
                 default="random_search,regularized_evolution,reinforce,bananas")
  args = p.parse_args()

  table = benchmarks.load_nb201(args.data, latency=False)
  space = blackbox.nb201_space(table)
  valid = table.column("cifar10_valid")
  test = table.column("cifar10_test")
  lookup = np.asarray(space.lookup)
  strides = np.asarray(space.flat_index(np.eye(6, dtype=np.int32)))
  keys = jax.random.split(jax.random.key(0), args.runs)
  out = {"device": str(jax.devices()[0]), "runs": args.runs, "budget": args.budget,
         "strategies": {}}
  for name in args.strategies.split(","):
    strategy = blackbox.get(name)
    fn = blackbox.make_run_on_table(strategy, space, args.budget)
    scores = jnp.asarray(valid, jnp.float32)
    t = time.perf_counter()
    compiled = fn.lower(scores, keys).compile()
    compile_s = time.perf_counter() - t
    batch_s = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      hist = jax.block_until_ready(compiled(scores, keys))
      batch_s.append(time.perf_counter() - t)
    hist = blackbox.History(*(np.asarray(a) for a in hist))

    loop_s, same = [], True
    for i in range(args.runs):
      t = time.perf_counter()
      one = blackbox.run(strategy, space, lambda c: valid[lookup[c @ strides]], args.budget,
                         keys[i])
      loop_s.append(time.perf_counter() - t)
      same &= all(np.array_equal(a, b[i]) for a, b in zip(one, hist))

    best_step = np.argmax(hist.scores, axis=1)
    rows = lookup[hist.codes[np.arange(args.runs), best_step] @ strides]
    summary = blackbox.summarize(hist, test[rows])
    out["strategies"][name] = {
        "jax_vmap_s_per_run": float(np.median(batch_s)) / args.runs,
        "jax_compile_s": compile_s,
        "python_loop_s_per_run": float(np.median(loop_s)),
        "python_loop_first_run_s": loop_s[0],  # includes compiling ask and tell
        "speedup": float(np.median(loop_s)) / (float(np.median(batch_s)) / args.runs),
        "same_histories": bool(same),
        "cifar10_valid_best_mean": summary["best_mean"],
        "cifar10_test_of_pick_mean": summary["reported_mean"],
        "cifar10_test_of_pick_std": summary["reported_std"],
    }
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
