"""The streaming pipeline (dnas.data.stream): sources, batches, transforms, device prefetch."""

import json
import os
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from dnas import data, published, train_lib
from dnas.data import stream

TRAIN_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments", "train_cifar10.py")


def _smoke_config():
  return train_lib.load_config(TRAIN_CONFIG, "smoke")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
PER_CLASS = {"train": 10, "test": 4}


@pytest.fixture(scope="module")
def subset_folder(cifar10_archive, tmp_path_factory):
  """The first images of each class of the real CIFAR-10 archive, as a folder tree."""
  root = tmp_path_factory.mktemp("cifar_subset")
  taken = {}
  with tarfile.open(cifar10_archive, "r|*") as archive:
    for member in archive:
      parts = member.name.split("/")
      if not member.isfile() or len(parts) != 4:
        continue
      _, split, cls, fname = parts
      if taken.get((split, cls), 0) >= PER_CLASS[split]:
        continue
      taken[(split, cls)] = taken.get((split, cls), 0) + 1
      out = root / "cifar10" / split / cls / fname
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(archive.extractfile(member).read())
  return str(root)


@pytest.fixture(scope="module")
def subset_tar(subset_folder, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cifar_tar") / "subset.tar")
  with tarfile.open(path, "w") as archive:
    archive.add(os.path.join(subset_folder, "cifar10"), arcname="cifar10")
  return path


def _all(batches):
  images, labels = zip(*batches)
  return np.concatenate(images), np.concatenate(labels)


def test_folder_and_tar_read_what_the_array_loader_decodes(subset_folder, subset_tar, tmp_path):
  ds = data.load(path=subset_folder, cache_dir=str(tmp_path))
  for path in (subset_folder, subset_tar):
    train, test = stream.open_local(path)
    assert train.class_names == CIFAR10_CLASSES == test.class_names
    assert len(train) == 100 and len(test) == 40
    # In order (test_batches), the streamed split equals the in-memory loader's arrays.
    images, labels = _all(stream.test_batches(test, 16, workers=3))
    np.testing.assert_array_equal(images, ds.test_images)
    np.testing.assert_array_equal(labels, ds.test_labels)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [4] * 10)
    images, labels = _all(stream.test_batches(train, 32, workers=2))
    np.testing.assert_array_equal(images, ds.train_images)
    np.testing.assert_array_equal(labels, ds.train_labels)
    # Statistics from every image (100 <= max_images) are the loader's; from 50, close to them.
    mean, std = stream.estimate_stats(train, max_images=100)
    np.testing.assert_allclose(mean, ds.mean, rtol=1e-5)
    np.testing.assert_allclose(std, ds.std, rtol=1e-5)
    mean, _ = stream.estimate_stats(train, max_images=50)
    np.testing.assert_allclose(mean, ds.mean, atol=0.05)


def test_train_batches_epoch_order_determinism_and_resume(subset_folder):
  train, _ = stream.open_local(subset_folder)
  _, all_labels = _all(stream.test_batches(train, 100))
  bs, spe = 32, 3  # 100 examples: 3 full batches per epoch, 4 examples dropped
  first = list(stream.train_batches(train, bs, seed=5, num_steps=2 * spe, workers=3))
  assert [b[0].shape for b in first] == [(bs, 32, 32, 3)] * (2 * spe)
  # Within an epoch no example repeats: the 96 images are distinct ones of the split.
  flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
  epoch0 = np.concatenate([flat(b[0]) for b in first[:spe]])
  assert len(np.unique(epoch0, axis=0)) == spe * bs
  # Epochs are shuffled differently; the same seed gives the same batches.
  assert not np.array_equal(first[0][0], first[spe][0])
  again = list(stream.train_batches(train, bs, seed=5, num_steps=2 * spe, workers=1))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
  # A run resumed at step 4 reads step 4's and 5's batches.
  resumed = list(stream.train_batches(train, bs, seed=5, start_step=4, num_steps=2))
  for a, b in zip(first[4:], resumed):
    np.testing.assert_array_equal(a[0], b[0])
  other = next(stream.train_batches(train, bs, seed=6, num_steps=1))
  assert not np.array_equal(other[1], first[0][1]) or not np.array_equal(other[0], first[0][0])
  # A subset by indices only ever yields those examples.
  keep = np.arange(0, 100, 2)  # labels 0..9 repeat every 10 images: even positions
  labels = np.concatenate([b[1] for b in stream.train_batches(
      train, 10, seed=0, num_steps=5, indices=keep)])
  assert set(labels) <= set(all_labels[keep])


def test_random_resized_crop_and_center_crop_against_hand_computed_boxes():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
  # Shorter side already 256: no resize, the central 224 x 224 square.
  out = stream.resize_center_crop(image, 224)
  np.testing.assert_array_equal(out, image[16:240, 48:272])
  # The full-area, same-aspect crop is the whole image resized.
  full = stream.random_resized_crop(image, 64, np.random.default_rng(1), scale=(1.0, 1.0),
                                    ratio=(320 / 256, 320 / 256))
  want = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
  np.testing.assert_array_equal(full, want)
  # Any crop: the right size, and seeded.
  a = stream.random_resized_crop(image, 48, np.random.default_rng(7))
  b = stream.random_resized_crop(image, 48, np.random.default_rng(7))
  assert a.shape == (48, 48, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)


def _mixed_size_folder(root):
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 2)):
    for cls in ("a", "b"):
      os.makedirs(root / split / cls)
      for i in range(n):
        h, w = 20 + 7 * i, 30 + 3 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / split / cls / f"{i}.png")
  Image.fromarray(rng.integers(0, 256, (25, 25), dtype=np.uint8)).save(
      root / "train" / "b" / "gray.png")  # greyscale among colour images


def test_mixed_sizes_need_image_size(tmp_path):
  _mixed_size_folder(tmp_path)
  train, test = stream.open_local(str(tmp_path))
  assert len(train) == 13 and train.class_names == ("a", "b")
  with pytest.raises(data.DataError, match=r"\.png: image shape .* set data.image_size"):
    list(stream.train_batches(train, 13, seed=0, num_steps=1))
  images, labels = next(stream.train_batches(train, 13, seed=0, num_steps=1, image_size=24))
  assert images.shape == (13, 24, 24, 3) and sorted(labels) == [0] * 6 + [1] * 7
  images, _ = _all(stream.test_batches(test, 3, image_size=16))
  assert images.shape == (4, 16, 16, 3)


def test_bad_sources_name_the_file(tmp_path, subset_folder, cifar10_archive):
  with pytest.raises(data.DataError, match="no such file"):
    stream.open_local(str(tmp_path / "missing"))
  with pytest.raises(data.DataError, match="compressed archive cannot be streamed"):
    stream.open_local(cifar10_archive)
  _mixed_size_folder(tmp_path / "d")
  os.makedirs(tmp_path / "d" / "test" / "c")
  os.makedirs(tmp_path / "d" / "train" / "c")
  with pytest.raises(data.DataError, match=r"c/: empty class folder"):
    stream.open_local(str(tmp_path / "d"))
  bad = tmp_path / "d" / "train" / "c" / "x.jpg"
  bad.write_bytes(b"not a jpeg")
  (tmp_path / "d" / "test" / "c" / "y.png").write_bytes(
      (tmp_path / "d" / "test" / "a" / "0.png").read_bytes())
  train, _ = stream.open_local(str(tmp_path / "d"))
  with pytest.raises(data.DataError, match="x.jpg: not a readable image"):
    list(stream.train_batches(train, len(train), seed=0, num_steps=1, image_size=8))
  broken = tmp_path / "broken.tar"
  broken.write_bytes(b"\0" * 10 + b"garbage")
  with pytest.raises(data.DataError, match="broken.tar"):
    stream.open_local(str(broken))


def test_prefetch_to_device_keeps_order_and_reraises():
  batches = [(np.full((2, 3), i, np.float32), np.arange(2)) for i in range(5)]
  out = list(stream.prefetch_to_device(iter(batches), size=2))
  assert len(out) == 5 and all(isinstance(x, jax.Array) for x, _ in out)
  assert [float(x[0, 0]) for x, _ in out] == [0, 1, 2, 3, 4]

  def failing():
    yield batches[0]
    raise data.DataError("file 7.jpg: not a readable image")

  it = stream.prefetch_to_device(failing())
  next(it)
  with pytest.raises(data.DataError, match="7.jpg"):
    next(it)


def test_tfds_streaming_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    train, test = stream.open_tfds("cifar10")
    # The mock's metadata has no label names: ClassLabel(num_classes=10) names them "0".."9".
    assert len(train) == 20 and len(train.class_names) == 10 and len(test) == 20
    images, labels = next(stream.train_batches(train, 8, seed=0, num_steps=1, workers=2))
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.max() < 10
  with pytest.raises(data.DataError, match="cannot be streamed from TFDS"):
    stream.open_tfds("imagenet16-120")


def test_streaming_retraining_resumes_bit_for_bit(subset_folder, tmp_path, caches):
  """run_train with data.streaming: a stop at step 2 then a resume equals one straight run."""
  c = _smoke_config()
  c.data.path = subset_folder
  c.data.streaming = True
  c.data.workers = 2
  c.data.batch_size = 16
  c.data.train_size = 64
  c.data.test_size = 0
  c.data.eval_batch_size = 40
  c.model.channels = 4
  c.model.layers = 3
  c.model.auxiliary = False
  c.log_every_steps = 1
  c.compilation_cache_dir = str(caches / "jax")
  genotype = published.get("DARTS_V2")
  straight = train_lib.run_train(c, genotype, str(tmp_path / "a"))
  assert straight["step"] == 4 and 0.0 <= straight["test_acc"] <= 1.0
  stopped = train_lib.run_train(c, genotype, str(tmp_path / "b"), stop_after_steps=2)
  assert stopped == {"step": 2, "stopped": True, "signal": None}
  resumed = train_lib.run_train(c, genotype, str(tmp_path / "b"))
  assert resumed["test_acc"] == straight["test_acc"]
  assert resumed["test_loss"] == straight["test_loss"]

  def losses(run):
    with open(tmp_path / run / "metrics.jsonl") as f:
      return [line["loss"] for line in map(json.loads, f) if "loss" in line and
              line.get("split") != "test"]

  assert losses("b") == losses("a") and len(losses("a")) == 4


def test_streaming_config_errors_name_the_key():
  genotype = published.get("DARTS_V2")
  c = _smoke_config()
  c.data.image_size = 64
  with pytest.raises(train_lib.ConfigError, match="data.image_size"):
    train_lib.validate_train_config(c, genotype)
  c = _smoke_config()
  c.data.std = (0.2, 0.0, 0.2)
  with pytest.raises(train_lib.ConfigError, match="data.std"):
    train_lib.validate_train_config(c, genotype)
  c = _smoke_config()
  c.data.mean = (0.5, 0.5, 0.5)  # without data.std
  with pytest.raises(train_lib.ConfigError, match="data.mean"):
    train_lib.validate_train_config(c, genotype)
