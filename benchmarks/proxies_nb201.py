r"""How well zero-cost proxies rank NAS-Bench-201 cells: Spearman rho against 12-epoch accuracy.

For ``--n`` random cells (seeded) of NAS-Bench-201, builds dnas' NB201 network (default C=8,
N=1: the smallest setting whose three stages and residual blocks are all present), scores it
with every registered proxy on one real CIFAR-10 training minibatch, and prints JSON: the
Spearman correlation of each proxy with the table's ``cifar10_valid`` (NAS-Bench-201's hp=12
validation accuracy) and each proxy's median time per cell. Timing: the first call of a
proxy on a cell (compilation included) and a second, compiled call; both medians are given.
Each cell compiles anew (its network differs), with XLA backend optimisation off.

Run::

  .venv/bin/python benchmarks/proxies_nb201.py --n 30 --seed 0 \
      --data ../shared/data/cifar10-jpeg.tar.gz

The correlations of a few dozen cells are noisy (rho's standard error is about
``1/sqrt(n - 3)``: 0.19 at n=30). No published figure is quoted here until checked against
the papers (Abdelfattah et al., ICLR 2021, rank all 15,625 cells at C=16, N=5).
"""

import argparse
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from dnas import data, eval_net, proxies
from dnas.benchmarks import load_nb201


def _batch(path: str, size: int, seed: int):
  ds = data.load("cifar10", path=path)
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(ds.train_labels), size, replace=False)
  images = (ds.train_images[idx].astype(np.float32) / 255.0 - ds.mean) / ds.std
  return {"image": jnp.asarray(images), "label": jnp.asarray(ds.train_labels[idx])}


def _score_cell(arch, batch, channels, cells, names, key):
  model = eval_net.NB201Network(arch, num_classes=10, channels=channels, cells_per_stage=cells)
  variables = jax.jit(lambda x: model.init(key, x, train=True))(batch["image"])
  f = proxies.flax_apply_fn(model)
  out = {}
  for name in names:
    x64 = proxies._REGISTRY[name].x64  # pylint: disable=protected-access
    with jax.enable_x64(x64):
      cast = (lambda t: jax.tree.map(lambda a: a.astype(jnp.float64)
                                     if jnp.issubdtype(a.dtype, jnp.floating) else a, t))
      v, b = (cast(variables), cast(batch)) if x64 else (variables, batch)
      t0 = time.perf_counter()
      fn = jax.jit(lambda v, b, n=name: proxies.get(n)(f, v, b)).lower(v, b).compile(
          {"xla_backend_optimization_level": 0})
      s = float(fn(v, b))
      t1 = time.perf_counter()
      float(fn(v, b))
      t2 = time.perf_counter()
    out[name] = (s, t1 - t0, t2 - t1)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=30)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--cells", type=int, default=1)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
  p.add_argument("--nb201_dir", default="../shared/nasbench")
  a = p.parse_args(argv)
  table = load_nb201(a.nb201_dir, latency=False)
  rows = random.Random(a.seed).sample(range(len(table)), a.n)
  acc = table.column("cifar10_valid")[rows]
  batch = _batch(a.data, a.batch, a.seed)
  names = proxies.names()
  scores = {n: [] for n in names}
  first, again = {n: [] for n in names}, {n: [] for n in names}
  for i, r in enumerate(rows):
    key = jax.random.key(a.seed + i)
    res = _score_cell(table.archs[r], batch, a.channels, a.cells, names, key)
    for n, (s, t_first, t_again) in res.items():
      scores[n].append(s)
      first[n].append(t_first)
      again[n].append(t_again)
  report = {"n": a.n, "seed": a.seed, "channels": a.channels, "cells_per_stage": a.cells,
            "batch": a.batch, "backend": jax.default_backend(), "proxies": {}}
  for n in names:
    s = np.asarray(scores[n])
    rho = stats.spearmanr(np.nan_to_num(s, neginf=-1e300, posinf=1e300), acc).statistic
    report["proxies"][n] = {"spearman": round(float(rho), 3),
                            "nonfinite": int((~np.isfinite(s)).sum()),
                            "median_s_with_compile": round(float(np.median(first[n])), 3),
                            "median_s_compiled": round(float(np.median(again[n])), 4)}
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
