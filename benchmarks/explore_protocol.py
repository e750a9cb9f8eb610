"""NAS-Bench-201's section 5 protocol for every strategy of ``experiments/explore_nb201.py``.

Runs ``dnas.explore.explore`` with each variant's settings (100 runs x 100 queries on the
12-epoch ``cifar10_valid``), one after the other in one process, and prints one JSON line per
strategy: the picked cells' mean and std of ``cifar10_valid`` and ``cifar10_test`` (12-epoch
figures), the mean query at which the pick was found, and the wall time (compilation included).

  DNAS_NB201_DIR=../shared/nasbench python benchmarks/explore_protocol.py [--runs 100]
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dnas import benchmarks, bench, explore, train_lib  # noqa: E402

CONFIG = os.path.join(REPO, "experiments", "explore_nb201.py")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", default=None, help="NAS-Bench-201 folder (default: $DNAS_NB201_DIR)")
  p.add_argument("--runs", type=int, default=None, help="override the configs' runs")
  p.add_argument("--budget", type=int, default=None, help="override the configs' budget")
  p.add_argument("--variants", default="random,rea,local_search,reinforce,bananas,nsga2")
  a = p.parse_args()
  table = benchmarks.load_nb201(a.data)
  print(json.dumps({"device": bench.device_info()}), flush=True)
  for variant in a.variants.split(","):
    e = train_lib.load_config(CONFIG, variant).explore
    r = explore.explore(e.strategy, table, metric=e.metric, budget=a.budget or e.budget,
                        runs=a.runs or e.runs, seed=e.seed, options=e.options.to_dict(),
                        constraints=list(e.constraints), objectives=list(e.objectives))
    found = [run["found_at"] for run in r["runs"] if run["found_at"]]
    out = {"variant": variant, "strategy": e.strategy, "options": r["options"],
           "runs": len(r["runs"]), "budget": r["budget"], "wall_s": r["wall_s"],
           "found_at_mean": sum(found) / max(len(found), 1)}
    for c in ("cifar10_valid", "cifar10_test", "pixel3_ms", "hypervolume"):
      if c in r["mean"]:
        out[c] = {"mean": round(r["mean"][c], 3), "std": round(r["std"][c], 3)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
