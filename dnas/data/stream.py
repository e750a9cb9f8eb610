"""Streaming input for datasets that do not fit in device memory (full ImageNet and the like).

The device-resident pipeline (``dnas.data.pipeline``) keeps a whole split on the accelerator.
When that is impossible, images are read from disk a batch at a time instead:

* a **source** gives random access to ``(uint8 [H, W, C] image, label)`` pairs: an image-folder
  tree ``[root/]{train,test}/CLASS/IMAGE`` (``FolderSource``), an uncompressed ``.tar`` of one,
  read at recorded offsets without extracting (``TarSource``), or a TFDS dataset through
  ``tfds.data_source`` (array_record files, no TensorFlow needed; ``TfdsSource``);
* ``train_batches`` / ``test_batches`` build a grain ``MapDataset`` over step indices and read it
  with grain's thread pool (``data.workers`` threads decoding ahead, in order), doing the
  per-image work on the host: decoding, and for ImageNet-style data Inception's random resized
  crop (training) or resize-and-centre-crop (evaluation);
* ``prefetch_to_device`` keeps the next batches already copied to the device, laid out with the
  batch sharding, while the current step runs;
* the rest of the augmentation (pad-and-crop, flip, normalisation, cutout) is the same jitted
  ``pipeline.augment`` the device-resident path uses.

Batch ``s`` depends only on ``(seed, s)``: the epoch order is ``default_rng([seed, epoch])``'s
permutation and each example's crop comes from ``default_rng([seed, 1, slot])`` with ``slot =
s * B + i``; so a run resumed at step ``s`` reads exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import functools
import os
import queue
import tarfile
import threading
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
from PIL import Image

from dnas.data import sources
from dnas.data.pipeline import steps_per_epoch
from dnas.data.sources import DataError

_SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff")


class StreamSource:
  """Random access to one split: ``len(source)``, ``source.read(i) -> (image, label)``.

  Attributes:
    class_names: the name of each label, in label order.
  """
  class_names: Tuple[str, ...]

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, i: int) -> Tuple[np.ndarray, int]:
    """Example ``i``: its image, ``uint8 [H, W, C]``, and its label."""
    raise NotImplementedError

  def where(self, i: int) -> str:
    """Example ``i``'s file, for messages."""
    raise NotImplementedError


class FolderSource(StreamSource):
  """Images under ``folder/CLASS/IMAGE`` files, decoded when read."""

  def __init__(self, files: Sequence[str], labels: Sequence[int], class_names: Sequence[str]):
    self.files = list(files)
    self.labels = np.asarray(labels, np.int32)
    self.class_names = tuple(class_names)

  def __len__(self) -> int:
    return len(self.files)

  def read(self, i: int) -> Tuple[np.ndarray, int]:
    try:
      with open(self.files[i], "rb") as f:
        data = f.read()
    except OSError as e:
      raise DataError(f"{self.files[i]}: cannot read ({e})") from e
    return (sources._decode_image(data, self.files[i]),  # pylint: disable=protected-access
            int(self.labels[i]))

  def where(self, i: int) -> str:
    return self.files[i]


class TarSource(StreamSource):
  """Images inside an uncompressed tar archive, read at their recorded offsets."""

  def __init__(self, path: str, members: Sequence[Tuple[str, int, int]], labels: Sequence[int],
               class_names: Sequence[str]):
    self.path = path
    self.members = list(members)  # (name, data offset, size)
    self.labels = np.asarray(labels, np.int32)
    self.class_names = tuple(class_names)

  def __len__(self) -> int:
    return len(self.members)

  def read(self, i: int) -> Tuple[np.ndarray, int]:
    name, offset, size = self.members[i]
    try:
      fd = os.open(self.path, os.O_RDONLY)
      try:
        data = os.pread(fd, size, offset)
      finally:
        os.close(fd)
    except OSError as e:
      raise DataError(f"{self.path}: cannot read member {name} ({e})") from e
    if len(data) != size:
      raise DataError(f"{self.path}:{name}: archive truncated ({len(data)} of {size} bytes)")
    image = sources._decode_image(data, f"{self.path}:{name}")  # pylint: disable=protected-access
    return image, int(self.labels[i])

  def where(self, i: int) -> str:
    return f"{self.path}:{self.members[i][0]}"


class TfdsSource(StreamSource):
  """A TFDS split read through ``tfds.data_source`` (array_record; no TensorFlow needed)."""

  def __init__(self, source: Any, name: str, split: str, class_names: Sequence[str]):
    self.source = source
    self.name = f"{name}[{split}]"
    self.class_names = tuple(class_names)

  def __len__(self) -> int:
    return len(self.source)

  def read(self, i: int) -> Tuple[np.ndarray, int]:
    return sources.tfds_example(self.source[int(i)])

  def where(self, i: int) -> str:
    return f"TFDS {self.name} example {i}"


def _image_files(folder: str) -> List[str]:
  return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def _find_root(names: Sequence[Tuple[str, ...]], source: str) -> Tuple[str, ...]:
  roots = {parts[:parts.index(s)] for parts in names for s in _SPLITS if s in parts}
  if not roots:
    raise DataError(f"{source}: no train/ or test/ folder; expected [root/]{{train,test}}/CLASS/IMAGE")
  return min(roots, key=len)


def _check_classes(source: str, prefix: str, per_split) -> Tuple[str, ...]:
  for split in _SPLITS:
    if not per_split[split]:
      raise DataError(f"{source}/{prefix}{split}/: no class folders with images; expected "
                      f"[root/]{{train,test}}/CLASS/IMAGE")
    for class_name, items in per_split[split].items():
      if not items:
        raise DataError(f"{source}/{prefix}{split}/{class_name}/: empty class folder")
  if set(per_split["train"]) != set(per_split["test"]):
    raise DataError(f"{source}: train and test classes differ (only in train: "
                    f"{sorted(set(per_split['train']) - set(per_split['test']))}, only in test: "
                    f"{sorted(set(per_split['test']) - set(per_split['train']))})")
  return tuple(sorted(per_split["train"]))


def open_local(path: str) -> Tuple[StreamSource, StreamSource]:
  """The train and test splits of an image-folder tree or an uncompressed ``.tar`` of one.

  Only the file names are read here (no decoding). Labels are the indices of the sorted class
  folder names, as in ``sources.load``.

  Raises:
    DataError: naming the path: missing, a compressed archive (which cannot be read at random
      offsets: extract it or repack it as ``.tar``), no split folders, an empty class folder,
      train and test classes that differ, or a file at the wrong depth.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file or folder")
  if os.path.isdir(path):
    return _open_folder(path)
  if path.endswith((".tar.gz", ".tgz")):
    raise DataError(f"{path}: a compressed archive cannot be streamed (no random access); "
                    f"extract it, repack it as an uncompressed .tar, or set "
                    f"data.streaming=False to decode it once into memory")
  if not path.endswith(".tar"):
    raise DataError(f"{path}: expected a folder or an uncompressed .tar archive")
  return _open_tar(path)


def _open_folder(path: str) -> Tuple[StreamSource, StreamSource]:
  root = path
  for _ in range(2):  # [root/]{train,test}: the split folders here or one level down
    if any(os.path.isdir(os.path.join(root, s)) for s in _SPLITS):
      break
    subdirs = [d for d in _image_files(root) if os.path.isdir(os.path.join(root, d))]
    if len(subdirs) != 1:
      break
    root = os.path.join(root, subdirs[0])
  per_split = {s: {} for s in _SPLITS}
  for split in _SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for class_name in _image_files(split_dir):
      class_dir = os.path.join(split_dir, class_name)
      if not os.path.isdir(class_dir):
        raise DataError(f"{class_dir}: file at the wrong depth; expected {split}/CLASS/IMAGE")
      files = []
      for fname in _image_files(class_dir):
        full = os.path.join(class_dir, fname)
        if os.path.isdir(full):
          raise DataError(f"{full}: unexpected folder; expected {split}/CLASS/IMAGE")
        files.append(full)
      per_split[split][class_name] = files
  prefix = os.path.relpath(root, path)
  class_names = _check_classes(path, "" if prefix == "." else prefix + "/", per_split)
  out = []
  for split in _SPLITS:
    files, labels = [], []
    for label, class_name in enumerate(class_names):
      files += per_split[split][class_name]
      labels += [label] * len(per_split[split][class_name])
    out.append(FolderSource(files, labels, class_names))
  return out[0], out[1]


def _open_tar(path: str) -> Tuple[StreamSource, StreamSource]:
  try:
    with tarfile.open(path, mode="r:") as archive:
      members = [(m.name, m.offset_data, m.size, m.isdir()) for m in archive.getmembers()
                 if m.isfile() or m.isdir()]
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f"{path}: not a readable uncompressed tar archive "
                    f"({type(e).__name__}: {e})") from e
  split_names = [tuple(p for p in m[0].split("/") if p not in ("", ".")) for m in members]
  visible = [(m, parts) for m, parts in zip(members, split_names)
             if parts and not sources._hidden(parts)]  # pylint: disable=protected-access
  root = _find_root([parts for _, parts in visible], path)
  per_split = {s: {} for s in _SPLITS}
  for (name, offset, size, is_dir), parts in visible:
    if parts[:len(root)] != root or len(parts) <= len(root) or parts[len(root)] not in _SPLITS:
      continue
    split, rest = parts[len(root)], parts[len(root) + 1:]
    if is_dir:
      if len(rest) == 1:
        per_split[split].setdefault(rest[0], [])
      elif len(rest) > 1:
        raise DataError(f"{path}:{name}: unexpected folder; expected {split}/CLASS/IMAGE")
      continue
    if len(rest) != 2:
      raise DataError(f"{path}:{name}: file at the wrong depth; expected {split}/CLASS/IMAGE")
    per_split[split].setdefault(rest[0], []).append((rest[1], (name, offset, size)))
  prefix = "/".join(root) + "/" if root else ""
  class_names = _check_classes(path, prefix, per_split)
  out = []
  for split in _SPLITS:
    items, labels = [], []
    for label, class_name in enumerate(class_names):
      entries = sorted(per_split[split][class_name])
      items += [member for _, member in entries]
      labels += [label] * len(entries)
    out.append(TarSource(path, items, labels, class_names))
  return out[0], out[1]


# name -> (TFDS name, train split, test split), for streaming.
_TFDS_STREAMS = {
    "imagenet2012": ("imagenet2012", "train", "validation"),
    **{k: (v[0], "train", v[1]) for k, v in sources._TFDS_SOURCES.items()  # pylint: disable=protected-access
       if v[2] is None},
}
TFDS_STREAM_NAMES = tuple(_TFDS_STREAMS)


def open_tfds(name: str, data_dir: Optional[str] = None) -> Tuple[StreamSource, StreamSource]:
  """The train and test splits of a prepared TFDS dataset, through ``tfds.data_source``.

  The dataset must have been prepared in the array_record format
  (``tfds.builder(name, file_format="array_record").download_and_prepare()``); reading needs
  tensorflow-datasets but not TensorFlow.

  Raises:
    DataError: unknown name, tensorflow-datasets missing, or the dataset cannot be opened.
  """
  if name not in _TFDS_STREAMS:
    raise DataError(f"data.name={name!r} cannot be streamed from TFDS; valid names: "
                    f"{', '.join(TFDS_STREAM_NAMES)} (or set data.path to a local folder or .tar)")
  tfds_name, train_split, test_split = _TFDS_STREAMS[name]
  tfds = sources.import_tfds(name, "set data.path to a local folder or .tar")
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    class_names = list(builder.info.features["label"].names)
    out = [TfdsSource(tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False),
                      tfds_name, split, class_names) for split in (train_split, test_split)]
  except Exception as e:  # noqa: BLE001 - TFDS raises many types for a dataset it cannot open
    raise DataError(
        f"TFDS dataset {tfds_name!r} cannot be streamed from data_dir="
        f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}); prepare it in the "
        f"array_record format, or set data.path to a local folder or .tar") from e
  return out[0], out[1]


# ------------------------------------------------------------------------------------------------
# Per-image host transforms.


def _to_rgb(image: np.ndarray) -> np.ndarray:
  return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception's crop (Szegedy et al., 2015), as torchvision's ``RandomResizedCrop``.

  A box of area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))`` at a uniform
  position (10 tries; else the central crop of the nearest allowed ratio), resized bilinearly
  to ``size x size``.
  """
  h, w = image.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      break
  else:
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
      ch, cw = h, int(round(h * ratio[1]))
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
  crop = image[top:top + ch, left:left + cw]
  return _resize(crop, size, size)


def resize_center_crop(image: np.ndarray, size: int, resize: Optional[int] = None) -> np.ndarray:
  """Scales the shorter side to ``resize`` (default ``round(size * 256 / 224)``), then takes the
  central ``size x size`` square: ImageNet's evaluation transform (Resize(256), CenterCrop(224))."""
  resize = int(round(size * 256 / 224)) if resize is None else int(resize)
  h, w = image.shape[:2]
  if h <= w:
    nh, nw = resize, max(resize, int(round(w * resize / h)))
  else:
    nw, nh = resize, max(resize, int(round(h * resize / w)))
  image = _resize(image, nh, nw)
  top, left = (nh - size) // 2, (nw - size) // 2
  return image[top:top + size, left:left + size]


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
  if image.shape[:2] == (h, w):
    return image
  squeeze = image.shape[2] == 1
  pil = Image.fromarray(image[:, :, 0] if squeeze else image)
  out = np.asarray(pil.resize((w, h), Image.BILINEAR), np.uint8)
  return out[:, :, None] if squeeze else out


# ------------------------------------------------------------------------------------------------
# Batches.


class _Reader:
  """Reads and transforms example ``i`` of a source; checks that every image has one shape."""

  def __init__(self, source: StreamSource, image_size: int, train: bool, seed: int):
    self.source = source
    self.image_size = int(image_size)
    self.train = train
    self.seed = int(seed)
    self.shape = None if self.image_size else source.read(0)[0].shape

  def __call__(self, i: int, slot: int) -> Tuple[np.ndarray, int]:
    image, label = self.source.read(i)
    if not 0 <= label < len(self.source.class_names):
      raise DataError(f"{self.source.where(i)}: label {label} outside the "
                      f"{len(self.source.class_names)} classes")
    if self.image_size:
      image = _to_rgb(image)
      if self.train:
        return random_resized_crop(image, self.image_size,
                                   np.random.default_rng([self.seed, 1, slot])), label
      return resize_center_crop(image, self.image_size), label
    if image.shape != self.shape:
      raise DataError(f"{self.source.where(i)}: image shape {image.shape} differs from "
                      f"{self.shape} of {self.source.where(0)}; set data.image_size to crop and "
                      f"resize every image to one size")
    return image, label


def _stack(items):
  images, labels = zip(*items)
  return np.stack(images), np.asarray(labels, np.int32)


def train_batches(source: StreamSource, batch_size: int, *, seed: int, start_step: int = 0,
                  num_steps: Optional[int] = None, image_size: int = 0, workers: int = 8,
                  indices: Optional[np.ndarray] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Training batches ``start_step, start_step + 1, ...`` as host ``(uint8 [B, H, W, C], int32 [B])``.

  Each epoch visits every example of ``indices`` (default: all) once in the order of
  ``default_rng([seed, epoch]).permutation``, dropping the remainder as the device-resident
  pipeline does. With ``image_size`` each image gets Inception's random resized crop to that
  size (seeded per example slot); otherwise images are returned as decoded, and must share one
  shape.

  Args:
    source: the training split.
    batch_size: ``B``.
    seed: the data order seed.
    start_step: the first step's index (a resumed run's step).
    num_steps: how many batches (default: without end).
    image_size: crop size for sources of mixed image sizes; 0 keeps the decoded images.
    workers: decoding threads (grain's ``ReadOptions.num_threads``).
    indices: the examples to use (e.g. a subset); default ``range(len(source))``.

  Returns:
    An iterator; the batches are decoded ``workers`` at a time, in order.
  """
  import grain  # pylint: disable=g-import-not-at-top
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  n = len(indices)
  spe = steps_per_epoch(n, batch_size)
  reader = _Reader(source, image_size, train=True, seed=seed)

  @functools.lru_cache(maxsize=2)
  def order(epoch: int) -> np.ndarray:
    return indices[np.random.default_rng([int(seed), int(epoch)]).permutation(n)]

  def example(slot: int):
    step, pos = divmod(int(slot), batch_size)
    epoch, k = divmod(step, spe)
    return reader(int(order(epoch)[k * batch_size + pos]), slot)

  start = int(start_step) * batch_size
  stop = start + int(num_steps) * batch_size if num_steps is not None else None
  ds = (grain.MapDataset.range(start, stop) if stop is not None
        else grain.MapDataset.range(start, 2**62))
  ds = ds.map(example).batch(batch_size, batch_fn=_stack)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, int(workers)),
                                                   prefetch_buffer_size=2 * max(1, int(workers)))))


def test_batches(source: StreamSource, batch_size: int, *, image_size: int = 0, workers: int = 8,
                 indices: Optional[np.ndarray] = None
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Every example of ``indices`` (default: all) once, in order, the last batch possibly smaller;
  with ``image_size``, each image resized and centre-cropped to that size."""
  import grain  # pylint: disable=g-import-not-at-top
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  if int(batch_size) < 1:
    raise DataError(f"batch_size={batch_size} must be positive")
  reader = _Reader(source, image_size, train=False, seed=0)

  def example(k: int):
    return reader(int(indices[int(k)]), k)

  ds = grain.MapDataset.range(len(indices)).map(example).batch(batch_size, batch_fn=_stack)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, int(workers)),
                                                   prefetch_buffer_size=2 * max(1, int(workers)))))


def prefetch_to_device(batches: Iterator[Any], size: int = 2,
                       sharding: Optional[jax.sharding.Sharding] = None) -> Iterator[Any]:
  """Copies the next ``size`` batches to the device (``jax.device_put``) on a background thread.

  Errors raised while reading are re-raised by ``next``; iteration ends with the input.
  """
  q: "queue.Queue" = queue.Queue(maxsize=max(1, int(size)))
  done = object()
  stop = threading.Event()

  def fill():
    try:
      for b in batches:
        item = jax.device_put(b, sharding) if sharding is not None else jax.device_put(b)
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except - handed to the consumer
      q.put(e)

  thread = threading.Thread(target=fill, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def estimate_stats(source: StreamSource, *, image_size: int = 0, max_images: int = 2048,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (pixels in [0, 1]) of up to ``max_images`` seeded random training
  images, as the test transform shows them; the whole split when it is smaller."""
  n = len(source)
  pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_images])
  reader = _Reader(source, image_size, train=False, seed=0)
  images = np.stack([reader(int(i), 0)[0] for i in pick])
  return sources.channel_stats(images)


__all__ = ["FolderSource", "StreamSource", "TFDS_STREAM_NAMES", "TarSource", "TfdsSource",
           "estimate_stats", "open_local", "open_tfds", "prefetch_to_device",
           "random_resized_crop", "resize_center_crop", "test_batches", "train_batches"]
