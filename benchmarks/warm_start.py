"""How long a search takes to start stepping: cold, warm (same config again) and resumed.

Usage::

  python benchmarks/warm_start.py [--channels 8 --layers 5 --nodes 4 --batch 8]
      [--path ../shared/data/cifar10-jpeg.tar.gz]

Four processes run ``train_lib.run_search`` one after another on the DARTS config with a fresh
persistent compilation cache, each stopping after its first step:

1. ``cold``: a new run folder, an empty compilation cache;
2. ``warm``: another new run folder, the same config, the cache the first process filled;
3. ``resume``: the first run folder again (it resumes from its checkpoint), the warm cache;
4. ``new_seed``: a third new run folder, the same config under another seed, the warm cache.

Each prints one JSON line: ``until_stepping_s`` (process start to the loop's line announcing
its first step, imports and data loading included), ``until_first_step_s`` (to the end of the
process, after its first step and checkpoint), the loop's own ``init_s`` (state
initialisation or checkpoint restore) and ``compile_s`` (tracing, lowering, and compiling or
loading from the cache, alongside the initialisation), and ``saved_trace``: whether the step
came from a saved trace (``dnas.aot``). The decoded-data cache is filled before the first
process, so no process decodes images.
The archive comes from ``--path``, else ``$DNAS_CIFAR10``, else
``../shared/data/cifar10-jpeg.tar.gz`` next to the repository.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")

CHILD = """
import sys
sys.path.insert(0, {repo!r})
from dnas import train_lib  # run_search sets XLA's process flags as `dnas search` does
c = train_lib.load_config({config!r}, "first_order")
c.update_from_flattened_dict({overrides!r})
train_lib.run_search(c, {workdir!r}, stop_after_steps={steps})
"""


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--layers", type=int, default=5)
  p.add_argument("--nodes", type=int, default=4)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--path", default=os.environ.get("DNAS_CIFAR10", DEFAULT_PATH))
  p.add_argument("--label", default="")
  p.add_argument("--logs", default="", help="a folder for each run's stdout and stderr")
  a = p.parse_args()
  if not os.path.exists(a.path):
    sys.exit(f"--path: no CIFAR-10 archive at {a.path} (or set DNAS_CIFAR10)")

  sys.path.insert(0, REPO)
  from dnas import bench  # pylint: disable=g-import-not-at-top
  from dnas import data as data_lib  # pylint: disable=g-import-not-at-top

  root = tempfile.mkdtemp(prefix="dnas_warm_start_")
  data_cache = os.path.join(root, "data")
  data_lib.load("cifar10", path=a.path, cache_dir=data_cache)  # decode once, outside the timing
  overrides = {
      "data.path": a.path, "data.cache_dir": data_cache, "data.batch_size": a.batch,
      "data.train_size": 8 * a.batch, "model.channels": a.channels, "model.layers": a.layers,
      "model.nodes": a.nodes, "search.epochs": 1, "log_every_steps": 1,
      "checkpoint_every_steps": 1, "compilation_cache_dir": os.path.join(root, "jax")}
  config = os.path.join(REPO, "experiments", "darts_cifar10.py")
  info = bench.device_info()
  runs = [("cold", "a", 1, {}), ("warm", "b", 1, {}), ("resume", "a", 2, {}),
          ("new_seed", "c", 1, {"seed": 3})]
  for name, workdir, steps, extra in runs:
    code = CHILD.format(repo=REPO, config=config, overrides={**overrides, **extra},
                        workdir=os.path.join(root, workdir), steps=steps)
    t = time.perf_counter()
    # The loop prints its "init ..., compile ..." line just before its first step.
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stdout, stepping = [], None
    for line in proc.stdout:
      stdout.append(line)
      if stepping is None and re.search(r"init [\d.]+s, compile", line):
        stepping = time.perf_counter() - t
    proc.wait()
    wall = time.perf_counter() - t
    stdout = "".join(stdout)
    if a.logs:
      os.makedirs(a.logs, exist_ok=True)
      with open(os.path.join(a.logs, f"{name}.log"), "w") as f:
        f.write(stdout)
    if proc.returncode:
      sys.exit(f"{name} run failed:\n{stdout[-3000:]}")
    m = re.search(r"init ([\d.]+)s, compile ([\d.]+)s", stdout)
    print(json.dumps({
        "benchmark": "warm_start", "label": a.label, "run": name, **info,
        "channels": a.channels, "layers": a.layers, "nodes": a.nodes, "batch": a.batch,
        "until_stepping_s": round(stepping, 1) if stepping else None,
        "until_first_step_s": round(wall, 1),
        "init_s": float(m.group(1)) if m else None,
        "compile_s": float(m.group(2)) if m else None,
        "saved_trace": "(saved trace)" in stdout}), flush=True)


if __name__ == "__main__":
  main()
