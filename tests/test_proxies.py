"""Zero-cost proxies against numpy references on tiny networks (dnas.proxies)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import eval_net, proxies


class Linear2(nn.Module):
  """f(x) = W2 W1 x: synflow has a closed form."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(3, use_bias=False)(x)
    return nn.Dense(2, use_bias=False)(h)


class Mlp(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(5, name="Dense_0")(x))
    return nn.Dense(3, name="Dense_1")(h)


def _mlp(seed=0):
  key = jax.random.key(seed)
  x = jax.random.normal(key, (6, 4))
  model = Mlp()
  return model, model.init(jax.random.key(1), x), {"image": x, "label": jnp.arange(6) % 3}


def _numpy_grads(v, x, labels):
  """Cross-entropy gradients of the MLP by hand: h = relu(x W1 + b1), z = h W2 + b2."""
  w1, b1 = np.asarray(v["Dense_0"]["kernel"]), np.asarray(v["Dense_0"]["bias"])
  w2, b2 = np.asarray(v["Dense_1"]["kernel"]), np.asarray(v["Dense_1"]["bias"])
  x = np.asarray(x, np.float64)
  a = x @ w1 + b1
  h = np.maximum(a, 0)
  z = h @ w2 + b2
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dz = (p - np.eye(3)[labels]) / len(x)
  dw2 = h.T @ dz
  da = (dz @ w2.T) * (a > 0)
  dw1 = x.T @ da
  return (w1, dw1), (w2, dw2)


def test_registry():
  assert {"naswot", "synflow", "grad_norm", "snip"} <= set(proxies.names())
  with pytest.raises(KeyError, match="registered proxies: .*grad_norm"):
    proxies.get("zen")
  with pytest.raises(ValueError, match="already registered"):
    proxies.register("snip")(lambda *a: 0.0)
  proxies.register("const")(lambda f, v, b: jnp.float32(3.0))
  try:
    assert proxies.score("const", None, {}, {}) == 3.0
  finally:
    proxies.unregister("const")


def test_synflow_linear_closed_form():
  # R = 1^T |W2| |W1| 1 is linear in each layer, so sum |W * dR/dW| = R per layer: 2R in all.
  model = Linear2()
  x = jnp.zeros((4, 5))
  v = model.init(jax.random.key(0), x)
  w1 = np.abs(np.asarray(v["params"]["Dense_0"]["kernel"], np.float64))
  w2 = np.abs(np.asarray(v["params"]["Dense_1"]["kernel"], np.float64))
  want = 2 * np.ones(5) @ w1 @ w2 @ np.ones(2)
  got = proxies.score("synflow", proxies.flax_apply_fn(model, train_kwarg=None), v,
                      {"image": x, "label": jnp.zeros(4, jnp.int32)})
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(float(got), want, rtol=1e-12)


def test_snip_and_grad_norm_match_numpy_backprop():
  model, v, batch = _mlp()
  f = proxies.flax_apply_fn(model, train_kwarg=None)
  (w1, g1), (w2, g2) = _numpy_grads(v["params"], batch["image"], np.asarray(batch["label"]))
  np.testing.assert_allclose(float(proxies.score("snip", f, v, batch)),
                             np.abs(w1 * g1).sum() + np.abs(w2 * g2).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(proxies.score("grad_norm", f, v, batch)),
                             np.linalg.norm(g1) + np.linalg.norm(g2), rtol=1e-5)


def test_naswot_matches_numpy_hamming_logdet():
  model, v, batch = _mlp()
  w1, b1 = np.asarray(v["params"]["Dense_0"]["kernel"]), np.asarray(v["params"]["Dense_0"]["bias"])
  codes = (np.asarray(batch["image"]) @ w1 + b1 > 0).astype(np.float64)
  got_codes = proxies.relu_codes(lambda x: model.apply(v, x), batch["image"])
  np.testing.assert_array_equal(np.asarray(got_codes), codes > 0)
  n = codes.shape[1]
  k = n - (codes[:, None, :] != codes[None, :, :]).sum(-1)  # N_A - Hamming distance
  sign, want = np.linalg.slogdet(k)
  got = proxies.score("naswot", proxies.flax_apply_fn(model, train_kwarg=None), v, batch)
  if sign > 0:
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
  else:
    assert float(got) == -np.inf
  known = np.array([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]], bool)
  kk = 4 - (known[:, None] != known[None]).sum(-1)
  np.testing.assert_allclose(float(proxies.hamming_logdet(jnp.asarray(known))),
                             np.linalg.slogdet(kk)[1], rtol=1e-5)


def test_no_relu_is_an_error():
  with pytest.raises(ValueError, match="no ReLU"):
    proxies.relu_codes(lambda x: 2 * x, jnp.ones((2, 3)))


def test_nb201_network_naswot_and_synflow_finite():
  # The smallest NB201 network; init and both proxies share one compilation, with backend
  # optimisation off (XLA's CPU compiler is otherwise most of this test). float32 suffices.
  arch = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|"
  model = eval_net.NB201Network(arch, num_classes=10, channels=4, cells_per_stage=1)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  batch = {"image": x, "label": jnp.arange(4) % 10}
  f = proxies.flax_apply_fn(model)

  def run(b):  # initialised inside: an eager init of this network takes longer than this
    v = model.init(jax.random.key(1), b["image"], train=True)
    return {n: proxies.get(n)(f, v, b) for n in ("naswot", "synflow")}

  scores = jax.jit(run).lower(batch).compile({"xla_backend_optimization_level": 0})(batch)
  for name, s in scores.items():
    assert np.isfinite(float(s)) and float(s) > 0, (name, s)
