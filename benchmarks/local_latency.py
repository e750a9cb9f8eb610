r"""This machine's latency for every NAS-Bench-201 cell: measure a sample, fit, predict, check.

Measures ``--cells`` random cells (seeded) of NAS-Bench-201 with ``dnas.latency.measure``
(dnas' NB201 network, C=16, N=5, inference at ``--batch``), into ``OUT/measured.csv``
(resumable: rerun the same command after a crash). Then fits the additive per-(edge, op) model
on a random ``1 - --holdout`` share of them and reports its error on the rest (R^2, Spearman's
rho, median absolute error in ms), refits on all measured cells and writes every cell's
prediction to ``OUT/local_latency.csv``, which ``dnas explore --table`` joins to the benchmark.
Prints one JSON line; also the Spearman rho of the measured cells against each device column
of the shared table (which published device this machine ranks cells most like).

Run::

  .venv/bin/python benchmarks/local_latency.py --cells 60 --out runs/local_latency \
      --benchmark ../shared/nasbench
  dnas explore --config experiments/explore_nb201.py:nsga2 --benchmark ../shared/nasbench \
      --table runs/local_latency/local_latency.csv --objective latency:local_cpu_b1_ms

Compiling dominates on a CPU (seconds to tens of seconds per cell at full XLA optimisation).
Timings are only as good as the machine is quiet.
"""

import argparse
import json
import os
import time

import jax
import numpy as np
from scipy import stats

from dnas import benchmarks, latency
from dnas.strategies import cost as cost_lib


def _errors(pred, y):
  ss = float(np.sum((y - y.mean()) ** 2))
  return {"r2": 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else 1.0,
          "spearman": float(stats.spearmanr(pred, y)[0]),
          "median_abs_ms": float(np.median(np.abs(pred - y)))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cells", type=int, default=60)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--holdout", type=float, default=0.25)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  p.add_argument("--benchmark", default=None, help="NB201 tables' folder ($DNAS_NB201_DIR)")
  a = p.parse_args()
  nb = benchmarks.load_nb201(a.benchmark)
  rng = np.random.default_rng(a.seed)
  sample = [nb.archs[i] for i in rng.choice(len(nb), a.cells, replace=False)]
  column = latency.default_column(a.batch)
  os.makedirs(a.out, exist_ok=True)
  t0 = time.time()
  compile_s = []

  def measure(arch):
    out = latency.measure(arch, batch_size=a.batch, repeats=a.repeats)
    compile_s.append(out["compile_s"])
    return out["median_ms"]

  measured = latency.measure_csv(sample, os.path.join(a.out, "measured.csv"), column,
                                 measure_fn=measure)
  wall = time.time() - t0
  y = measured.column(column)
  n_test = max(1, int(round(a.holdout * len(measured))))
  perm = rng.permutation(len(measured))
  test, train = perm[:n_test], perm[n_test:]
  fit_on = benchmarks.Table("train", [measured.archs[i] for i in train], range(len(train)),
                            {column: y[train]}, benchmarks.canonical_nb201)
  held, _ = latency.predict_table(fit_on, column, [measured.archs[i] for i in test])
  full, report = latency.predict_table(measured, column, nb.archs, nb.index,
                                       name="local_latency")
  benchmarks.write_csv(full, os.path.join(a.out, "local_latency.csv"))
  rows = [nb.row_of(arch) for arch in measured.archs]
  devices = {c: float(stats.spearmanr(nb.column(c)[rows], y)[0])
             for c in nb.column_names if c.endswith("_ms")}
  shared_r2 = cost_lib.fit_report(nb)
  print(json.dumps({
      "device": str(jax.devices()[0]), "column": column, "cells": len(measured),
      "batch": a.batch, "repeats": a.repeats, "measure_wall_s": round(wall, 1),
      "median_compile_s": float(np.median(compile_s)) if compile_s else None,
      "measured_ms": {"min": float(y.min()), "median": float(np.median(y)),
                      "max": float(y.max())},
      "held_out": {"cells": int(n_test), **_errors(held.column(column), y[test])},
      "fit_r2_all_measured": report["r2"],
      "spearman_vs_table_devices": dict(sorted(devices.items(), key=lambda kv: -kv[1])),
      "table_devices_fit_r2": shared_r2,
  }))


if __name__ == "__main__":
  main()
