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
    # The tests that read real images must run, not skip: a missing archive is a set-up error.
    pytest.fail(f"CIFAR-10 archive not found at {path}; set DNAS_CIFAR10 to "
                f"cifar10-jpeg.tar.gz (the project's shared data)")
  return path


@pytest.fixture(scope="session")
def caches(tmp_path_factory):
  """Decoded-data and compilation caches shared by the tests that run whole searches.

  Sharing them decodes the archive once per session and lets later runs of the same smoke
  config reuse earlier compilations, as a user's second run does.
  """
  return tmp_path_factory.mktemp("caches")


@pytest.fixture
def fast_compile():
  """XLA with most optimizations off: tests that run a few steps are mostly compilation."""
  import jax  # pylint: disable=g-import-not-at-top
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def x64():
  """float64 for the test (finite differences against exact gradients); float32 after."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.fixture
def tiny_search():
  """``small_search()``, as a fixture."""
  return small_search()


def small_search():
  """A DARTS supernet small enough to compile in seconds, its optimizers and two batches.

  A plain function too, for test scripts run in subprocesses (``from conftest import ...``).

  Returns ``(model, strategy, weight_tx, arch_tx, batch_train, batch_val)``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dnas import search  # pylint: disable=g-import-not-at-top
  from dnas.ops.sets import OpSet  # pylint: disable=g-import-not-at-top
  from dnas.spaces import DartsSearchNet  # pylint: disable=g-import-not-at-top
  from dnas.strategies import darts  # pylint: disable=g-import-not-at-top
  ops = OpSet("tiny", ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"),
              bn_after=("avg_pool_3x3",))
  model = DartsSearchNet(num_classes=3, channels=4, layers=2, nodes=2, multiplier=2, op_set=ops)
  k = jax.random.split(jax.random.key(0), 2)
  bt = {"image": jax.random.normal(k[0], (4, 8, 8, 3)), "label": jnp.arange(4) % 3}
  bv = {"image": jax.random.normal(k[1], (4, 8, 8, 3)), "label": jnp.arange(4)[::-1] % 3}
  return (model, darts(order=1), search.darts_weight_optimizer(total_steps=10)[0],
          search.darts_arch_optimizer(), bt, bv)
