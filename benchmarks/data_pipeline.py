"""Throughput of the on-device batch pipeline (``dnas.data.get_batch``) on CIFAR-10.

Run from the repository root:

  python benchmarks/data_pipeline.py [--path ../shared/data/cifar10-jpeg.tar.gz] [--steps 200]

The archive path comes from ``--path``, else ``$DNAS_CIFAR10``, else
``../shared/data/cifar10-jpeg.tar.gz`` next to the repository. The train split is put on the
default device once; each configuration (batch 64 and 256, cutout 0 and 16, DARTS' crop and
flip) is jitted, warmed up, then timed step by step with ``block_until_ready``. Prints one JSON
line per configuration.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax

from dnas import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def time_config(dd, mean, std, batch_size, cutout, steps, warmup):
  batch_fn = jax.jit(functools.partial(
      data.get_batch, batch_size=batch_size, crop_padding=4, flip=True, cutout=cutout,
      train=True))
  key = jax.random.PRNGKey(0)
  for step in range(warmup):
    jax.block_until_ready(batch_fn(dd, key, step, mean=mean, std=std))
  times = []
  for step in range(warmup, warmup + steps):
    start = time.perf_counter()
    jax.block_until_ready(batch_fn(dd, key, step, mean=mean, std=std))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  device = jax.devices()[0]
  return {
      "benchmark": "data_pipeline",
      "device": f"{device.platform}:{device.device_kind}",
      "batch_size": batch_size,
      "cutout": cutout,
      "images_per_s_median": round(batch_size / median, 1),
      "step_ms_median": round(1e3 * median, 3),
      "step_ms_min": round(1e3 * min(times), 3),
      "steps": steps,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--path", default=os.environ.get("DNAS_CIFAR10", DEFAULT_PATH))
  parser.add_argument("--cache_dir", default=None, help="default: $DNAS_CACHE_DIR or ~/.cache/dnas")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--batch_sizes", default="64,256")
  parser.add_argument("--cutouts", default="0,16")
  args = parser.parse_args(argv)

  ds = data.load(path=args.path, cache_dir=args.cache_dir)
  dd = data.to_device(ds.train_images, ds.train_labels)
  mean, std = jax.device_put(ds.mean), jax.device_put(ds.std)
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    for cutout in [int(c) for c in args.cutouts.split(",")]:
      result = time_config(dd, mean, std, batch_size, cutout, args.steps, args.warmup)
      print(json.dumps(result), flush=True)


if __name__ == "__main__":
  sys.exit(main())
