"""On-device batches: the split for search, epoch order from a key, and DARTS' augmentation.

The whole dataset sits on the device as ``uint8`` (CIFAR-10's train split is 150 MB); a batch
is a gather at indices computed from ``(key, step)``, so drawing one is a pure function that can
live inside the jitted step with no host round trip:

* epoch order: ``perm = permutation(fold_in(key, step // steps_per_epoch), N)``, and step ``t``
  takes ``perm[(t % steps_per_epoch) * B : ... + B]`` (the remainder of an epoch is dropped);
* augmentation (DARTS' CIFAR recipe, keys from ``fold_in(key, step)``): zero-pad by
  ``crop_padding`` and take a random ``H x W`` crop, flip left-right with probability 1/2,
  normalise, then cut out a ``cutout x cutout`` square (zeros after normalisation, as DARTS'
  ``Cutout`` runs after ``Normalize``).
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dnas.data.sources import DataError
from dnas.types import Array, Batch, PRNGKey


class DeviceData(NamedTuple):
  """Images and labels on the device.

  Attributes:
    images: ``uint8 [N, H, W, C]``.
    labels: ``int32 [N]``.
  """
  images: Array
  labels: Array


def search_split(n: int, train_portion: float = 0.5,
                 seed: Optional[int] = 0) -> Tuple[np.ndarray, np.ndarray]:
  """Splits ``range(n)`` into the search's weight-training and alpha-validation halves.

  DARTS (Liu et al., 2019, Sec. 3.1) holds out part of the training set for the upper level:
  with ``p = permutation_seed(range(n))`` and ``k = floor(n * train_portion)``, the weights
  train on ``p[:k]`` and alpha on ``p[k:]``. ``seed=None`` skips the permutation, which is what
  DARTS' code does (first ``k`` indices / the rest).

  Args:
    n: number of training examples.
    train_portion: fraction that trains the weights, in (0, 1).
    seed: seed of the permutation (``jax.random.PRNGKey(seed)``), or ``None`` for no permutation.

  Returns:
    ``(train_idx, val_idx)``: sorted, disjoint ``int32`` arrays whose union is ``range(n)``.

  Example:
    >>> train_idx, val_idx = data.search_split(50_000)  # doctest: +SKIP
    >>> len(train_idx), len(val_idx)  # doctest: +SKIP
    (25000, 25000)
  """
  n = int(n)
  if not 0.0 < float(train_portion) < 1.0:
    raise DataError(f"train_portion={train_portion} must be in (0, 1)")
  k = int(np.floor(n * float(train_portion)))
  if k < 1 or k > n - 1:
    raise DataError(f"search_split: n={n} with train_portion={train_portion} leaves an empty "
                    f"part ({k} train / {n - k} val)")
  if seed is None:
    order = np.arange(n)
  else:
    # A jax key rather than np.random: the same split on every platform and numpy version.
    order = np.asarray(jax.device_get(
        jax.random.permutation(jax.random.PRNGKey(int(seed)), n)))
  return (np.sort(order[:k]).astype(np.int32), np.sort(order[k:]).astype(np.int32))


def to_device(images: Any, labels: Any,
              sharding: Optional[jax.sharding.Sharding] = None) -> DeviceData:
  """Puts a dataset's images (``uint8 [N, H, W, C]``) and labels (``[N]``) on the device.

  Args:
    images: host or device array, ``uint8 [N, H, W, C]``.
    labels: integer array ``[N]``; stored as ``int32``.
    sharding: where to place both arrays; default: the default device. A replicated sharding
      lets every device gather its own batch without communication.

  Returns:
    ``DeviceData``.
  """
  images = images if isinstance(images, jax.Array) else np.asarray(images)
  labels = labels if isinstance(labels, jax.Array) else np.asarray(labels)
  if images.ndim != 4:
    raise DataError(f"images: expected [N, H, W, C], got shape {images.shape}")
  if images.dtype != np.uint8:
    raise DataError(f"images: expected dtype uint8, got {images.dtype}")
  if labels.shape != (images.shape[0],):
    raise DataError(f"labels: expected shape ({images.shape[0]},), got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise DataError(f"labels: expected an integer dtype, got {labels.dtype}")
  return DeviceData(images=jax.device_put(images, sharding),
                    labels=jax.device_put(labels.astype(jnp.int32), sharding))


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Number of full batches in an epoch of ``n`` examples (the remainder is dropped)."""
  if int(batch_size) < 1:
    raise DataError(f"batch_size={batch_size} must be positive")
  steps = int(n) // int(batch_size)
  if steps == 0:
    raise DataError(f"batch_size={batch_size} is larger than the {n} examples available")
  return steps


def normalize(images: Array, mean: Any, std: Any) -> Array:
  """``(x / 255 - mean) / std`` in float32, with per-channel ``mean``/``std`` of shape ``[C]``."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def epoch_indices(key: PRNGKey, step: Any, n: int, batch_size: int) -> Array:
  """The ``batch_size`` example indices of ``step``; every index once per epoch.

  Args:
    key: the data order key (fixed for a run).
    step: global step (traced or python int).
    n: number of examples.
    batch_size: examples per step.

  Returns:
    ``int32 [batch_size]``.
  """
  per_epoch = steps_per_epoch(n, batch_size)
  step = jnp.asarray(step, jnp.int32)
  perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
  return jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))


def random_crop(key: PRNGKey, images: Array, padding: int) -> Array:
  """Zero-pads ``[B, H, W, C]`` images by ``padding`` and takes one random ``H x W`` crop each."""
  if padding == 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: PRNGKey, images: Array) -> Array:
  """Flips each ``[B, H, W, C]`` image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_cutout(key: PRNGKey, images: Array, size: int) -> Array:
  """Zeroes a ``size x size`` square centred at a uniformly random pixel of each image.

  As DARTS' ``Cutout`` (DeVries & Taylor, 2017), the centre is any pixel and the square is
  clipped at the borders, so fewer than ``size**2`` pixels are cut near an edge. Rows
  ``[cy - size // 2, cy - size // 2 + size)`` are cut; for odd ``size`` DARTS' code cuts
  ``size - 1`` rows instead, here the square is always ``size`` wide.
  """
  if size == 0:
    return images
  b, h, w, _ = images.shape
  ky, kx = jax.random.split(key)
  top = jax.random.randint(ky, (b, 1), 0, h) - size // 2
  left = jax.random.randint(kx, (b, 1), 0, w) - size // 2
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_rows = (rows >= top) & (rows < top + size)  # [B, H]
  in_cols = (cols >= left) & (cols < left + size)  # [B, W]
  cut = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(cut[..., None], jnp.zeros((), images.dtype), images)


def batch_sharding(batch_size: int, devices: Optional[Any] = None,
                   where: str = "data.batch_size") -> jax.sharding.NamedSharding:
  """Splits the batch axis over ``devices`` (default: all), for ``get_batch(sharding=...)``.

  One device gives a trivial sharding, so the same code runs on one device or many. The mesh
  is ``dnas.parallel``'s (one axis, ``"data"``), which the loops lay their state out on.

  Raises:
    DataError: naming ``where`` if ``batch_size`` is not a multiple of the device count.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if batch_size % devices.size:
    raise DataError(f"{where}={batch_size} must be a multiple of the {devices.size} devices "
                    f"the batch is split over")
  mesh = jax.sharding.Mesh(devices.reshape(-1), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def get_batch(data: DeviceData, key: PRNGKey, step: Any, batch_size: int, mean: Any, std: Any,
              *, crop_padding: int = 4, flip: bool = True, cutout: int = 0,
              train: bool = True,
              sharding: Optional[jax.sharding.Sharding] = None) -> Batch:
  """Draws step ``step``'s batch from on-device data, augmented as DARTS does on CIFAR.

  Pure and jittable; ``batch_size``, ``crop_padding``, ``flip``, ``cutout`` and ``train`` are
  static. The order is a fresh permutation per epoch,
  ``permutation(fold_in(key, step // S), N)[(step % S) * B : (step % S + 1) * B]`` with
  ``S = N // B``. With ``train=True`` the batch is augmented with keys from
  ``fold_in(key, step)``: random crop from the zero-padded image (pixel space, as torchvision's
  ``RandomCrop(padding=...)``), random left-right flip, normalisation, then cutout (zeros in
  normalised space).

  Args:
    data: ``DeviceData`` with ``N`` examples.
    key: the run's data key; the same ``(key, step)`` always gives the same batch.
    step: global step, a python int or a traced int32 scalar.
    batch_size: ``B``.
    mean: per-channel mean ``[C]`` of images in ``[0, 1]``.
    std: per-channel standard deviation ``[C]``.
    crop_padding: zero padding around each image before the random crop; 0 disables cropping.
    flip: random horizontal flips.
    cutout: side of the cutout square; 0 disables it.
    train: if False, no augmentation (the order still follows ``key`` and ``step``).
    sharding: a sharding of the batch axis (``batch_sharding``) the batch is laid out with;
      default: the compiler's choice.

  Returns:
    ``{"image": float32 [B, H, W, C], "label": int32 [B]}``.

  Example:
    >>> batch_fn = jax.jit(functools.partial(data.get_batch, batch_size=64, cutout=16))
    >>> batch = batch_fn(dd, key, step, mean=ds.mean, std=ds.std)  # doctest: +SKIP
  """
  n = data.images.shape[0]
  idx = epoch_indices(key, step, n, batch_size)
  images = jnp.take(data.images, idx, axis=0)
  labels = jnp.take(data.labels, idx, axis=0)
  return augment(images, labels, key, step, mean, std, crop_padding=crop_padding, flip=flip,
                 cutout=cutout, train=train, sharding=sharding)


def augment(images: Array, labels: Array, key: PRNGKey, step: Any, mean: Any, std: Any, *,
            crop_padding: int = 4, flip: bool = True, cutout: int = 0, train: bool = True,
            sharding: Optional[jax.sharding.Sharding] = None) -> Batch:
  """DARTS' CIFAR augmentation of one drawn ``uint8 [B, H, W, C]`` batch, on the device.

  ``get_batch``'s second half, shared with the streaming pipeline (``dnas.data.stream``): with
  ``train=True``, keys from ``fold_in(key, step)`` drive a random crop of the zero-padded image,
  a random left-right flip and, after normalisation, cutout; with ``train=False`` the images are
  only normalised. Arguments as ``get_batch``'s.

  Returns:
    ``{"image": float32 [B, H, W, C], "label": int32 [B]}``.
  """
  labels = labels.astype(jnp.int32)
  if not train:
    return _constrain({"image": normalize(images, mean, std), "label": labels}, sharding)
  k_crop, k_flip, k_cut = jax.random.split(jax.random.fold_in(key, step), 3)
  images = random_crop(k_crop, images, crop_padding)
  if flip:
    images = random_flip(k_flip, images)
  images = normalize(images, mean, std)
  images = random_cutout(k_cut, images, cutout)
  return _constrain({"image": images, "label": labels}, sharding)


def _constrain(batch: Batch, sharding: Optional[jax.sharding.Sharding]) -> Batch:
  if sharding is None:
    return batch
  return {k: jax.lax.with_sharding_constraint(v, sharding) for k, v in batch.items()}


_normalize_jit = jax.jit(normalize)


def eval_batches(images: Any, labels: Any, batch_size: int, mean: Any,
                 std: Any, pad: bool = False) -> Iterator[Batch]:
  """Yields every example once, in order, unaugmented; the last batch may be smaller.

  Without ``pad`` there is no mask: summing ``correct`` over the batches and dividing by ``N``
  gives the accuracy, and the smaller last batch costs the caller's eval step one more
  compilation. With ``pad`` the last batch is filled up to ``batch_size`` with zero images
  labelled ``-1``, which the caller leaves out (one compilation; in eval mode an image does not
  affect the others' outputs).

  Args:
    images: ``uint8 [N, H, W, C]``, on the host (sent a batch at a time) or on the device.
    labels: ``[N]`` integer labels.
    batch_size: examples per batch.
    mean: per-channel mean ``[C]``.
    std: per-channel standard deviation ``[C]``.
    pad: fill the last batch up to ``batch_size`` (labels ``-1``).

  Yields:
    ``{"image": float32 [b, H, W, C], "label": int32 [b]}`` with ``b <= batch_size``.
  """
  if int(batch_size) < 1:
    raise DataError(f"batch_size={batch_size} must be positive")
  images = images if isinstance(images, jax.Array) else np.asarray(images)
  labels = labels if isinstance(labels, jax.Array) else np.asarray(labels)
  n = images.shape[0]
  if labels.shape[0] != n:
    raise DataError(f"labels: {labels.shape[0]} labels for {n} images")
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  for start in range(0, n, int(batch_size)):
    x = images[start:start + batch_size]
    y = labels[start:start + batch_size]
    if pad and x.shape[0] < batch_size:
      fill = batch_size - x.shape[0]
      x = np.concatenate([np.asarray(x), np.zeros((fill,) + x.shape[1:], x.dtype)])
      y = np.concatenate([np.asarray(y), np.full((fill,), -1, np.asarray(y).dtype)])
    yield {"image": _normalize_jit(jnp.asarray(x), mean, std),
           "label": jnp.asarray(y).astype(jnp.int32)}


__all__ = [
    "DeviceData", "augment", "epoch_indices", "eval_batches", "get_batch", "normalize", "random_crop",
    "random_cutout", "random_flip", "search_split", "steps_per_epoch", "to_device",
]
