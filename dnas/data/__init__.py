"""The data stage: datasets in host memory, then on the device, batched and augmented there.

``load`` gives an ``ArrayDataset`` (numpy, from TFDS or a local image-folder archive, cached);
``search_split`` divides the train split for the bilevel search; ``to_device`` moves arrays to
the accelerator once; ``get_batch`` is a pure, jittable function of ``(key, step)`` that draws
and augments a batch there; ``eval_batches`` walks a split in order for evaluation.
Datasets that do not fit on the device stream from disk instead (``dnas.data.stream``: host
threads decode each batch, a background thread copies it to the device, ``augment`` finishes it).

Example:
  >>> from dnas import data
  >>> ds = data.load(path="../shared/data/cifar10-jpeg.tar.gz")  # doctest: +SKIP
  >>> train_idx, val_idx = data.search_split(len(ds.train_labels))  # doctest: +SKIP
  >>> dd = data.to_device(ds.train_images[train_idx], ds.train_labels[train_idx])  # doctest: +SKIP
  >>> batch_fn = jax.jit(functools.partial(data.get_batch, batch_size=64))  # doctest: +SKIP
  >>> batch = batch_fn(dd, key, 0, mean=ds.mean, std=ds.std)  # doctest: +SKIP
"""

from dnas.data.pipeline import augment
from dnas.data.pipeline import DeviceData
from dnas.data.pipeline import batch_sharding
from dnas.data.pipeline import epoch_indices
from dnas.data.pipeline import eval_batches
from dnas.data.pipeline import get_batch
from dnas.data.pipeline import normalize
from dnas.data.pipeline import random_crop
from dnas.data.pipeline import random_cutout
from dnas.data.pipeline import random_flip
from dnas.data.pipeline import search_split
from dnas.data.pipeline import steps_per_epoch
from dnas.data.pipeline import to_device
from dnas.data.sources import ArrayDataset
from dnas.data.sources import channel_stats
from dnas.data.sources import DataError
from dnas.data.sources import default_cache_dir
from dnas.data.sources import load
from dnas.data.sources import TFDS_NAMES

__all__ = [
    "augment", "batch_sharding",
    "ArrayDataset", "DataError", "DeviceData", "TFDS_NAMES", "channel_stats", "default_cache_dir",
    "epoch_indices", "eval_batches", "get_batch", "load", "normalize", "random_crop",
    "random_cutout", "random_flip", "search_split", "steps_per_epoch", "to_device",
]
