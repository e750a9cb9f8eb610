"""Every candidate op against a hand-written reference built from ``jax.lax`` primitives.

The other op tests check shapes, parameter counts and that alternative implementations agree
with each other; none of them would notice an op computing something else of the right shape
(a dilated conv without its dilation, a separable conv without its ReLUs, ReLU after the conv
instead of before it, a search mixed op without the BatchNorm after its pools). Here each op's
output is recomputed from its own weights, pulled out of the variables by name, with
``lax.conv_general_dilated``, ``lax.reduce_window``, ``jnp.maximum(x, 0)`` and BatchNorm
written out, following the reference PyTorch code:

- DARTS (github.com/quark0/darts cnn/operations.py): ReLU-Conv-BN; ``SepConv`` is twice ReLU,
  depthwise conv, 1x1 conv, BN (only the first strided); ``DilConv`` is ReLU, depthwise conv
  with dilation 2 (padding 2 for 3x3, 4 for 5x5), 1x1 conv, BN; ``FactorizedReduce`` is ReLU,
  two 1x1 stride-2 convs (the second on the input shifted by one pixel), concatenated, BN;
  ``nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)``; ``nn.MaxPool2d(3, stride,
  padding=1)``. cnn/model_search.py's ``MixedOp`` follows every op whose name contains
  ``pool`` with ``nn.BatchNorm2d(C, affine=False)``.
- NAS-Bench-201 (github.com/D-X-Y/AutoDL-Projects lib/models/cell_operations.py): ReLU-Conv-BN
  with bias-free convs, the same average pool, and no BatchNorm after it in a search cell.

BatchNorm is PyTorch's: eps 1e-5; in training the batch mean and biased variance over N, H, W
normalise, and running averages move by momentum 0.1 (of the biased variance, where PyTorch
averages the unbiased one: see ``_bn``); in evaluation the stored running statistics normalise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dnas import eval_net, genotypes, published
from dnas.ops import registry
from dnas.ops.sets import DARTS, NB201
from dnas.spaces import cell as cell_lib

EPS = 1e-5       # torch.nn.BatchNorm2d's default
MOMENTUM = 0.1   # PyTorch's convention: new = (1 - m) * old + m * batch
RTOL = ATOL = 2e-5

B, H, W, C = 2, 8, 8, 4
ALL_OPS = tuple(dict.fromkeys(DARTS.ops + NB201.ops))

# The module each op's factory returns, as it is named when built inside another module (a
# mixed edge or a genotype edge). Ops absent here hold no variables.
_MODULE = {"sep_conv_3x3": "SepConv_0", "sep_conv_5x5": "SepConv_0",
           "dil_conv_3x3": "DilConv_0", "dil_conv_5x5": "DilConv_0",
           "nor_conv_1x1": "ReLUConvBN_0", "nor_conv_3x3": "ReLUConvBN_0",
           "skip_connect": "FactorizedReduce_0"}


# ------------------------------------------------------------------------------------------
# The reference: lax primitives only, weights taken from the variable trees by name.


def _conv(x, w, stride=1, padding=0, dilation=1, groups=1):
  return lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=lax.Precision.HIGHEST)


def _relu(x):
  return jnp.maximum(x, 0.0)


def _bn(x, params, stats, train, affine):
  """BatchNorm over N, H, W; returns the output and the running statistics after the call."""
  if train:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))  # biased, as PyTorch normalises
    # PyTorch's running variance averages the unbiased batch variance (n / (n - 1) times this
    # one); flax's BatchNorm averages the biased one. The factor is 1 + 1/(N*H*W - 1), under
    # 0.03 % at CIFAR batch sizes; pinned here as the library computes it.
    new = {"mean": (1 - MOMENTUM) * stats["mean"] + MOMENTUM * mean,
           "var": (1 - MOMENTUM) * stats["var"] + MOMENTUM * var}
  else:
    mean, var, new = stats["mean"], stats["var"], stats
  y = (x - mean) / jnp.sqrt(var + EPS)
  if affine:
    y = y * params["scale"] + params["bias"]
  else:
    assert params is None, "an affine-free BatchNorm has no scale or bias"
  return y, new


def _max_pool(x, stride):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def _avg_pool(x, stride):
  # count_include_pad=False: each window's sum over the number of real pixels it covers.
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  sums = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, stride, stride, 1), pad)
  taps = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, (1, 3, 3, 1),
                           (1, stride, stride, 1), pad)
  return sums / taps


def _relu_conv_bn(x, p, s, train, affine, k, stride, padding):
  w = p["Conv_0"]["kernel"]
  assert w.shape == (k, k, x.shape[-1], w.shape[-1])
  y, st = _bn(_conv(_relu(x), w, stride, padding), p.get("BatchNorm_0"), s["BatchNorm_0"],
              train, affine)
  return y, {"BatchNorm_0": st}


def _dil_conv(x, p, s, train, affine, k, stride, padding, dilation):
  """ReLU, depthwise k x k conv (dilated), 1x1 conv, BN."""
  c = x.shape[-1]
  dw, pw = p["Conv_0"]["kernel"], p["Conv_1"]["kernel"]
  assert dw.shape == (k, k, 1, c) and pw.shape[:3] == (1, 1, c)
  y = _conv(_relu(x), dw, stride, padding, dilation, groups=c)
  y, st = _bn(_conv(y, pw), p.get("BatchNorm_0"), s["BatchNorm_0"], train, affine)
  return y, {"BatchNorm_0": st}


def _sep_conv(x, p, s, train, affine, k, stride, padding):
  """Twice (ReLU, depthwise k x k conv, 1x1 conv, BN); only the first depthwise conv strides."""
  c = x.shape[-1]
  new = {}
  for i, st in enumerate((stride, 1)):
    name = f"DilConv_{i}"
    dw, pw = p[name]["Conv_0"]["kernel"], p[name]["Conv_1"]["kernel"]
    assert dw.shape == (k, k, 1, c) and pw.shape[:3] == (1, 1, c)
    x = _conv(_relu(x), dw, st, padding, 1, groups=c)
    x, stats = _bn(_conv(x, pw), p[name].get("BatchNorm_0"), s[name]["BatchNorm_0"], train,
                   affine)
    new[name] = {"BatchNorm_0": stats}
  return x, new


def _factorized_reduce(x, p, s, train, affine):
  x = _relu(x)
  a = _conv(x, p["Conv_0"]["kernel"], stride=2)
  b = _conv(x[:, 1:, 1:, :], p["Conv_1"]["kernel"], stride=2)
  y, st = _bn(jnp.concatenate([a, b], axis=-1), p.get("BatchNorm_0"), s["BatchNorm_0"], train,
              affine)
  return y, {"BatchNorm_0": st}


def reference_op(name, x, params, stats, stride, train, affine):
  """Op ``name`` on ``x`` with the op's own ``params`` and ``batch_stats`` subtrees.

  Returns the output and the op's running statistics after the call (``{}`` if it has none).
  """
  if name == "none":
    return jnp.zeros((x.shape[0], -(-x.shape[1] // stride), -(-x.shape[2] // stride),
                      x.shape[3]), x.dtype), {}
  if name == "max_pool_3x3":
    return _max_pool(x, stride), {}
  if name == "avg_pool_3x3":
    return _avg_pool(x, stride), {}
  if name == "skip_connect":
    if stride == 1:
      return x, {}
    return _factorized_reduce(x, params, stats, train, affine)
  if name == "sep_conv_3x3":
    return _sep_conv(x, params, stats, train, affine, k=3, stride=stride, padding=1)
  if name == "sep_conv_5x5":
    return _sep_conv(x, params, stats, train, affine, k=5, stride=stride, padding=2)
  if name == "dil_conv_3x3":
    return _dil_conv(x, params, stats, train, affine, k=3, stride=stride, padding=2, dilation=2)
  if name == "dil_conv_5x5":
    return _dil_conv(x, params, stats, train, affine, k=5, stride=stride, padding=4, dilation=2)
  if name == "nor_conv_1x1":
    return _relu_conv_bn(x, params, stats, train, affine, k=1, stride=stride, padding=0)
  if name == "nor_conv_3x3":
    return _relu_conv_bn(x, params, stats, train, affine, k=3, stride=stride, padding=1)
  raise AssertionError(f"no reference for op {name!r}")


def _unwrap(tree, name):
  """An op's subtree inside a module that built it (``{}`` for ops without variables)."""
  return tree.get(_MODULE[name], {}) if name in _MODULE else {}


# ------------------------------------------------------------------------------------------
# Non-trivial variables: the defaults (unit scale, zero bias, zero mean, unit variance) would
# hide a missing or misplaced BatchNorm term.


def _perturb(shapes, seed):
  """Random values for every variable of a tree of shapes: kernels ~ N(0, 1/fan_in), scales and
  variances in [0.5, 2], biases and means ~ N(0, 0.5^2)."""
  # numpy's generator, not jax.random: compiling JAX's sampler for every new shape costs
  # seconds each on a small CPU.
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(a.shape[-3:-1]) if len(a.shape) >= 4 else a.shape[-2]
      value = rng.standard_normal(a.shape) / math.sqrt(fan_in)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 2.0, a.shape)
    elif name in ("bias", "mean"):
      value = 0.5 * rng.standard_normal(a.shape)
    else:
      raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")
    return jnp.asarray(value, a.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _variables(module, seed, *args, **kwargs):
  """The module's variables (structure from ``init``, values from ``_perturb``)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return {col: _perturb(tree, seed + i) for i, (col, tree) in enumerate(sorted(shapes.items()))}


def _assert_trees_close(got, want, rtol=RTOL, atol=ATOL):
  assert jax.tree.structure(got) == jax.tree.structure(want), (got, want)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(autouse=True)
def _native_forms(monkeypatch):
  # Tests that take no `form` run on XLA's native convolutions.
  monkeypatch.setenv("DNAS_DEPTHWISE", "conv")
  monkeypatch.setenv("DNAS_DENSE_CONV", "conv")


# The library computes depthwise and dense convs two ways (XLA's convolution, or a shifted sum
# and im2col on the CPU); the reference must hold for both.
FORMS = {"native": {"DNAS_DEPTHWISE": "conv", "DNAS_DENSE_CONV": "conv"},
         "cpu": {"DNAS_DEPTHWISE": "shift", "DNAS_DENSE_CONV": "im2col"}}


def _use_form(monkeypatch, form):
  for var, value in FORMS[form].items():
    monkeypatch.setenv(var, value)


def _input(seed, shape=(B, H, W, C)):
  # Zero-mean inputs: about half the entries are negative, so every ReLU changes something.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ------------------------------------------------------------------------------------------
# 1. Each op, alone.

def _has_conv(name, stride):
  return name in _MODULE and (name, stride) != ("skip_connect", 1)


# Every op at both strides, training and evaluation, affine and affine-free BatchNorm, under
# XLA's convolutions; the ops with convolutions again under the CPU forms (affine only: the
# form of the convolution and BatchNorm's affine terms do not interact).
OP_CASES = [(name, stride, train, affine, form)
            for name in ALL_OPS for stride in (1, 2) for train in (True, False)
            for affine in (True, False) for form in sorted(FORMS)
            if form == "native" or (affine and _has_conv(name, stride))]


def _op_case_id(case):
  name, stride, train, affine, form = case
  return (f"{name}-s{stride}-{'train' if train else 'eval'}-"
          f"{'affine' if affine else 'affine_free'}-{form}")


@pytest.mark.parametrize("name,stride,train,affine,form", OP_CASES,
                         ids=[_op_case_id(c) for c in OP_CASES])
def test_op_matches_lax_reference(monkeypatch, name, stride, train, affine, form):
  _use_form(monkeypatch, form)
  op = registry.build(name, C, stride, affine=affine)
  x = _input(1)
  variables = _variables(op, 2, x, True)
  params, stats = variables.get("params", {}), variables.get("batch_stats", {})
  if train:
    y, updates = op.apply(variables, x, True, mutable=["batch_stats"])
    new_stats = updates.get("batch_stats", {})
  else:
    y, new_stats = op.apply(variables, x, False), stats
  want, want_stats = reference_op(name, x, params, stats, stride, train, affine)
  assert y.shape == want.shape == (B, H // stride, W // stride, C)
  np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
  # Training moves the running statistics by momentum 0.1 towards the batch's.
  _assert_trees_close(new_stats, want_stats)
  if not train and stats:
    # Evaluation really reads the stored statistics: the batch's give another output.
    y_train, _ = op.apply(variables, x, True, mutable=["batch_stats"])
    assert not np.allclose(y, y_train, rtol=1e-3, atol=1e-3)


def test_average_pool_divides_by_the_real_pixels_of_each_window():
  # PyTorch's AvgPool2d(3, stride, padding=1, count_include_pad=False), as both papers' code.
  x = jnp.ones((1, 4, 4, 1))
  for stride in (1, 2):
    y = registry.build("avg_pool_3x3", 1, stride).apply({}, x, True)
    np.testing.assert_allclose(y, jnp.ones_like(y), rtol=1e-6)
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = registry.build("avg_pool_3x3", 1, 1).apply({}, x, True)
  assert float(y[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)  # not / 9
  assert float(y[0, 0, 1, 0]) == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)


def test_dilated_conv_taps_are_two_pixels_apart():
  # A single nonzero input pixel: the 3x3 dilated kernel spreads it to a 5x5 footprint whose
  # taps are every other pixel (dilation 2), the 5x5 kernel to a 9x9 one.
  for name, reach in (("dil_conv_3x3", 2), ("dil_conv_5x5", 4)):
    op = registry.build(name, 1, 1, affine=False)
    x = jnp.zeros((1, 11, 11, 1)).at[0, 5, 5, 0].set(1.0)
    v = jax.eval_shape(lambda: op.init(jax.random.key(0), x, True))
    ones = lambda a: jnp.ones(a.shape, a.dtype)  # noqa: E731
    variables = {"params": jax.tree.map(ones, v["params"]),
                 "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros(1), "var": jnp.ones(1)}}}
    y = op.apply(variables, x, False)[0, :, :, 0]
    touched = np.argwhere(np.abs(np.asarray(y)) > 0)
    offsets = sorted({int(r) - 5 for r, _ in touched})
    assert offsets == list(range(-reach, reach + 1, 2)), (name, offsets)


# ------------------------------------------------------------------------------------------
# 2. The search mixed op: DARTS' BatchNorm after the pools.


def test_darts_search_op_set_puts_affine_free_batch_norm_after_its_pools():
  # cnn/model_search.py MixedOp: `if 'pool' in primitive: op = nn.Sequential(op,
  # nn.BatchNorm2d(C, affine=False))`.
  assert set(DARTS.bn_after) == {op for op in DARTS.ops if "pool" in op}
  assert set(DARTS.bn_after) == {"max_pool_3x3", "avg_pool_3x3"}
  # NAS-Bench-201's search cells use its OPS table as it is: no BatchNorm after the pool.
  assert NB201.bn_after == ()


def _bn_after_pools(op_set):
  """Which ops the papers' search code follows with an affine-free BatchNorm."""
  return {DARTS.name: lambda op: "pool" in op, NB201.name: lambda op: False}[op_set.name]


def _reference_mixture(op_set, xs, mix, params, stats, stride, train):
  """``out[d] = sum_{e, k} mix[e, k, d] * op_k(xs[e])`` with the papers' BN after pools."""
  bn_after = _bn_after_pools(op_set)
  n_edges, _, n_dest = mix.shape
  out = [0.0] * n_dest
  for e in range(n_edges):
    for k, op in enumerate(op_set.ops):
      # Edge e's own weights: row e of the op's stacked variables.
      p, s = (jax.tree.map(lambda a: a[e], tree.get(op, {})) for tree in (params, stats))
      y, _ = reference_op(op, xs[e], _unwrap(p, op), _unwrap(s, op), stride, train,
                          affine=False)
      if bn_after(op):
        assert "BatchNorm_0" not in p  # affine-free
        y, _ = _bn(y, None, s["BatchNorm_0"], train, affine=False)
      for d in range(n_dest):
        out[d] = out[d] + mix[e, k, d] * y
  return jnp.stack(out)


def _mixture_weights(seed, n_edges, op_set, n_dest):
  # Larger weights on the pools, so that what follows them weighs in the sum.
  rng = np.random.default_rng(seed)
  w = rng.uniform(0.1, 0.5, (n_edges, len(op_set.ops), n_dest))
  pools = np.array([1.0 if "pool" in op else 0.0 for op in op_set.ops])[None, :, None]
  return jnp.asarray(w + pools * rng.uniform(1.0, 2.0, w.shape), jnp.float32)


@pytest.mark.parametrize("shared_input", [False, True], ids=["per_edge_input", "shared_input"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("op_set,stride", [(DARTS, 1), (DARTS, 2), (NB201, 1)],
                         ids=["darts-s1", "darts-s2", "nb201-s1"])
def test_mixed_edges_match_reference_mixture(op_set, stride, train, shared_input):
  # One implementation form suffices here: the ops are pinned under both above, and
  # tests/test_cell.py checks the mixed edges against the ops under both.
  n_edges, n_dest = 2, 2
  x = _input(3, ((B, H, W, C) if shared_input else (n_edges, B, H, W, C)))
  xs = jnp.broadcast_to(x, (n_edges, B, H, W, C)) if shared_input else x
  mix = _mixture_weights(4, n_edges, op_set, n_dest)
  module = cell_lib.MixedEdges(op_set, C, stride, affine=False, train=train,
                               shared_input=shared_input)
  variables = _variables(module, 5, x, mix)
  if train:
    got, _ = module.apply(variables, x, mix, mutable=["batch_stats"])
  else:
    got = module.apply(variables, x, mix)
  want = _reference_mixture(op_set, xs, mix, variables.get("params", {}),
                            variables.get("batch_stats", {}), stride, train)
  assert got.shape == want.shape == (n_dest, B, H // stride, W // stride, C)
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("op_set,reduction", [(DARTS, False), (DARTS, True), (NB201, False)],
                         ids=["darts-normal", "darts-reduce", "nb201"])
def test_supernet_cell_edge_matches_reference_mixture(op_set, reduction, train):
  # A one-node cell is one mixed edge, computed the way the supernets compute it (the edge scan
  # of a normal cell, the vmapped group of a reduction cell).
  x = _input(6)
  weights = _mixture_weights(7, 1, op_set, 1)[:, :, 0]
  cell = cell_lib.SearchCell(op_set, C, n_inputs=1, n_nodes=1, reduction=reduction,
                             train=train, scan_inputs=True, pack=True)
  variables = _variables(cell, 8, [x], weights)
  if train:
    (node,), _ = cell.apply(variables, [x], weights, mutable=["batch_stats"])
  else:
    (node,) = cell.apply(variables, [x], weights)
  (group,) = variables["params"]  # the cell's one set of stacked edge weights
  stride = 2 if reduction else 1
  want = _reference_mixture(op_set, x[None], weights[:, :, None], variables["params"][group],
                            variables["batch_stats"][group], stride, train)[0]
  np.testing.assert_allclose(node, want, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------
# 3. Evaluation networks read the stored running statistics.


def _reference_edge(name, x, params, stats, stride, train):
  y, _ = reference_op(name, x, _unwrap(params, name), _unwrap(stats, name), stride, train,
                      affine=True)
  return y


def _reference_darts_network(genotype, variables, x, layers, train):
  """DARTS' NetworkCIFAR forward (cnn/model.py), without drop-path or the auxiliary head."""
  p, s = variables["params"], variables["batch_stats"]
  stem, _ = _bn(_conv(x, p["stem"]["Conv_0"]["kernel"], padding=1),
                p["stem"]["BatchNorm_0"], s["stem"]["BatchNorm_0"], train, True)
  s0 = s1 = stem
  reduction_prev = False
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)  # channel counts follow from the weights
    cp, cs = p["cells"][f"cell{i}"], s["cells"][f"cell{i}"]
    if reduction_prev:
      h0, _ = _factorized_reduce(s0, cp["preprocess0"], cs["preprocess0"], train, True)
    else:
      h0, _ = _relu_conv_bn(s0, cp["preprocess0"], cs["preprocess0"], train, True, 1, 1, 0)
    h1, _ = _relu_conv_bn(s1, cp["preprocess1"], cs["preprocess1"], train, True, 1, 1, 0)
    edges, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                     else (genotype.normal, genotype.normal_concat))
    states = [h0, h1]
    for node in range(len(edges) // 2):
      total = 0.0
      for e in (2 * node, 2 * node + 1):
        op, src = edges[e]
        stride = 2 if reduction and src < 2 else 1
        total = total + _reference_edge(op, states[src], cp.get(f"op{e}", {}),
                                        cs.get(f"op{e}", {}), stride, train)
      states.append(total)
    s0, s1 = s1, jnp.concatenate([states[j] for j in concat], axis=-1)
    reduction_prev = reduction
  dense = p["classifier"]["Dense_0"]
  return jnp.mean(s1, axis=(1, 2)) @ dense["kernel"] + dense["bias"]


def _reference_nb201_network(genotype, variables, x, cells_per_stage, train):
  """NAS-Bench-201's TinyNetwork forward (models/cell_infers/tiny_network.py)."""
  p, s = variables["params"], variables["batch_stats"]
  x, _ = _bn(_conv(x, p["stem"]["Conv_0"]["kernel"], padding=1),
             p["stem"]["BatchNorm_0"], s["stem"]["BatchNorm_0"], train, True)
  for stage in range(3):
    if stage > 0:
      bp, bs = p[f"reduce{stage}"], s[f"reduce{stage}"]
      y, _ = _relu_conv_bn(x, bp["conv_a"], bs["conv_a"], train, True, 3, 2, 1)
      y, _ = _relu_conv_bn(y, bp["conv_b"], bs["conv_b"], train, True, 3, 1, 1)
      shortcut = lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
      x = _conv(shortcut, bp["downsample"]["kernel"]) + y
    for i in range(cells_per_stage):
      cp, cs = p[f"stage{stage}_cell{i}"], s.get(f"stage{stage}_cell{i}", {})
      states = [x]
      for n, node in enumerate(genotype.nodes):
        total = 0.0
        for j, (op, src) in enumerate(node):
          name = f"node{n + 1}_edge{j}"
          total = total + _reference_edge(op, states[src], cp.get(name, {}), cs.get(name, {}),
                                          1, train)
        states.append(total)
      x = states[-1]
  x, _ = _bn(x, p["lastact"], s["lastact"], train, True)
  dense = p["classifier"]["Dense_0"]
  return jnp.mean(_relu(x), axis=(1, 2)) @ dense["kernel"] + dense["bias"]


ALL_NB201_OPS = ("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|"
                 "+|skip_connect~0|nor_conv_3x3~1|none~2|")


def test_darts_eval_network_uses_running_statistics():
  # DARTS_V2 holds sep_conv_3x3, dil_conv_3x3, max_pool_3x3 and skip_connect; its preprocessing
  # adds 1x1 ReLU-Conv-BN and a factorized reduce. The other ops are pinned one by one above.
  genotype = published.get("DARTS_V2")
  channels, layers = 4, 3  # both reductions; the second follows the first (factorized reduce)
  model = eval_net.CifarNetwork(genotype, num_classes=5, channels=channels, layers=layers,
                                auxiliary=False)
  x = _input(9, (B, 8, 8, 3))
  variables = _variables(model, 10, x, train=True)
  logits, aux = model.apply(variables, x, train=False)
  assert aux is None
  want = _reference_darts_network(genotype, variables, x, layers, train=False)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  (train_logits, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(
      train_logits, _reference_darts_network(genotype, variables, x, layers, True),
      rtol=1e-4, atol=1e-4)
  assert not np.allclose(logits, train_logits, rtol=1e-2, atol=1e-2)


def test_nb201_eval_network_uses_running_statistics():
  genotype = genotypes.NB201Genotype.from_arch(ALL_NB201_OPS)
  model = eval_net.NB201Network(genotype, num_classes=5, channels=4, cells_per_stage=1)
  x = _input(11, (B, 8, 8, 3))
  variables = _variables(model, 12, x, train=True)
  logits, aux = model.apply(variables, x, train=False)
  assert aux is None
  want = _reference_nb201_network(genotype, variables, x, 1, train=False)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
  (train_logits, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(train_logits, _reference_nb201_network(genotype, variables, x, 1,
                                                                    True),
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(logits, train_logits, rtol=1e-2, atol=1e-2)


def test_eval_output_follows_the_stored_statistics():
  # Setting the running statistics by hand moves the eval output exactly as a BatchNorm with
  # those statistics would: y = (conv - mean) / sqrt(var + eps) * scale + bias.
  op = registry.build("nor_conv_3x3", C, 1, affine=True)
  x = _input(13)
  variables = _variables(op, 14, x, True)
  conv = _conv(_relu(x), variables["params"]["Conv_0"]["kernel"], padding=1)
  bn = variables["params"]["BatchNorm_0"]
  for mean, var in ((jnp.array([0.0, 1.0, -2.0, 3.0]), jnp.array([1.0, 4.0, 0.25, 9.0])),
                    (jnp.full((C,), 5.0), jnp.full((C,), 100.0))):
    stats = {"BatchNorm_0": {"mean": mean, "var": var}}
    y = op.apply({"params": variables["params"], "batch_stats": stats}, x, False)
    want = (conv - mean) / jnp.sqrt(var + EPS) * bn["scale"] + bn["bias"]
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
