"""Where images come from: TFDS, or a local image-folder archive, decoded once and cached.

``load`` returns an ``ArrayDataset`` of host (numpy) arrays; the pipeline module puts them on
the device. Local sources follow the image-folder layout ``[root/]{train,test}/CLASS/IMAGE``,
either as a folder or as a ``.tar``/``.tar.gz``/``.tgz`` archive read as a stream (nothing is
extracted). Labels are the indices of the class folder names in sorted order, which for the
CIFAR-10 folder names is CIFAR-10's official order.

Decoding 60,000 JPEGs takes seconds, so the decoded arrays are cached as one ``.npz`` file whose
name carries a hash of the source: sha256 of the archive's bytes, or, for a folder, of every
file's relative path, size and mtime. A changed source therefore never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import socket
import tarfile
import tempfile
import warnings
import zlib
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

# Bump when the cached arrays' meaning changes (decoder, ordering, fields): old caches are ignored.
_CACHE_VERSION = 1
_SPLITS = ("train", "test")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_HINT = "pass --config.data.path=/path/to/cifar10-jpeg.tar.gz to use a local copy"


class DataError(ValueError):
  """A data source is missing, malformed or inconsistent; the message names the file or field."""


class ArrayDataset(NamedTuple):
  """A labelled image dataset in host memory.

  Attributes:
    train_images: ``uint8 [N, H, W, C]``.
    train_labels: ``int32 [N]``, in ``[0, num_classes)``.
    test_images: ``uint8 [M, H, W, C]``.
    test_labels: ``int32 [M]``.
    class_names: the name of each label, in label order.
    num_classes: ``len(class_names)``.
    mean: ``float32 [C]``, per-channel mean of the train images scaled to ``[0, 1]``.
    std: ``float32 [C]``, per-channel (population) standard deviation, same scale.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: Tuple[str, ...]
  num_classes: int
  mean: np.ndarray
  std: np.ndarray


# name -> (TFDS name, test split, number of leading classes kept or None).
_TFDS_SOURCES: Dict[str, Tuple[str, str, Optional[int]]] = {
    "cifar10": ("cifar10", "test", None),
    "cifar100": ("cifar100", "test", None),
    "svhn_cropped": ("svhn_cropped", "test", None),
    "mnist": ("mnist", "test", None),
    "fashion_mnist": ("fashion_mnist", "test", None),
    "imagenet_resized/16x16": ("imagenet_resized/16x16", "validation", None),
    "imagenet_resized/32x32": ("imagenet_resized/32x32", "validation", None),
    # NAS-Bench-201's ImageNet16-120: the 16x16 images whose label is below 120.
    "imagenet16-120": ("imagenet_resized/16x16", "validation", 120),
}
TFDS_NAMES = tuple(_TFDS_SOURCES)


def load(name: str = "cifar10", path: Optional[str] = None, data_dir: Optional[str] = None,
         cache_dir: Optional[str] = None, num_classes: Optional[int] = None) -> ArrayDataset:
  """Loads a labelled image dataset into host memory.

  With ``path=None`` the dataset ``name`` comes from tensorflow-datasets (imported here, only
  when needed). Otherwise ``path`` is a local archive (``.tar``, ``.tar.gz``, ``.tgz``) or folder
  in the layout ``[root/]{train,test}/CLASS/IMAGE``; it is decoded once and cached as ``.npz``.

  ``"imagenet16-120"`` follows NAS-Bench-201's recipe (16x16 ImageNet, labels below 120) on
  TFDS' ``imagenet_resized/16x16``, whose labels are in sorted-WordNet-id order; NAS-Bench-201
  used Chrabaszcz et al.'s files, whose label order differs, so its 120 classes are not the same.

  Args:
    name: a TFDS source, one of ``TFDS_NAMES``; with ``path`` given, only a label for messages.
    path: a local archive or folder, or ``None`` for TFDS.
    data_dir: TFDS' data directory (``None``: TFDS' default).
    cache_dir: where decoded local sources are cached; default ``$DNAS_CACHE_DIR`` or
      ``~/.cache/dnas``.
    num_classes: if given, the number of classes the caller expects; a mismatch is an error.

  Returns:
    An ``ArrayDataset``.

  Raises:
    DataError: the source is missing, unreadable or malformed, TFDS is missing or cannot
      download, or ``num_classes`` disagrees with the data.

  Example:
    >>> ds = data.load(path="../shared/data/cifar10-jpeg.tar.gz")  # doctest: +SKIP
    >>> ds.train_images.shape, ds.class_names[0]  # doctest: +SKIP
    ((50000, 32, 32, 3), 'airplane')
  """
  if path is None:
    arrays = _load_tfds(name, data_dir)
    where = f"TFDS dataset {name!r}"
  else:
    arrays = _load_local(os.path.expanduser(os.fspath(path)), cache_dir)
    where = str(path)
  if num_classes is not None and int(num_classes) != arrays.num_classes:
    raise DataError(
        f"{where}: num_classes={num_classes} was requested but the data has "
        f"{arrays.num_classes} classes ({', '.join(arrays.class_names[:12])}"
        f"{', ...' if arrays.num_classes > 12 else ''})")
  return arrays


def channel_stats(images: np.ndarray, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and population std of ``uint8 [N, H, W, C]`` images scaled to [0, 1].

  Computed from each channel's 256-bin histogram, which needs no float copy of the images and
  is exact up to the final float64 sums.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
    raise DataError(f"channel_stats: expected non-empty uint8 [N, H, W, C] images, got "
                    f"{images.dtype} {images.shape}")
  channels = images.shape[-1]
  counts = np.zeros((channels, 256), np.int64)
  for start in range(0, images.shape[0], chunk):  # chunks keep bincount's int64 copy small
    pixels = images[start:start + chunk].reshape(-1, channels)
    for c in range(channels):
      counts[c] += np.bincount(pixels[:, c], minlength=256)
  values = np.arange(256, dtype=np.float64) / 255.0
  mean, std = [], []
  for c in range(channels):
    p = counts[c] / counts[c].sum()
    m = float(p @ values)
    mean.append(m)
    std.append(np.sqrt(max(float(p @ np.square(values - m)), 0.0)))
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _make_dataset(train_images, train_labels, test_images, test_labels,
                  class_names) -> ArrayDataset:
  mean, std = channel_stats(train_images)
  return ArrayDataset(
      train_images=np.ascontiguousarray(train_images, np.uint8),
      train_labels=np.asarray(train_labels, np.int32),
      test_images=np.ascontiguousarray(test_images, np.uint8),
      test_labels=np.asarray(test_labels, np.int32),
      class_names=tuple(str(c) for c in class_names),
      num_classes=len(class_names),
      mean=mean, std=std)


# ------------------------------------------------------------------------------------------------
# Local sources: archive or folder, cached.


def default_cache_dir() -> str:
  return os.environ.get("DNAS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "dnas")


def _is_archive(path: str) -> bool:
  return path.lower().endswith(_ARCHIVE_SUFFIXES)


def _load_local(path: str, cache_dir: Optional[str]) -> ArrayDataset:
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file or folder (data.path)")
  if os.path.isdir(path):
    digest = _folder_digest(path)
  elif _is_archive(path):
    digest = _file_digest(path)
  else:
    raise DataError(f"{path}: expected a folder or a {'/'.join(_ARCHIVE_SUFFIXES)} archive")
  cache_path = os.path.join(cache_dir or default_cache_dir(),
                            f"{_source_stem(path)}-{digest[:24]}.npz")
  cached = _read_cache(cache_path)
  if cached is not None:
    return cached
  if os.path.isdir(path):
    decoded = _decode_folder(path)
  else:
    decoded = _decode_archive(path)
  dataset = _make_dataset(*decoded)
  _write_cache(cache_path, dataset, source=path)
  return dataset


def _source_stem(path: str) -> str:
  base = os.path.basename(os.path.normpath(path))
  for suffix in _ARCHIVE_SUFFIXES:
    if base.lower().endswith(suffix):
      base = base[:-len(suffix)]
      break
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "data"


def _file_digest(path: str) -> str:
  h = hashlib.sha256(f"dnas-cache-v{_CACHE_VERSION}\0".encode())
  try:
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e})") from e
  return h.hexdigest()


def _folder_digest(path: str) -> str:
  h = hashlib.sha256(f"dnas-cache-v{_CACHE_VERSION}\0folder\0".encode())
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for fname in sorted(files):
      full = os.path.join(root, fname)
      st = os.stat(full)
      rel = os.path.relpath(full, path).replace(os.sep, "/")
      h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def _read_cache(cache_path: str) -> Optional[ArrayDataset]:
  if not os.path.exists(cache_path):
    return None
  try:
    with np.load(cache_path, allow_pickle=False) as z:
      fields = {k: z[k] for k in ArrayDataset._fields}
  except Exception as e:  # noqa: BLE001 - any unreadable cache is a miss, rebuilt below
    warnings.warn(f"{cache_path}: unreadable cache ignored and rebuilt ({e!r})")
    return None
  return ArrayDataset(
      train_images=fields["train_images"], train_labels=fields["train_labels"],
      test_images=fields["test_images"], test_labels=fields["test_labels"],
      class_names=tuple(str(c) for c in fields["class_names"]),
      num_classes=int(fields["num_classes"]),
      mean=fields["mean"], std=fields["std"])


def _write_cache(cache_path: str, dataset: ArrayDataset, source: str) -> None:
  """Writes the cache atomically: a temporary file in the same folder, fsync, then rename.

  ``dnas.io.atomic_write_bytes`` would need the whole ``.npz`` (~200 MB for CIFAR-10) as one
  bytes object; this streams ``np.savez`` into the temporary file instead. A cache that cannot
  be written (read-only home, full disk) only costs the next run a decode, so an ``OSError`` is
  a warning; anything else propagates. Either way no partial file is left behind.
  """
  folder = os.path.dirname(os.path.abspath(cache_path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(cache_path)}.",
                               suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      arrays = dataset._asdict()
      arrays["class_names"] = np.asarray(dataset.class_names, dtype=str)
      arrays["num_classes"] = np.asarray(dataset.num_classes, np.int64)
      arrays["source"] = np.asarray(str(source))
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, cache_path)
    tmp = None
  except OSError as e:
    warnings.warn(f"{cache_path}: could not write the data cache ({e}); continuing without it")
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


class _Item(NamedTuple):
  split: str
  class_name: str
  sort_key: str  # the file's path inside the split/class folder, for a stable order
  image: np.ndarray


def _split_layout(parts: List[str]) -> Optional[Tuple[int, str]]:
  """Index and name of the first ``train``/``test`` component, or None."""
  for i, p in enumerate(parts):
    if p in _SPLITS:
      return i, p
  return None


def _hidden(parts: Iterable[str]) -> bool:
  return any(p.startswith(".") or p == "__MACOSX" for p in parts)


# Telling Pillow the likely format skips probing every plugin (~10% of decoding time).
_FORMAT_HINTS = {".jpg": ("JPEG",), ".jpeg": ("JPEG",), ".png": ("PNG",)}


def _open_image(data: bytes, where: str) -> Image.Image:
  hint = _FORMAT_HINTS.get(os.path.splitext(where)[1].lower())
  if hint is not None:
    try:
      return Image.open(io.BytesIO(data), formats=hint)
    except Exception:  # noqa: BLE001 - misnamed file: let Pillow try every format below
      pass
  return Image.open(io.BytesIO(data))


def _decode_image(data: bytes, where: str) -> np.ndarray:
  try:
    with _open_image(data, where) as im:
      im.load()
      if im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in ("1", "I;16", "I", "F") else "RGB")
      array = np.asarray(im, dtype=np.uint8)
  except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input
    raise DataError(f"{where}: not a readable image ({type(e).__name__}: {e})") from e
  if array.ndim == 2:
    array = array[:, :, None]
  return array


class _Collector:
  """Gathers decoded images under ``[root/]{train,test}/CLASS/FILE`` and checks the layout."""

  def __init__(self, source: str, sep: str):
    self.source = source
    self.sep = sep  # how a member is named in messages: "archive:member" or a path
    self.root: Optional[Tuple[str, ...]] = None
    self.items: List[_Item] = []
    self.class_dirs: Dict[str, set] = {s: set() for s in _SPLITS}
    self.first: Optional[Tuple[str, Tuple[int, ...]]] = None

  def where(self, rel: str) -> str:
    return f"{self.source}{self.sep}{rel}"

  def _locate(self, rel: str, is_dir: bool) -> Optional[Tuple[str, List[str]]]:
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or _hidden(parts):
      return None
    found = _split_layout(parts)
    if found is None:
      return None  # README, LICENSE and the like outside the split folders
    i, split = found
    root = tuple(parts[:i])
    if self.root is None:
      self.root = root
    elif root != self.root:
      raise DataError(
          f"{self.where(rel)}: split folder under {'/'.join(root) or '.'}, but earlier ones were "
          f"under {'/'.join(self.root) or '.'}; expected one [root/]{{train,test}}/CLASS/IMAGE")
    rest = parts[i + 1:]
    if is_dir and len(rest) > 1:
      raise DataError(f"{self.where(rel)}: unexpected folder; expected {split}/CLASS/IMAGE")
    return split, rest

  def add_dir(self, rel: str) -> None:
    located = self._locate(rel, is_dir=True)
    if located is not None and len(located[1]) == 1:
      self.class_dirs[located[0]].add(located[1][0])

  def add_file(self, rel: str, read) -> None:
    located = self._locate(rel, is_dir=False)
    if located is None:
      return
    split, rest = located
    if len(rest) != 2:
      raise DataError(f"{self.where(rel)}: file at the wrong depth; expected "
                      f"{split}/CLASS/IMAGE")
    image = _decode_image(read(), self.where(rel))
    if self.first is None:
      self.first = (rel, image.shape)
    elif image.shape != self.first[1]:
      raise DataError(f"{self.where(rel)}: image shape {image.shape} differs from "
                      f"{self.first[1]} of {self.where(self.first[0])}")
    self.class_dirs[split].add(rest[0])
    self.items.append(_Item(split, rest[0], rest[1], image))

  def finish(self):
    root = "/".join(self.root or ())
    prefix = f"{root}/" if root else ""
    counts = {s: {} for s in _SPLITS}
    for item in self.items:
      counts[item.split][item.class_name] = counts[item.split].get(item.class_name, 0) + 1
    for split in _SPLITS:
      if not self.class_dirs[split]:
        raise DataError(f"{self.where(prefix + split)}/: no class folders with images; expected "
                        f"[root/]{{train,test}}/CLASS/IMAGE")
      for class_name in sorted(self.class_dirs[split]):
        if not counts[split].get(class_name):
          raise DataError(f"{self.where(f'{prefix}{split}/{class_name}')}/: empty class folder")
    if self.class_dirs["train"] != self.class_dirs["test"]:
      only_train = sorted(self.class_dirs["train"] - self.class_dirs["test"])
      only_test = sorted(self.class_dirs["test"] - self.class_dirs["train"])
      raise DataError(f"{self.source}: train and test classes differ (only in train: "
                      f"{only_train}, only in test: {only_test})")
    class_names = sorted(self.class_dirs["train"])
    label_of = {c: i for i, c in enumerate(class_names)}
    out = []
    for split in _SPLITS:
      items = sorted((it for it in self.items if it.split == split),
                     key=lambda it: (label_of[it.class_name], it.sort_key))
      images = np.stack([it.image for it in items])
      labels = np.asarray([label_of[it.class_name] for it in items], np.int32)
      out += [images, labels]
    return (*out, class_names)


def _decode_archive(path: str):
  """Decodes every image of a tar archive, read as one stream (no seeking, no extraction)."""
  collector = _Collector(path, ":")
  try:
    with tarfile.open(path, mode="r|*") as archive:
      for member in archive:
        if member.isdir():
          collector.add_dir(member.name)
        elif member.isfile():
          collector.add_file(member.name, lambda m=member: archive.extractfile(m).read())
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"{path}: not a readable tar archive ({type(e).__name__}: {e})") from e
  return collector.finish()


def _decode_folder(path: str):
  collector = _Collector(path, os.sep)
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for d in dirs:
      collector.add_dir(os.path.relpath(os.path.join(root, d), path))
    for fname in sorted(files):
      full = os.path.join(root, fname)

      def read(full=full):
        try:
          with open(full, "rb") as f:
            return f.read()
        except OSError as e:
          raise DataError(f"{full}: cannot read ({e})") from e

      collector.add_file(os.path.relpath(full, path), read)
  return collector.finish()


# ------------------------------------------------------------------------------------------------
# TFDS.

_PROBE_HOSTS = (("storage.googleapis.com", 443),)


def _network_reachable(timeout: float = 3.0) -> bool:
  """One quick TCP connect, so that a machine without network fails at once instead of retrying."""
  for host, port in _PROBE_HOSTS:
    try:
      with socket.create_connection((host, port), timeout=timeout):
        return True
    except OSError:
      continue
  return False


def import_tfds(name: str, hint: str):
  """``tensorflow_datasets``, imported when first needed; a DataError naming ``data.name`` and
  saying what to do (``hint``) if it is not installed."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"data.name={name!r} needs tensorflow-datasets, which is not installed: "
                    f"pip install tensorflow-datasets, or {hint}") from e
  return tfds


def tfds_example(example) -> Tuple[np.ndarray, int]:
  """One TFDS example as ``(uint8 [H, W, C] image, int label)`` (a grayscale image gets C=1)."""
  image = np.asarray(example["image"], np.uint8)
  return (image[:, :, None] if image.ndim == 2 else image), int(example["label"])


def _read_all(source) -> Tuple[np.ndarray, np.ndarray]:
  """Every example of a TFDS data source as ``(uint8 [N, H, W, C], labels [N])``."""
  images, labels = zip(*(tfds_example(source[i]) for i in range(len(source))))
  return np.stack(images), np.asarray(labels, np.int64)


def _load_tfds(name: str, data_dir: Optional[str]) -> ArrayDataset:
  if name not in _TFDS_SOURCES:
    raise DataError(f"data.name={name!r} is not a known dataset; valid names: "
                    f"{', '.join(TFDS_NAMES)} (or set data.path to a local archive or folder)")
  tfds_name, test_split, keep = _TFDS_SOURCES[name]
  tfds = import_tfds(name, _HINT)

  def fetch(download: bool):
    if importlib.util.find_spec("tensorflow") is None:
      # Without TensorFlow, TFDS reads array_record files through its random-access
      # data_source (the format `tfds build --file_format=array_record` writes).
      info = tfds.builder(tfds_name, data_dir=data_dir).info
      splits = [tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
                for split in ("train", test_split)]
      return (*[_read_all(src) for src in splits], info)
    (train, test), info = tfds.load(
        tfds_name, split=["train", test_split], batch_size=-1, as_supervised=True,
        data_dir=data_dir, download=download, with_info=True)
    return tfds.as_numpy(train), tfds.as_numpy(test), info

  try:
    train, test, info = fetch(download=False)
  except Exception as e:  # noqa: BLE001 - not prepared in data_dir; try to download it below
    if not _network_reachable():
      raise DataError(
          f"TFDS dataset {tfds_name!r} could not be read from data_dir="
          f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}) and there is no network "
          f"access to download it; {_HINT}") from e
    try:
      train, test, info = fetch(download=True)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types when a download fails
      raise DataError(
          f"TFDS download of {tfds_name!r} failed ({type(e).__name__}: {e}); {_HINT}") from e

  class_names = list(info.features["label"].names)
  (train_x, train_y), (test_x, test_y) = train, test
  train_y = np.asarray(train_y)
  test_y = np.asarray(test_y)
  if keep is not None:
    train_x, train_y = train_x[train_y < keep], train_y[train_y < keep]
    test_x, test_y = test_x[test_y < keep], test_y[test_y < keep]
    class_names = class_names[:keep]
  return _make_dataset(train_x, train_y, test_x, test_y, class_names)


__all__ = ["ArrayDataset", "DataError", "TFDS_NAMES", "channel_stats", "default_cache_dir", "load"]
