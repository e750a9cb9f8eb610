"""The experiment configs are the papers' methods: virtual step, step order, split, precision."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import compiler, train_lib
from dnas.data import splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SPLIT = os.environ.get(
    "DNAS_NB201_SPLIT", os.path.join(REPO, "..", "shared", "nasbench", "cifar-split.txt"))


def _variants(path):
  """Every variant a config file accepts (its module's ``VARIANTS``), after checking that an
  unknown one is refused with the list."""
  module = train_lib.load_module(path)
  with pytest.raises(ValueError, match="valid: " + ", ".join(module.VARIANTS)):
    train_lib.load_config(path, "no-such-variant")
  return list(module.VARIANTS)


SEARCH_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "experiments", "*.py"))
                        if not os.path.basename(p).startswith(("train_", "explore_")))
# The configs of DARTS itself (its virtual step, its second-order variant), not its variants.
DARTS_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "experiments", "*darts*.py"))
                       if "second_order" in train_lib.load_module(p).VARIANTS)
TRAIN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "train_*.py")))


def test_every_config_is_found():
  assert len(DARTS_CONFIGS) >= 2 and len(TRAIN_CONFIGS) >= 2


@pytest.mark.parametrize("path", SEARCH_CONFIGS, ids=os.path.basename)
def test_search_configs_validate_in_full_precision(path):
  for variant in _variants(path):
    c = train_lib.load_config(path, variant)
    train_lib.validate_search_config(c)
    assert c.precision == "highest", variant
    assert c.search.strategy in os.path.basename(path), variant  # nb201_<strategy>_cifar10.py


@pytest.mark.parametrize("path", DARTS_CONFIGS, ids=os.path.basename)
def test_darts_configs_use_the_papers_virtual_step(path):
  for variant in _variants(path):
    c = train_lib.load_config(path, variant)
    assert c.search.darts.virtual_step == "paper", variant
  c = train_lib.load_config(path, "second_order")
  assert c.search.darts.order == 2 and c.search.darts.virtual_step == "paper"


def test_step_order_and_split_of_each_paper():
  darts1 = train_lib.load_config(os.path.join(REPO, "experiments", "darts_cifar10.py"))
  darts2 = train_lib.load_config(os.path.join(REPO, "experiments", "darts_cifar10.py"),
                                 "second_order")
  assert darts1.search.update_order == darts2.search.update_order == "arch_first"
  assert darts1.data.split == "seeded"
  path = os.path.join(REPO, "experiments", "nb201_darts_cifar10.py")
  v1, v2 = train_lib.load_config(path), train_lib.load_config(path, "second_order")
  assert v1.search.update_order == "weights_first"   # DARTS-V1.py: weights, then alpha
  assert v2.search.update_order == "arch_first"      # DARTS-V2.py: alpha, then weights
  assert v1.data.split == v2.data.split == "nb201"
  assert v1.search.nesterov and v1.search.grad_clip == 5.0


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_train_configs_train_in_float32(path):
  for variant in _variants(path):
    c = train_lib.load_config(path, variant)
    assert c.train.compute_dtype == "float32", variant
    assert c.precision == "highest", variant


def test_bad_protocol_values_name_the_key():
  c = train_lib.load_config(os.path.join(REPO, "experiments", "darts_cifar10.py"))
  for key, value in (("search.darts.virtual_step", "exact"), ("search.update_order", "both"),
                     ("data.split", "nb101"), ("precision", "float32")):
    bad = c.copy_and_resolve_references()
    bad.update_from_flattened_dict({key: value})
    with pytest.raises(train_lib.ConfigError, match=f"config.{key}: .*'exact'|config.{key}: "
                       f"unknown value"):
      train_lib.validate_search_config(bad)
  bad = c.copy_and_resolve_references()
  with bad.unlocked():
    bad.search.virtual_step = "paper"  # DARTS' options live under search.darts
  with pytest.raises(train_lib.ConfigError, match="config.search.virtual_step: DARTS' options "
                     "live under config.search.darts"):
    train_lib.validate_search_config(bad)
  bad = c.copy_and_resolve_references()
  bad.data.split, bad.data.train_portion = "nb201", 0.7
  with pytest.raises(train_lib.ConfigError, match="config.data.train_portion"):
    train_lib.validate_search_config(bad)


def test_nb201_split_shipped_with_dnas():
  train, valid = splits.nb201_cifar_split()
  assert len(train) == len(valid) == 25_000
  assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, valid])), np.arange(50_000))
  # The list's first entries (configs/nas-benchmark/cifar-split.txt).
  np.testing.assert_array_equal(train[:8], [0, 5, 7, 11, 13, 15, 16, 17])


def test_nb201_split_equals_the_published_file():
  if not os.path.exists(SHARED_SPLIT):
    pytest.fail(f"NAS-Bench-201's split file not found at {SHARED_SPLIT}; set DNAS_NB201_SPLIT "
                f"to cifar-split.txt (the project's shared data)")
  with open(SHARED_SPLIT) as f:
    published = json.load(f)
  train, valid = splits.nb201_cifar_split()
  np.testing.assert_array_equal(train, np.asarray(published["train"][1], int))
  np.testing.assert_array_equal(valid, np.asarray(published["valid"][1], int))


def test_search_indices_takes_the_nb201_split_only_for_cifar_in_its_order():
  c = train_lib.load_config(os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"))
  tr, va, name, desc = train_lib.search_indices(c, 50_000)  # TFDS' cifar10: the original order
  np.testing.assert_array_equal(tr, splits.nb201_cifar_split()[0])
  np.testing.assert_array_equal(va, splits.nb201_cifar_split()[1])
  assert name == "nb201" and desc.startswith("nb201")
  for change, why in ((("data", "path", "cifar10.tar.gz"), "local copy"),
                      (("data", "train_size", 512), "train_size"),
                      (("data", "name", "svhn_cropped"), "svhn_cropped")):
    d = c.copy_and_resolve_references()
    d[change[0]][change[1]] = change[2]
    n = 512 if change[1] == "train_size" else 50_000
    tr, va, name, desc = train_lib.search_indices(d, n)
    assert name == "seeded" and desc.startswith("seeded") and why in desc, desc
    assert len(tr) + len(va) == n and not set(tr) & set(va)
    assert not np.array_equal(tr[:100], splits.nb201_cifar_split()[0][:100])


def test_precision_reaches_the_convolutions():
  x = jnp.ones((1, 4, 4, 2))
  w = jnp.ones((3, 3, 2, 2))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  before = jax.config.jax_default_matmul_precision
  with compiler.matmul_precision("highest"):
    assert "HIGHEST" in str(jax.make_jaxpr(conv)(x, w))
  assert jax.config.jax_default_matmul_precision == before
  assert "HIGHEST" not in str(jax.make_jaxpr(conv)(x, w))
  with pytest.raises(ValueError, match="precision"):
    with compiler.matmul_precision("float32"):
      pass
