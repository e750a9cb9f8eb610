"""Shared test set-up: CPU, small shapes, the real CIFAR-10 archive when present."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The native depthwise convolution compiles faster than the shifted sum the CPU steps with by
# default; these tests compile far more than they step. test_ops checks the two forms agree
# (values and gradients, op by op).
os.environ.setdefault("DNAS_DEPTHWISE", "conv")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_DEFAULT = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def cifar10_archive():
  path = os.environ.get("DNAS_CIFAR10", CIFAR10_DEFAULT)
  if not os.path.exists(path):
    pytest.skip(f"CIFAR-10 archive not found at {path} (set DNAS_CIFAR10)")
  return path


@pytest.fixture(scope="session")
def caches(tmp_path_factory):
  """Decoded-data and compilation caches shared by the tests that run whole searches.

  Sharing them decodes the archive once per session and lets later runs of the same smoke
  config reuse earlier compilations, as a user's second run does.
  """
  return tmp_path_factory.mktemp("caches")
