"""Tests of the data stage: sources and cache, split, on-device batches and augmentation."""

import gzip
import io
import os
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dnas import data
from dnas.data import sources

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


# ------------------------------------------------------------------------------------------------
# Small synthetic sources.


def _png(value, size=(4, 4)):
  buf = io.BytesIO()
  Image.new("RGB", size, color=(value, 255 - value, value // 2)).save(buf, format="PNG")
  return buf.getvalue()


def _make_folder(root, classes=("a", "b", "c"), per_class=(3, 2), size=(4, 4)):
  """Writes root/toy/{train,test}/CLASS/i.png; pixel value encodes split, class and index."""
  for s, split in enumerate(("train", "test")):
    for c, name in enumerate(classes):
      folder = os.path.join(root, "toy", split, name)
      os.makedirs(folder)
      for i in range(per_class[s]):
        with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
          f.write(_png(10 * c + i + 100 * s, size))
  return os.path.join(root, "toy")


def _make_archive(path, folder):
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname=os.path.basename(folder))
  return path


@pytest.fixture
def toy_folder(tmp_path):
  return _make_folder(str(tmp_path / "src"))


@pytest.fixture
def toy_archive(tmp_path, toy_folder):
  return _make_archive(str(tmp_path / "toy.tar.gz"), toy_folder)


def test_local_folder_and_archive_agree(tmp_path, toy_folder, toy_archive):
  from_folder = data.load(path=toy_folder, cache_dir=str(tmp_path / "c1"))
  from_archive = data.load(path=toy_archive, cache_dir=str(tmp_path / "c2"))
  for ds in (from_folder, from_archive):
    assert ds.class_names == ("a", "b", "c")
    assert ds.num_classes == 3
    assert ds.train_images.shape == (9, 4, 4, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (6, 4, 4, 3)
    assert ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1, 2, 2])
    # PNG is lossless: the red channel is 10 * class + index (+100 for test).
    np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], [0, 1, 2, 10, 11, 12, 20, 21, 22])
    np.testing.assert_array_equal(ds.test_images[:, 0, 0, 0], [100, 101, 110, 111, 120, 121])
    assert ds.mean.dtype == np.float32 and ds.mean.shape == (3,)
    np.testing.assert_allclose(ds.mean, ds.train_images.reshape(-1, 3).mean(0) / 255, rtol=1e-5)
    np.testing.assert_allclose(ds.std, ds.train_images.reshape(-1, 3).std(0) / 255, rtol=1e-4)
  for a, b in zip(from_folder, from_archive):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_archive_without_root_folder(tmp_path, toy_folder):
  path = str(tmp_path / "flat.tar")
  with tarfile.open(path, "w") as tar:
    for split in ("train", "test"):
      tar.add(os.path.join(toy_folder, split), arcname=split)
  ds = data.load(path=path, cache_dir=str(tmp_path / "c"))
  assert ds.train_images.shape == (9, 4, 4, 3)


def test_cache_is_used_and_keyed_by_content(tmp_path, toy_archive, monkeypatch):
  cache = tmp_path / "cache"
  first = data.load(path=toy_archive, cache_dir=str(cache))
  (cache_file,) = os.listdir(cache)
  assert cache_file.endswith(".npz")

  def no_decoding(*args):
    raise AssertionError("decoded although a cache exists")

  monkeypatch.setattr(sources, "_decode_archive", no_decoding)
  again = data.load(path=toy_archive, cache_dir=str(cache))
  np.testing.assert_array_equal(again.train_images, first.train_images)
  assert again.class_names == first.class_names and again.num_classes == 3
  # Different content, same file name: a new cache entry, not the stale one.
  monkeypatch.undo()
  other = _make_folder(str(tmp_path / "other"), classes=("x", "y"))
  _make_archive(toy_archive, other)
  changed = data.load(path=toy_archive, cache_dir=str(cache))
  assert changed.class_names == ("x", "y")
  assert len(os.listdir(cache)) == 2


def test_cache_dir_from_environment(tmp_path, toy_folder, monkeypatch):
  monkeypatch.setenv("DNAS_CACHE_DIR", str(tmp_path / "env_cache"))
  data.load(path=toy_folder)
  assert len(os.listdir(tmp_path / "env_cache")) == 1


def test_crash_while_caching_leaves_nothing(tmp_path, toy_archive, monkeypatch):
  cache = tmp_path / "cache"

  def savez_then_crash(f, **arrays):
    f.write(b"PK\x03\x04 half a zip file")
    raise RuntimeError("crash mid-write")

  monkeypatch.setattr(sources.np, "savez", savez_then_crash)
  with pytest.raises(RuntimeError, match="crash mid-write"):
    data.load(path=toy_archive, cache_dir=str(cache))
  assert os.listdir(cache) == []


def test_unwritable_cache_warns_and_still_loads(tmp_path, toy_archive, monkeypatch):
  cache = tmp_path / "cache"

  def savez_disk_full(f, **arrays):
    f.write(b"PK")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(sources.np, "savez", savez_disk_full)
  with pytest.warns(UserWarning, match="could not write the data cache"):
    ds = data.load(path=toy_archive, cache_dir=str(cache))
  assert ds.train_images.shape == (9, 4, 4, 3)
  assert os.listdir(cache) == []


def test_corrupt_cache_is_rebuilt(tmp_path, toy_archive):
  cache = tmp_path / "cache"
  data.load(path=toy_archive, cache_dir=str(cache))
  (name,) = os.listdir(cache)
  (cache / name).write_bytes(b"not a zip")
  with pytest.warns(UserWarning, match="unreadable cache"):
    ds = data.load(path=toy_archive, cache_dir=str(cache))
  assert ds.train_images.shape == (9, 4, 4, 3)
  data.load(path=toy_archive, cache_dir=str(cache))  # rebuilt: no warning needed now


# ------------------------------------------------------------------------------------------------
# Bad input: every error is a DataError naming the offending file or folder.


def test_missing_path(tmp_path):
  path = str(tmp_path / "nowhere.tar.gz")
  with pytest.raises(data.DataError, match="nowhere.tar.gz"):
    data.load(path=path, cache_dir=str(tmp_path / "c"))


def test_corrupt_archive(tmp_path):
  path = tmp_path / "corrupt.tar.gz"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(data.DataError, match="corrupt.tar.gz"):
    data.load(path=str(path), cache_dir=str(tmp_path / "c"))


def test_truncated_archive(tmp_path, toy_archive):
  blob = open(toy_archive, "rb").read()
  path = tmp_path / "truncated.tar.gz"
  path.write_bytes(blob[:len(blob) // 2])
  with pytest.raises(data.DataError, match="truncated.tar.gz"):
    data.load(path=str(path), cache_dir=str(tmp_path / "c"))


def test_gzip_of_garbage(tmp_path):
  path = tmp_path / "garbage.tgz"
  path.write_bytes(gzip.compress(b"this is not a tar file" * 100))
  with pytest.raises(data.DataError, match="garbage.tgz"):
    data.load(path=str(path), cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("as_archive", [False, True])
def test_non_image_file(tmp_path, toy_folder, as_archive):
  with open(os.path.join(toy_folder, "train", "b", "notes.txt"), "w") as f:
    f.write("not an image")
  path = _make_archive(str(tmp_path / "bad.tar.gz"), toy_folder) if as_archive else toy_folder
  with pytest.raises(data.DataError, match=r"notes\.txt") as info:
    data.load(path=path, cache_dir=str(tmp_path / "c"))
  assert path in str(info.value)


@pytest.mark.parametrize("as_archive", [False, True])
def test_empty_class_folder(tmp_path, toy_folder, as_archive):
  for split in ("train", "test"):
    os.makedirs(os.path.join(toy_folder, split, "d"))
  path = _make_archive(str(tmp_path / "empty.tar.gz"), toy_folder) if as_archive else toy_folder
  with pytest.raises(data.DataError, match="empty class folder") as info:
    data.load(path=path, cache_dir=str(tmp_path / "c"))
  assert path in str(info.value) and "d" in str(info.value)


def test_classes_differ_between_splits(tmp_path, toy_folder):
  os.makedirs(os.path.join(toy_folder, "train", "z"))
  with open(os.path.join(toy_folder, "train", "z", "0.png"), "wb") as f:
    f.write(_png(7))
  with pytest.raises(data.DataError, match="only in train: \\['z'\\]") as info:
    data.load(path=toy_folder, cache_dir=str(tmp_path / "c"))
  assert toy_folder in str(info.value)


def test_image_shape_mismatch(tmp_path, toy_folder):
  with open(os.path.join(toy_folder, "test", "a", "big.png"), "wb") as f:
    f.write(_png(7, size=(5, 4)))
  with pytest.raises(data.DataError, match=r"big\.png"):
    data.load(path=toy_folder, cache_dir=str(tmp_path / "c"))


def test_no_split_folders(tmp_path):
  folder = tmp_path / "nothing_here"
  folder.mkdir()
  with pytest.raises(data.DataError, match="nothing_here"):
    data.load(path=str(folder), cache_dir=str(tmp_path / "c"))


def test_num_classes_mismatch(tmp_path, toy_archive):
  with pytest.raises(data.DataError, match="num_classes=10") as info:
    data.load(path=toy_archive, cache_dir=str(tmp_path / "c"), num_classes=10)
  assert toy_archive in str(info.value)
  assert data.load(path=toy_archive, cache_dir=str(tmp_path / "c"), num_classes=3).num_classes == 3


def test_not_an_archive(tmp_path):
  path = tmp_path / "images.zip"
  path.write_bytes(b"PK")
  with pytest.raises(data.DataError, match="images.zip"):
    data.load(path=str(path), cache_dir=str(tmp_path / "c"))


# ------------------------------------------------------------------------------------------------
# TFDS: name checks run without tensorflow-datasets; loading needs it (mocked, no network: the
# probe is patched to "reachable" so that a mocked download_and_prepare may run if needed).


def test_unknown_tfds_name_lists_valid_names():
  with pytest.raises(data.DataError, match="imagenet16-120") as info:
    data.load(name="cifar11")
  assert "cifar11" in str(info.value) and "cifar100" in str(info.value)


def test_tfds_missing_says_how_to_fix(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
  with pytest.raises(data.DataError, match="pip install tensorflow-datasets") as info:
    data.load(name="cifar10")
  assert "--config.data.path=" in str(info.value)


def test_tfds_mocked_cifar10(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(sources, "_network_reachable", lambda timeout=3.0: True)
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load(name="cifar10", num_classes=10)
  assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.train_labels.max() < 10
  # The mock's metadata has no label names: ClassLabel(num_classes=10) names them "0".."9".
  assert ds.num_classes == 10 and len(ds.class_names) == 10
  assert ds.mean.shape == (3,) and np.all(ds.std > 0)


def test_tfds_mocked_imagenet16_120_keeps_120_classes(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(sources, "_network_reachable", lambda timeout=3.0: True)
  with tfds.testing.mock_data(num_examples=64):
    ds = data.load(name="imagenet16-120", num_classes=120)
  assert ds.train_images.shape[1:] == (16, 16, 3)
  assert ds.train_labels.max(initial=0) < 120 and ds.test_labels.max(initial=0) < 120


def test_tfds_no_network_is_a_clear_error(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  def not_prepared(*args, **kwargs):
    raise AssertionError("Dataset cifar10 not found in data_dir")

  monkeypatch.setattr(tfds, "load", not_prepared)
  monkeypatch.setattr(sources, "_network_reachable", lambda timeout=3.0: False)
  with pytest.raises(data.DataError, match="no network access") as info:
    data.load(name="cifar10", data_dir=str(tmp_path))
  assert "--config.data.path=" in str(info.value)


# ------------------------------------------------------------------------------------------------
# The real CIFAR-10 archive (skipped when absent).


@pytest.fixture(scope="session")
def cifar10_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cifar10_cache"))


@pytest.fixture(scope="session")
def cifar10(cifar10_archive, cifar10_cache):
  return data.load(path=cifar10_archive, cache_dir=cifar10_cache)


def test_cifar10_contents(cifar10):
  ds = cifar10
  assert ds.class_names == CIFAR10_CLASSES and ds.num_classes == 10
  assert ds.train_images.shape == (50_000, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10_000, 32, 32, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), [1000] * 10)
  # Measured on this copy: mean [0.491, 0.482, 0.447], std [0.245, 0.243, 0.261]; the original
  # CIFAR-10 has [0.4914, 0.4822, 0.4465] and [0.2470, 0.2435, 0.2616] (JPEG smooths a little).
  assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32
  np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465], atol=0.02)
  np.testing.assert_allclose(ds.std, [0.2470, 0.2435, 0.2616], atol=0.03)
  # A different class really is different data (labels follow folders, not archive order).
  per_class = [ds.train_images[ds.train_labels == c][:500].mean() for c in range(10)]
  assert len(set(np.round(per_class, 3))) == 10


def test_cifar10_second_load_hits_cache(cifar10, cifar10_archive, cifar10_cache, monkeypatch):
  assert len([f for f in os.listdir(cifar10_cache) if f.endswith(".npz")]) == 1

  def no_decoding(*args):
    raise AssertionError("decoded although a cache exists")

  monkeypatch.setattr(sources, "_decode_archive", no_decoding)
  monkeypatch.setattr(sources.tarfile, "open", no_decoding)
  again = data.load(path=cifar10_archive, cache_dir=cifar10_cache, num_classes=10)
  assert again.class_names == cifar10.class_names
  np.testing.assert_array_equal(again.test_labels, cifar10.test_labels)
  np.testing.assert_array_equal(again.train_images[::997], cifar10.train_images[::997])
  np.testing.assert_array_equal(again.mean, cifar10.mean)


def test_cifar10_num_classes_mismatch(cifar10, cifar10_archive, cifar10_cache):
  with pytest.raises(data.DataError, match="cifar10-jpeg") as info:
    data.load(path=cifar10_archive, cache_dir=cifar10_cache, num_classes=100)
  assert "num_classes=100" in str(info.value)


# ------------------------------------------------------------------------------------------------
# search_split and steps_per_epoch.


@pytest.mark.parametrize("n,portion", [(10, 0.5), (11, 0.5), (50_000, 0.5), (7, 0.3)])
def test_search_split(n, portion):
  train_idx, val_idx = data.search_split(n, train_portion=portion, seed=0)
  assert train_idx.dtype == np.int32 and val_idx.dtype == np.int32
  assert len(train_idx) == int(np.floor(n * portion)) and len(val_idx) == n - len(train_idx)
  assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
  assert not set(train_idx.tolist()) & set(val_idx.tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(n))
  again = data.search_split(n, train_portion=portion, seed=0)
  np.testing.assert_array_equal(again[0], train_idx)
  np.testing.assert_array_equal(again[1], val_idx)


def test_search_split_seeds():
  a, _ = data.search_split(1000, seed=0)
  b, _ = data.search_split(1000, seed=1)
  assert not np.array_equal(a, b)
  first, rest = data.search_split(10, seed=None)  # DARTS' code: no permutation
  np.testing.assert_array_equal(first, np.arange(5))
  np.testing.assert_array_equal(rest, np.arange(5, 10))


@pytest.mark.parametrize("n,portion", [(1, 0.5), (10, 0.0), (10, 1.0), (10, 0.05)])
def test_search_split_bad_input(n, portion):
  with pytest.raises(data.DataError, match="train_portion"):
    data.search_split(n, train_portion=portion)


def test_steps_per_epoch():
  assert data.steps_per_epoch(50_000, 64) == 781
  assert data.steps_per_epoch(10, 10) == 1
  with pytest.raises(data.DataError, match="batch_size"):
    data.steps_per_epoch(10, 11)
  with pytest.raises(data.DataError, match="batch_size"):
    data.steps_per_epoch(10, 0)


# ------------------------------------------------------------------------------------------------
# On-device batches and augmentation, on tiny arrays.

N, H, W, C = 12, 8, 8, 3
MEAN = np.array([0.5, 0.4, 0.3], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)
STATIC = ("batch_size", "crop_padding", "flip", "cutout", "train")
get_batch = jax.jit(data.get_batch, static_argnames=STATIC)


def _index_images(n=N):
  """Each image is unique and asymmetric; its labels are its own index."""
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (n, H, W, C), dtype=np.uint8)
  return data.to_device(images, np.arange(n))


def _normalised(images):
  return (np.asarray(images, np.float32) / 255 - MEAN) / STD


def test_to_device():
  dd = _index_images()
  assert isinstance(dd.images, jax.Array) and dd.images.dtype == jnp.uint8
  assert dd.labels.dtype == jnp.int32 and dd.labels.shape == (N,)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  placed = data.to_device(np.zeros((2, 1, 1, 1), np.uint8), np.zeros(2, np.int64), sharding)
  assert placed.images.sharding == sharding and placed.labels.dtype == jnp.int32
  with pytest.raises(data.DataError, match="uint8"):
    data.to_device(np.zeros((2, 1, 1, 1), np.float32), np.zeros(2))
  with pytest.raises(data.DataError, match="labels"):
    data.to_device(np.zeros((2, 1, 1, 1), np.uint8), np.zeros(3, np.int32))


# Every test below draws batches of B from N = 12 examples (2 steps an epoch) with one of a few
# static configurations, so the whole section compiles get_batch only a handful of times.
B = 6


def test_batch_without_augmentation_is_normalised_source():
  dd = _index_images()
  key = jax.random.PRNGKey(0)
  for train in (True, False):
    batch = get_batch(dd, key, 1, B, MEAN, STD, crop_padding=0, flip=False, cutout=0,
                      train=train)
    assert batch["image"].shape == (B, H, W, C) and batch["image"].dtype == jnp.float32
    assert batch["label"].shape == (B,) and batch["label"].dtype == jnp.int32
    idx = np.asarray(batch["label"])
    expected = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), N))[B:2 * B]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(batch["image"], _normalised(np.asarray(dd.images)[idx]),
                               rtol=1e-6, atol=1e-6)


def test_every_index_once_per_epoch():
  dd = _index_images()
  key = jax.random.PRNGKey(3)
  per_epoch = data.steps_per_epoch(N, B)
  epochs = []
  for epoch in range(3):
    labels = [get_batch(dd, key, epoch * per_epoch + s, B, MEAN, STD)["label"]
              for s in range(per_epoch)]
    seen = np.concatenate(labels)
    np.testing.assert_array_equal(np.sort(seen), np.arange(N))
    epochs.append(seen)
  assert len({tuple(e) for e in epochs}) > 1  # a fresh order each epoch
  # With a remainder (12 = 2 * 5 + 2): distinct indices within the epoch, 2 left out.
  seen = np.concatenate([data.epoch_indices(key, s, N, 5) for s in range(2)])
  assert len(set(seen.tolist())) == 10


def test_same_key_and_step_same_batch_and_one_compilation():
  dd = _index_images()
  traces = []

  @jax.jit
  def draw(dd, key, step):
    traces.append(1)
    return data.get_batch(dd, key, step, B, MEAN, STD, crop_padding=4, flip=True, cutout=4)

  key = jax.random.PRNGKey(0)
  a = draw(dd, key, jnp.asarray(5))
  b = draw(dd, key, jnp.asarray(5))
  c = draw(dd, key, jnp.asarray(6))
  d = draw(dd, jax.random.PRNGKey(1), jnp.asarray(5))
  assert len(traces) == 1
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], c["image"])
  assert not np.array_equal(a["image"], d["image"])
  # Step 7 is step 5's position in the next epoch: a new order, and new augmentation keys.
  e = draw(dd, key, jnp.asarray(7))
  assert not np.array_equal(a["image"], e["image"])


def test_flip_only_is_exact_flip():
  dd = _index_images()
  src = np.asarray(dd.images)
  flipped = 0
  for step in range(6):
    batch = get_batch(dd, jax.random.PRNGKey(0), step, B, MEAN, STD, crop_padding=0, flip=True,
                      cutout=0)
    for image, i in zip(np.asarray(batch["image"]), np.asarray(batch["label"])):
      plain = _normalised(src[i])
      mirror = _normalised(src[i][:, ::-1])
      if np.allclose(image, mirror, atol=1e-6):
        flipped += 1
      else:
        np.testing.assert_allclose(image, plain, atol=1e-6)
  assert 0 < flipped < 6 * B  # both outcomes occur


def test_crop_and_flip_give_one_window_of_the_zero_padded_image():
  dd = _index_images()
  src = np.asarray(dd.images)
  pad = 4
  offsets_seen = set()
  for step in range(4):
    batch = get_batch(dd, jax.random.PRNGKey(0), step, B, MEAN, STD)  # DARTS' defaults
    assert batch["image"].shape == (B, H, W, C)
    for image, i in zip(np.asarray(batch["image"]), np.asarray(batch["label"])):
      padded = np.pad(src[i], ((pad, pad), (pad, pad), (0, 0)))
      matches = [(y, x, f) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
                 for f in (False, True)
                 if np.allclose(image, _normalised(
                     padded[y:y + H, x:x + W][:, ::-1] if f else padded[y:y + H, x:x + W]),
                                atol=1e-6)]
      assert len(matches) == 1, "the output is exactly one (mirrored) window of the padded image"
      offsets_seen.add(matches[0])
  assert len(offsets_seen) > 5


def test_crop_and_flip_match_manual_version_with_the_same_keys():
  dd = _index_images()
  key, step, pad = jax.random.PRNGKey(7), 2, 4
  batch = get_batch(dd, key, step, B, MEAN, STD)
  idx = np.asarray(data.epoch_indices(key, step, N, B))
  np.testing.assert_array_equal(batch["label"], idx)
  k_crop, k_flip, _ = jax.random.split(jax.random.fold_in(key, step), 3)
  offsets = np.asarray(jax.random.randint(k_crop, (B, 2), 0, 2 * pad + 1))
  flips = np.asarray(jax.random.bernoulli(k_flip, 0.5, (B,)))
  src = np.asarray(dd.images)
  for b in range(B):
    padded = np.pad(src[idx[b]], ((pad, pad), (pad, pad), (0, 0)))
    y, x = offsets[b]
    window = padded[y:y + H, x:x + W]
    window = window[:, ::-1] if flips[b] else window
    np.testing.assert_allclose(batch["image"][b], _normalised(window), atol=1e-6)


def test_cutout_zeroes_a_clipped_square():
  h = w = 32
  images = np.full((8, h, w, 3), 200, np.uint8)  # constant, nonzero after normalisation
  dd = data.to_device(images, np.arange(8))
  areas = []
  for step in range(8):
    batch = get_batch(dd, jax.random.PRNGKey(0), step, 8, MEAN, STD, crop_padding=0, flip=False,
                 cutout=16)
    for image in np.asarray(batch["image"]):
      zero = np.all(image == 0.0, axis=-1)
      assert np.all(zero == np.any(image == 0.0, axis=-1))  # all channels or none
      rows, cols = np.nonzero(zero)
      assert rows.size > 0
      # The zeros fill their bounding box, which is at most 16x16 and touches a border
      # whenever it is smaller than 16 in that direction.
      top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
      assert zero[top:bottom, left:right].all() and zero.sum() == (bottom - top) * (right - left)
      assert bottom - top <= 16 and right - left <= 16
      if bottom - top < 16:
        assert top == 0 or bottom == h
      if right - left < 16:
        assert left == 0 or right == w
      nonzero = image[~zero]
      np.testing.assert_allclose(nonzero, np.broadcast_to(_normalised(200), nonzero.shape)
                                 .reshape(nonzero.shape), atol=1e-6)
      areas.append(zero.sum())
  assert 256 in areas and max(areas) == 256


def test_cutout_centre_far_from_border_cuts_exactly_size_squared():
  images = jnp.ones((64, 32, 32, 1), jnp.float32)
  out = np.asarray(data.random_cutout(jax.random.PRNGKey(0), images, 16))
  ky, kx = jax.random.split(jax.random.PRNGKey(0))
  cy = np.asarray(jax.random.randint(ky, (64, 1), 0, 32))[:, 0]
  cx = np.asarray(jax.random.randint(kx, (64, 1), 0, 32))[:, 0]
  for b in range(64):
    cut = out[b, ..., 0] == 0
    if 8 <= cy[b] <= 24 and 8 <= cx[b] <= 24:
      assert cut.sum() == 256
      assert cut[cy[b] - 8:cy[b] + 8, cx[b] - 8:cx[b] + 8].all()
    assert cut[cy[b], cx[b]]  # the centre is always cut


def test_eval_batches_cover_every_example_once():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, H, W, C), dtype=np.uint8)
  labels = np.arange(10)
  for source in (images, jnp.asarray(images)):
    batches = list(data.eval_batches(source, labels, 4, MEAN, STD))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 2]
    assert all(b["label"].dtype == jnp.int32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)
    np.testing.assert_allclose(np.concatenate([b["image"] for b in batches]),
                               _normalised(images), atol=1e-6)


_SHARDED_BATCH = r"""
import jax, numpy as np
from dnas import data
assert jax.device_count() == 2, jax.devices()
rng = np.random.default_rng(0)
dd = data.to_device(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 10)
kw = dict(batch_size=8, mean=[0.5] * 3, std=[0.25] * 3, cutout=4)
key = jax.random.key(3)
sh = data.batch_sharding(8)
got = jax.jit(lambda k, s: data.get_batch(dd, k, s, sharding=sh, **kw))(key, 5)
want = jax.jit(lambda k, s: data.get_batch(dd, k, s, **kw))(key, 5)
for name in ("image", "label"):
  shards = got[name].addressable_shards
  assert [s.data.shape[0] for s in shards] == [4, 4], name
  assert {s.device for s in shards} == set(jax.devices()), name
  np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
try:
  data.batch_sharding(7)
except data.DataError as e:
  assert "data.batch_size=7" in str(e), e
else:
  raise AssertionError("batch 7 over 2 devices accepted")
print("OK")
"""


def test_batches_split_over_devices_along_the_batch_axis():
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  r = subprocess.run([sys.executable, "-c", _SHARDED_BATCH], env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]
