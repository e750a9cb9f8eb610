"""Published splits of a training set into the search's weight-training and alpha halves.

NAS-Bench-201 (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural
Architecture Search", ICLR 2020) searches on a fixed split of CIFAR-10's (and CIFAR-100's)
50,000 training images into two halves of 25,000: the weights train on ``train`` and alpha on
``valid``. Its indices are positions in CIFAR-10's original training order (the five
``data_batch_*`` files), which TFDS' ``cifar10`` train split follows. Source:
github.com/D-X-Y/AutoDL-Projects (MIT), ``configs/nas-benchmark/cifar-split.txt`` (commit
f46486e), read by ``exps/algos/DARTS-V1.py`` and ``DARTS-V2.py`` for both CIFAR datasets.

It ships here as ``nb201_cifar_split.bin``: 50,000 bits (``numpy.packbits``, big-endian bit
order), bit ``i`` set when image ``i`` is in ``train``; the two halves are disjoint and cover
``range(50000)``, each list sorted as in the source file.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Tuple

import numpy as np

NB201_CIFAR_SIZE = 50_000
_NB201_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nb201_cifar_split.bin")
_NB201_SHA256 = "2d94ac040ba500cbe77fa8c17d531746f6a76365ce8e5e17c10d2938c5dbf0fe"
# Datasets whose TFDS train split is in the order NAS-Bench-201's indices refer to.
NB201_DATASETS = ("cifar10", "cifar100")


@functools.lru_cache(maxsize=1)
def nb201_cifar_split() -> Tuple[np.ndarray, np.ndarray]:
  """NAS-Bench-201's ``(train, valid)`` halves of CIFAR's training set, sorted ``int32`` arrays.

  Raises:
    ValueError: the package file is damaged (naming it).
  """
  with open(_NB201_FILE, "rb") as f:
    raw = f.read()
  if hashlib.sha256(raw).hexdigest() != _NB201_SHA256:
    raise ValueError(f"{_NB201_FILE}: damaged (checksum mismatch); reinstall dnas")
  mask = np.unpackbits(np.frombuffer(raw, np.uint8))[:NB201_CIFAR_SIZE].astype(bool)
  idx = np.arange(NB201_CIFAR_SIZE, dtype=np.int32)
  return idx[mask], idx[~mask]


__all__ = ["NB201_CIFAR_SIZE", "NB201_DATASETS", "nb201_cifar_split"]
