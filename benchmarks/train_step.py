"""Benchmark of the retraining step of a genotype's network; prints one JSON line per dtype.

Usage::

  python benchmarks/train_step.py                              # DARTS_V2, C=36, 20 cells, batch 96
  python benchmarks/train_step.py --channels 16 --layers 8 --batch 16 --steps 5   # CPU-sized

The step of ``experiments/train_cifar10.py`` (the DARTS CIFAR recipe: SGD with momentum,
weight decay, clip 5, auxiliary head 0.4, drop-path 0.2) on random inputs of CIFAR's shape.
Each dtype is compiled and timed in the same process, so the variants are compared in one run.
``peak_mem_bytes`` is what the backend's allocator reports (GPUs; ``null`` on the CPU);
``xla_peak_bytes_estimate`` is XLA's buffer plan for the step (arguments + outputs - donated
buffers + temporaries), reported on every backend. The same as
``dnas bench train --config experiments/train_cifar10.py --genotype DARTS_V2 --json``.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dnas import bench, compiler, published, train_lib  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--genotype", default="DARTS_V2")
  p.add_argument("--channels", type=int, default=36)
  p.add_argument("--layers", type=int, default=20)
  p.add_argument("--batch", type=int, default=96)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--cpu-preset", default="fast_compile",
                 help="XLA's CPU optimisation preset: fast_compile, default or fast_runtime")
  p.add_argument("--ynn-fusions", choices=["on", "off"], default="on",
                 help="XLA CPU YNNPACK fusions (dnas.compiler; the retraining default: on)")
  p.add_argument("--label", default="")
  a = p.parse_args()
  compiler.no_triton_gemm()  # as `dnas train` does

  c = train_lib.load_config(os.path.join(ROOT, "experiments", "train_cifar10.py"))
  c.model.channels, c.model.layers, c.data.batch_size = a.channels, a.layers, a.batch
  c.xla_cpu_ynn_fusions = a.ynn_fusions == "on"
  for row in bench.bench_train(c, published.get(a.genotype), a.steps, 10, (32, 32, 3),
                               a.dtypes.split(","), cpu_preset=a.cpu_preset):
    print(json.dumps({**row, "label": a.label, "genotype": a.genotype}), flush=True)


if __name__ == "__main__":
  main()
