"""Op registry and the op sets' shape contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import ops
from dnas.ops import layers, registry

ALL_OPS = sorted(set(ops.DARTS.ops) | set(ops.NB201.ops))


def test_builtin_op_sets_have_published_order():
  assert ops.DARTS.ops == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                           "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
  assert ops.NB201.ops == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3",
                           "avg_pool_3x3")
  ops.DARTS.validate()
  ops.NB201.validate()


def test_unknown_op_lists_valid_names():
  with pytest.raises(registry.UnknownOpError) as e:
    registry.get("sep_conv_9x9")
  assert "sep_conv_9x9" in str(e.value) and "sep_conv_3x3" in str(e.value)


def test_duplicate_registration_is_an_error():
  with pytest.raises(ValueError, match="already registered"):
    registry.register("sep_conv_3x3")(lambda c, s: None)


def test_user_op_registration_and_removal():
  with registry.temporary("scaled_identity", lambda c, s: layers.Identity()):
    assert "scaled_identity" in registry.names()
    m = registry.build("scaled_identity", 4, 1)
    x = jnp.ones((1, 4, 4, 4))
    np.testing.assert_array_equal(m.apply({}, x, True), x)
  assert "scaled_identity" not in registry.names()


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_op_shape_contract(name, stride, affine):
  op = registry.build(name, 8, stride, affine=affine)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  variables = op.init(jax.random.key(1), x, True)
  y, _ = op.apply(variables, x, True, mutable=["batch_stats"])
  assert y.dtype == x.dtype
  assert y.shape == (2, 8 // stride, 8 // stride, 8)
  if not affine:
    # Affine-free BN: no scale or bias anywhere.
    names = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(variables.get("params", {}))[0]]
    assert not any("scale" in n or "bias" in n for n in names), names


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (5, 2, 2, 1),
                                     (3, 1, 2, 2), (3, 2, 2, 2), (5, 1, 4, 2), (5, 2, 4, 2)])
def test_depthwise_shift_equals_grouped_conv(k, s, p, d):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (k, k, 1, 4))
  ref = jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=4)
  np.testing.assert_allclose(layers.depthwise_conv_shift(x, w, s, p, d), ref, atol=1e-5)
  # The gradients too: the search differentiates through it.
  ct = jax.random.normal(jax.random.key(2), ref.shape)
  grad = lambda f: jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), (0, 1))(x, w)
  got = grad(lambda x, w: layers.depthwise_conv_shift(x, w, s, p, d))
  want = grad(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4))
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, atol=1e-4)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), (5, 2, 2, 1),
                                     (3, 1, 2, 2), (3, 2, 0, 1)])
def test_dense_im2col_equals_conv(k, s, p, d):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 5))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ref = conv(x, w)
  np.testing.assert_allclose(layers.dense_conv_im2col(x, w, s, p, d), ref, atol=1e-4)
  ct = jax.random.normal(jax.random.key(2), ref.shape)
  grad = lambda f: jax.grad(lambda x, w: jnp.vdot(f(x, w), ct), (0, 1))(x, w)  # noqa: E731
  got = grad(lambda x, w: layers.dense_conv_im2col(x, w, s, p, d))
  for g, r in zip(got, grad(conv)):
    np.testing.assert_allclose(g, r, atol=1e-4)


@pytest.mark.parametrize("impl,want", [("conv", "conv"), ("im2col", "im2col"),
                                       ("auto", "im2col")])
def test_dense_impl_follows_the_environment(monkeypatch, impl, want):
  monkeypatch.setenv("DNAS_DENSE_CONV", impl)
  assert layers._dense_impl() == want  # auto: im2col, as these tests run on the CPU
  monkeypatch.setenv("DNAS_DENSE_CONV", "winograd")
  with pytest.raises(ValueError, match="DNAS_DENSE_CONV"):
    layers._dense_impl()


@pytest.mark.parametrize("name", ["nor_conv_3x3", "nor_conv_1x1"])
def test_nb201_ops_agree_under_both_dense_forms(monkeypatch, name):
  op = registry.get(name)(4, 1, affine=True)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  variables = op.init(jax.random.key(1), x, True)
  outs = []
  for impl in ("conv", "im2col"):
    monkeypatch.setenv("DNAS_DENSE_CONV", impl)
    loss = lambda p, x: jnp.sum(jnp.tanh(op.apply({**variables, "params": p}, x, True,  # noqa: E731
                                                  mutable=["batch_stats"])[0]))
    outs.append(jax.value_and_grad(loss, (0, 1))(variables["params"], x))
  for got, want in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[0])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl,want", [("conv", "conv"), ("shift", "shift"), ("auto", "shift")])
def test_depthwise_impl_follows_the_environment(monkeypatch, impl, want):
  monkeypatch.setenv("DNAS_DEPTHWISE", impl)
  assert layers._depthwise_impl() == want  # auto: shift, as these tests run on the CPU


@pytest.mark.parametrize("name", ["sep_conv_5x5", "dil_conv_3x3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_ops_agree_under_both_depthwise_forms(monkeypatch, name, stride):
  op = registry.get(name)(4, stride, affine=False)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  variables = op.init(jax.random.key(1), x, True)
  outs = []
  for impl in ("conv", "shift"):
    monkeypatch.setenv("DNAS_DEPTHWISE", impl)
    loss = lambda p, x: jnp.sum(jnp.tanh(op.apply({**variables, "params": p}, x, True,
                                                  mutable=["batch_stats"])[0]))
    outs.append(jax.value_and_grad(loss, (0, 1))(variables["params"], x))
  for got, want in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[0])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_depthwise_impl_rejects_an_unknown_name(monkeypatch):
  monkeypatch.setenv("DNAS_DEPTHWISE", "fft")
  with pytest.raises(ValueError, match="DNAS_DEPTHWISE"):
    layers._depthwise_impl()


def test_avg_pool_does_not_count_padding():
  x = jnp.ones((1, 4, 4, 1))
  # With padding counted, the corner would average 4 ones over 9 cells.
  np.testing.assert_allclose(layers.avg_pool_3x3(x, 1), x)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(6, 6), (7, 5)])
def test_avg_pool_equals_explicit_window_mean(stride, hw):
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, *hw, 3)))
  h, w = hw
  rows, cols = range(0, h, stride), range(0, w, stride)
  ref = np.zeros((2, len(rows), len(cols), 3))
  for a, i in enumerate(rows):
    for b, j in enumerate(cols):
      window = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, :]
      ref[:, a, b, :] = window.mean(axis=(1, 2))
  np.testing.assert_allclose(layers.avg_pool_3x3(jnp.asarray(x), stride), ref, rtol=1e-5,
                             atol=1e-6)


def test_max_pool_pads_with_minus_infinity():
  x = -jnp.ones((1, 4, 4, 1))
  np.testing.assert_allclose(layers.max_pool_3x3(x, 1), x)


def test_factorized_reduce_uses_offset_grids():
  fr = layers.FactorizedReduce(2, affine=False)
  x = jnp.arange(16.0).reshape(1, 4, 4, 1) + 1.0
  v = fr.init(jax.random.key(0), x, True)
  kernel_a = v["params"]["Conv_0"]["kernel"]
  kernel_b = v["params"]["Conv_1"]["kernel"]
  params = {"Conv_0": {"kernel": jnp.ones_like(kernel_a)},
            "Conv_1": {"kernel": jnp.ones_like(kernel_b)}}
  # Bypass BN (eval mode with identity statistics) to see the raw conv outputs.
  y = fr.apply({"params": params, "batch_stats": v["batch_stats"]}, x, False)
  scale = 1.0 / np.sqrt(1.0 + 1e-5)
  np.testing.assert_allclose(y[0, :, :, 0], np.array([[1, 3], [9, 11]]) * scale, rtol=1e-6)
  np.testing.assert_allclose(y[0, :, :, 1], np.array([[6, 8], [14, 16]]) * scale, rtol=1e-6)


def test_sep_conv_parameter_count():
  # Two (depthwise k*k*C + pointwise C*C) blocks, affine-free BN: 2 * (9*C + C*C).
  op = registry.build("sep_conv_3x3", 16, 1, affine=False)
  v = jax.eval_shape(lambda: op.init(jax.random.key(0), jnp.zeros((1, 8, 8, 16)), True))
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(v["params"]))
  assert n == 2 * (9 * 16 + 16 * 16)


