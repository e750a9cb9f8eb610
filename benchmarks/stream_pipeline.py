"""Throughput of the streaming pipeline (``dnas.data.stream``): disk -> decode -> device.

Run from the repository root:

  python benchmarks/stream_pipeline.py [--path ../shared/data/cifar10-jpeg.tar.gz] \
      [--images 4096] [--workers 1,2,4] [--workdir /tmp/dnas_stream_bench]

Two image sets are written to ``--workdir`` (outside the repository) from the real CIFAR-10
archive, once:

* ``cifar``: the first ``--images`` training JPEGs as they are (32x32), streamed without
  resizing, as a CIFAR retraining run with ``data.streaming=True`` reads them;
* ``imagenet_like``: the first ``--images / 8`` of them upscaled to 500x375 and re-encoded as
  JPEG quality 90 (ImageNet's typical size and format), streamed with ``image_size=224``
  (decode, Inception crop, resize), as the ImageNet recipe reads them.

Each configuration runs ``train_batches`` -> ``prefetch_to_device`` -> the jitted ``augment``
(flip and normalisation on the device; compiled beforehand) for ``--steps`` batches, epochs
repeating as needed, timed from the iterator's creation to the last batch: one JSON line per
configuration with the sustained images/s.
"""

import argparse
import json
import os
import sys
import tarfile
import time

import jax
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnas import data  # noqa: E402
from dnas.data import stream  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def _write_sets(archive_path, workdir, n):
  done = os.path.join(workdir, f"done_{n}")
  if os.path.exists(done):
    return
  per_class = {}
  with tarfile.open(archive_path, "r|*") as archive:
    for member in archive:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) != 4:
        continue
      _, split, cls, fname = parts
      k = per_class.get((split, cls), 0)
      if k >= (n // 10 if split == "train" else 2):
        continue
      per_class[(split, cls)] = k + 1
      raw = archive.extractfile(member).read()
      out = os.path.join(workdir, "cifar", split, cls, fname)
      os.makedirs(os.path.dirname(out), exist_ok=True)
      with open(out, "wb") as f:
        f.write(raw)
      if k < max(1, n // 80) or split == "test":
        big = os.path.join(workdir, "imagenet_like", split, cls, fname)
        os.makedirs(os.path.dirname(big), exist_ok=True)
        Image.open(out).convert("RGB").resize((500, 375), Image.BILINEAR).save(big, quality=90)
  open(done, "w").close()


def time_config(name, source, batch_size, workers, image_size, steps):
  mean, std = [0.5] * 3, [0.25] * 3
  augment = jax.jit(lambda x, y, step: data.augment(
      x, y, jax.random.key(0), step, mean, std, crop_padding=0 if image_size else 4,
      flip=True))
  shape = (image_size, image_size, 3) if image_size else source.read(0)[0].shape
  x = jax.numpy.zeros((batch_size,) + tuple(shape), jax.numpy.uint8)
  jax.block_until_ready(augment(x, jax.numpy.zeros((batch_size,), jax.numpy.int32), 0))
  # Timed from the iterator's creation to the last batch on the device: start-up and every
  # batch count, so read-ahead buffers cannot inflate the rate.
  start = time.perf_counter()
  batches = stream.prefetch_to_device(stream.train_batches(
      source, batch_size, seed=0, num_steps=steps, image_size=image_size, workers=workers),
      size=2)
  for step, (x, y) in enumerate(batches):
    jax.block_until_ready(augment(x, y, step))
  total = time.perf_counter() - start
  device = jax.devices()[0]
  return {"benchmark": "stream_pipeline", "device": f"{device.platform}:{device.device_kind}",
          "cpus": os.cpu_count(), "set": name, "images": len(source),
          "image_size": image_size or list(shape[:2]),
          "batch_size": batch_size, "workers": workers, "steps": steps,
          "images_per_s": round(batch_size * steps / total, 1),
          "batch_ms_mean": round(1e3 * total / steps, 2)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--path", default=os.environ.get("DNAS_CIFAR10", DEFAULT_PATH))
  parser.add_argument("--workdir", default="/tmp/dnas_stream_bench")
  parser.add_argument("--images", type=int, default=4096)
  parser.add_argument("--workers", default="1,2,4")
  parser.add_argument("--steps", type=int, default=40)
  args = parser.parse_args(argv)
  _write_sets(args.path, args.workdir, args.images)
  cifar, _ = stream.open_local(os.path.join(args.workdir, "cifar"))
  big, _ = stream.open_local(os.path.join(args.workdir, "imagenet_like"))
  for workers in [int(w) for w in args.workers.split(",")]:
    for batch_size in (64, 256):
      print(json.dumps(time_config("cifar", cifar, batch_size, workers, 0, args.steps)),
            flush=True)
    print(json.dumps(time_config("imagenet_like", big, 32, workers, 224, args.steps)),
          flush=True)


if __name__ == "__main__":
  sys.exit(main())
