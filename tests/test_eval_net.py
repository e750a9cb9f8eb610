"""Tests for dnas.eval_net: parameter counts against the reference code, shapes, train/eval."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import eval_net, genotypes
from dnas.ops import layers, registry

# Liu et al. 2019, github.com/quark0/darts cnn/genotypes.py.
DARTS_V1 = genotypes.darts(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)])
DARTS_V2 = genotypes.darts(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)])

NB201_ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
              "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")

CIFAR = (2, 32, 32, 3)


# Counts published by the reference PyTorch code (DARTS' utils.count_parameters_in_MB, which
# leaves out the auxiliary head, and sum(p.numel()) for the whole model).
def test_darts_v2_cifar_param_count():
  assert eval_net.param_count(eval_net.CifarNetwork(DARTS_V2, auxiliary=False), CIFAR) == 3349342


def test_darts_v2_cifar_param_count_with_auxiliary_head():
  model = eval_net.CifarNetwork(DARTS_V2, auxiliary=True)
  assert eval_net.param_count(model, CIFAR) == 3825768
  assert eval_net.param_count(model, CIFAR, exclude=("auxiliary_head",)) == 3349342


def test_darts_v1_cifar_param_count():
  assert eval_net.param_count(eval_net.CifarNetwork(DARTS_V1, auxiliary=False), CIFAR) == 3169414


def test_darts_v2_imagenet_param_count():
  model = eval_net.ImageNetNetwork(DARTS_V2, auxiliary=False)
  assert eval_net.param_count(model, (1, 224, 224, 3)) == 4718752


def test_imagenet_auxiliary_head_has_no_second_batch_norm():
  # DARTS' AuxiliaryHeadImageNet: conv1x1 (C_aux*128) + BN(128) + conv2x2 (128*768*4) + linear.
  model = eval_net.ImageNetNetwork(DARTS_V2, auxiliary=True)
  c_aux = 4 * 48 * 4  # cell 9 follows the second reduction: 4 nodes x 4C channels
  head = c_aux * 128 + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000
  assert eval_net.param_count(model, (1, 224, 224, 3)) == 4718752 + head


def _nb201_reference_count(c, n, num_classes):
  """NAS-Bench-201 TinyNetwork's weights for NB201_ARCH, summed layer by layer."""
  def conv(cin, cout, k):
    return k * k * cin * cout

  def relu_conv_bn(cin, cout, k):
    return conv(cin, cout, k) + 2 * cout  # affine BN: scale and bias

  stem = conv(3, c, 3) + 2 * c
  # The cell: three nor_conv_3x3 edges; avg_pool_3x3 and skip_connect have no weights.
  cells = sum(n * 3 * relu_conv_bn(ch, ch, 3) for ch in (c, 2 * c, 4 * c))
  blocks = sum(relu_conv_bn(cin, cout, 3) + relu_conv_bn(cout, cout, 3) + conv(cin, cout, 1)
               for cin, cout in ((c, 2 * c), (2 * c, 4 * c)))
  last = 2 * 4 * c + 4 * c * num_classes + num_classes  # lastact BN, then the classifier
  return stem + cells + blocks + last


def test_nb201_param_count_matches_layer_by_layer_sum():
  expected = _nb201_reference_count(16, 5, 10)
  assert expected == 802426
  model = eval_net.NB201Network(NB201_ARCH, num_classes=10, channels=16, cells_per_stage=5)
  assert eval_net.param_count(model, CIFAR) == expected


def test_nb201_network_builds_and_runs():
  g = genotypes.NB201Genotype.from_arch(NB201_ARCH)
  model = eval_net.NB201Network(g, num_classes=10, channels=4, cells_per_stage=1)
  x = jax.random.normal(jax.random.key(0), CIFAR)
  variables = model.init(jax.random.key(1), x)
  logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (2, 10) and aux is None
  assert np.all(np.isfinite(logits))


def test_wrong_genotype_kind_is_rejected():
  nb201 = genotypes.NB201Genotype.from_arch(NB201_ARCH)
  with pytest.raises(TypeError, match="DartsGenotype"):
    jax.eval_shape(lambda: eval_net.CifarNetwork(nb201).init(jax.random.key(0), jnp.zeros(CIFAR)))


def test_imagenet_shapes():
  model = eval_net.ImageNetNetwork(DARTS_V2, num_classes=7, channels=8, layers=3)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), x)
  (logits, aux), _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
  assert logits.shape == (2, 7) and aux.shape == (2, 7)
  logits, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert logits.shape == (2, 7) and aux is None


@pytest.fixture(scope="module")
def small_cifar():
  """DARTS_V2 at C=4 with 3 cells (both reductions; the aux head sees 8x8), and its variables."""
  model = eval_net.CifarNetwork(DARTS_V2, num_classes=10, channels=4, layers=3, auxiliary=True)
  x = jax.random.normal(jax.random.key(0), CIFAR)
  variables = model.init(jax.random.key(1), x, train=True)

  @jax.jit
  def train_fwd(variables, x, p, key):
    out, _ = model.apply(variables, x, train=True, drop_path_prob=p, rngs={"dropout": key},
                         mutable=["batch_stats"])
    return out

  @jax.jit
  def eval_fwd(variables, x):
    return model.apply(variables, x, train=False)

  return variables, x, train_fwd, eval_fwd


def test_train_returns_aux_logits_and_eval_does_not(small_cifar):
  variables, x, train_fwd, eval_fwd = small_cifar
  logits, aux = train_fwd(variables, x, 0.0, jax.random.key(2))
  assert logits.shape == (2, 10) and aux.shape == (2, 10)
  logits, aux = eval_fwd(variables, x)
  assert logits.shape == (2, 10) and aux is None
  np.testing.assert_array_equal(logits, eval_fwd(variables, x)[0])


def test_drop_path_acts_only_in_training(small_cifar):
  variables, x, train_fwd, eval_fwd = small_cifar
  a, _ = train_fwd(variables, x, 0.2, jax.random.key(3))
  b, _ = train_fwd(variables, x, 0.2, jax.random.key(4))
  assert not np.allclose(a, b)
  c, _ = train_fwd(variables, x, 0.0, jax.random.key(3))
  d, _ = train_fwd(variables, x, 0.0, jax.random.key(4))
  np.testing.assert_array_equal(c, d)  # a traced zero rate drops nothing
  # In eval mode the rate is ignored and no "dropout" rng is needed.
  model = eval_net.CifarNetwork(DARTS_V2, num_classes=10, channels=4, layers=3)
  e, aux = model.apply(variables, x, train=False, drop_path_prob=0.2)
  np.testing.assert_allclose(e, eval_fwd(variables, x)[0], rtol=1e-5, atol=1e-5)
  assert aux is None


def test_drop_path_keeps_or_drops_whole_samples_and_preserves_the_mean():
  x = jnp.ones((4000, 2, 2, 3))
  y = eval_net.drop_path(jax.random.key(0), x, 0.25)
  per_sample = np.asarray(y).reshape(4000, -1)
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  assert np.all(per_sample.min(1) == per_sample.max(1))
  assert abs(per_sample.mean() - 1.0) < 0.05
  np.testing.assert_array_equal(eval_net.drop_path(jax.random.key(0), x, 0.0), x)


class _ScaledConv(nn.Module):
  """A user's op: a 3x3 conv with a learned output scale (no `affine` keyword)."""
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    y = layers.Conv(self.features, 3, self.stride, padding=1)(nn.relu(x))
    return y * self.param("scale", nn.initializers.ones, ())


def test_user_registered_op_in_a_genotype():
  with registry.temporary("scaled_conv_3x3", lambda channels, stride: _ScaledConv(channels,
                                                                                   stride)):
    g = genotypes.darts(normal=[("scaled_conv_3x3", 0), ("skip_connect", 1)] * 4,
                        reduce=[("scaled_conv_3x3", 1), ("max_pool_3x3", 0)] * 4)
    model = eval_net.CifarNetwork(g, num_classes=10, channels=4, layers=3, auxiliary=False)
    x = jax.random.normal(jax.random.key(0), CIFAR)
    variables = model.init(jax.random.key(1), x, train=True)
    (logits, aux), _ = model.apply(variables, x, train=True, drop_path_prob=0.3,
                                   rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
  assert logits.shape == (2, 10) and aux is None
  cell0 = variables["params"]["cells"]["cell0"]
  assert cell0["op0"]["_ScaledConv_0"]["scale"].shape == ()
  # A normal cell: preprocess (2 x (C_in*C + 2C)), four user ops (9*C*C + 1).
  c = 4
  expected = 2 * (3 * c * c + 2 * c) + 4 * (9 * c * c + 1)
  assert sum(math.prod(p.shape) for p in jax.tree.leaves(cell0)) == expected


def test_small_genotype_network_overfits_real_cifar10_images(cifar10_archive, caches,
                                                            monkeypatch):
  # A stepping-heavy test: the shifted-sum depthwise convolution steps faster on the CPU.
  monkeypatch.setenv("DNAS_DEPTHWISE", "shift")
  import optax  # pylint: disable=g-import-not-at-top
  from dnas import data, retrain  # pylint: disable=g-import-not-at-top
  ds = data.load("cifar10", path=cifar10_archive, cache_dir=str(caches / "data"))
  keep = np.sort(np.random.default_rng(0).permutation(len(ds.train_labels))[:64])
  batch = next(data.eval_batches(ds.train_images[keep], ds.train_labels[keep], 64, ds.mean,
                                 ds.std))
  assert len(np.unique(np.asarray(batch["label"]))) == 10
  model = eval_net.CifarNetwork(DARTS_V2, num_classes=10, channels=8, layers=3, auxiliary=True)
  tx = optax.adam(3e-3)
  state = retrain.init_train_state(model, tx, jax.random.key(0), batch["image"][:2])
  step = retrain.make_train_step(model, tx)
  eval_step = retrain.make_eval_step(model)
  first = float(eval_step(state, batch)["correct"]) / 64
  for i in range(150):
    state, m = step(state, batch, 0.0)
    train_acc = float(m["accuracy"])
    if i >= 60 and train_acc >= 0.99:  # BatchNorm's running statistics have settled by now
      break
  acc = float(eval_step(state, batch)["correct"]) / 64
  assert first < 0.3, first  # chance is 0.1
  # Near 100 % in training mode; in eval mode BatchNorm's running averages (momentum 0.1)
  # still lag the weights a few dozen steps in (measured: 0.75 after 60 steps), but the
  # memorised labels already show far above chance (0.1).
  assert train_acc >= 0.98 and acc >= 0.6, (i, train_acc, acc)
