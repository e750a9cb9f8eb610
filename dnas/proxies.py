"""Zero-cost proxies: scores of an untrained network from one minibatch, to rank architectures.

Every proxy is a pure function with one signature::

    score = proxy(apply_fn, variables, batch)   # a scalar jax.Array; higher ranks better

- ``apply_fn(variables, images, train) -> logits`` runs the network (``train`` selects batch
  statistics in BatchNorm); ``flax_apply_fn(model)`` makes one for any Flax module, dnas' eval
  networks (``NB201Network``, ``CifarNetwork``, which return ``(logits, aux)``) included.
- ``variables`` are the network's variables (``{"params": ..., "batch_stats": ...}``).
- ``batch`` is ``{"image": [B, H, W, C], "label": [B]}``.

Proxies are registered by name (``register``, ``get``, ``names``); ``score(name, ...)`` jits one
and runs it. Example::

    model = NB201Network(arch, channels=8, cells_per_stage=1)
    variables = model.init(key, batch["image"], train=True)
    s = proxies.score("synflow", proxies.flax_apply_fn(model), variables, batch)

Which weights count: the gradient-based proxies sum over the convolution and linear kernels only
(Flax's ``"kernel"`` leaves), as the reference code of Abdelfattah et al. does (its
``get_layer_metric_array`` visits ``nn.Conv2d`` and ``nn.Linear`` weights); biases and
BatchNorm's scale and offset are left out.

References:
  Abdelfattah, Mehrotra, Dudziak, Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021.
  Mellor, Turner, Storkey, Crowley, "Neural Architecture Search without Training", ICML 2021.
  Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020.
  Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
  ICLR 2019.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jcore

from dnas.types import Array, Batch

Variables = Dict[str, Any]
ApplyFn = Callable[[Variables, Array, bool], Array]
Proxy = Callable[[ApplyFn, Variables, Batch], Array]


class UnknownProxyError(KeyError):
  """A proxy name that is not registered."""

  def __str__(self):  # KeyError quotes its message; keep it readable.
    return str(self.args[0])


class _Entry(NamedTuple):
  fn: Proxy
  x64: bool


_REGISTRY: Dict[str, _Entry] = {}


def register(name: str, *, x64: bool = False,
             overwrite: bool = False) -> Callable[[Proxy], Proxy]:
  """Registers ``proxy(apply_fn, variables, batch) -> scalar`` under ``name``.

  Args:
    name: the proxy's name.
    x64: ``score`` runs it with 64-bit floats enabled and the variables cast to float64.
    overwrite: allow replacing a proxy of the same name.

  Returns:
    A decorator that registers and returns the function unchanged.

  Raises:
    ValueError: ``name`` is taken and ``overwrite`` is False, or is not a non-empty string.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"proxy name must be a non-empty string, got {name!r}")

  def decorator(fn: Proxy) -> Proxy:
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"proxy {name!r} is already registered; registered proxies: "
                       f"{names()}. Pass overwrite=True to replace it.")
    _REGISTRY[name] = _Entry(fn, bool(x64))
    return fn

  return decorator


def unregister(name: str) -> None:
  """Removes a registered proxy (mainly for tests)."""
  get(name)
  del _REGISTRY[name]


def get(name: str) -> Proxy:
  """The proxy registered under ``name``; an unknown name's error lists the valid ones."""
  try:
    return _REGISTRY[name].fn
  except KeyError:
    raise UnknownProxyError(f"unknown proxy {name!r}; registered proxies: "
                            f"{', '.join(names())}") from None


def names() -> List[str]:
  """The registered proxy names, sorted."""
  return sorted(_REGISTRY)


def score(name: str, apply_fn: ApplyFn, variables: Variables, batch: Batch) -> Array:
  """Jits proxy ``name`` and computes it (in float64 where the proxy was registered so)."""
  fn = get(name)
  run = jax.jit(fn, static_argnums=0)
  if not _REGISTRY[name].x64:
    return run(apply_fn, variables, batch)
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    return run(apply_fn, to64(variables), to64(dict(batch)))


def flax_apply_fn(model: nn.Module, train_kwarg: Optional[str] = "train",
                  logits_fn: Optional[Callable[[Any], Array]] = None) -> ApplyFn:
  """Wraps a Flax module as ``apply_fn(variables, images, train) -> logits``.

  In training mode every collection other than ``"params"`` (BatchNorm's ``"batch_stats"``) is
  mutable and its update is dropped: a proxy never changes the network.

  Args:
    model: a Flax Linen module called as ``model.apply(variables, images, **{train_kwarg: ...})``.
    train_kwarg: the name of its training-mode flag; None for a module without one.
    logits_fn: picks the logits from the module's output; default: the output itself, or its
      first element if it is a tuple (dnas' eval networks return ``(logits, aux_logits)``).

  Returns:
    An ``ApplyFn``.
  """
  def apply_fn(variables, images, train):
    kwargs = {train_kwarg: train} if train_kwarg else {}
    mutable = [k for k in variables if k != "params"] if train else []
    if mutable:
      out, _ = model.apply(variables, images, mutable=mutable, **kwargs)
    else:
      out = model.apply(variables, images, **kwargs)
    if logits_fn is not None:
      return logits_fn(out)
    return out[0] if isinstance(out, (tuple, list)) else out

  return apply_fn


def _is_kernel(path) -> bool:
  last = path[-1] if path else None
  return getattr(last, "key", None) == "kernel"


def _kernel_sum(fn: Callable[[Array, Array], Array], params, grads) -> Array:
  """``sum over kernel leaves of fn(theta, g)``."""
  terms = jax.tree_util.tree_map_with_path(
      lambda p, w, g: fn(w, g) if _is_kernel(p) else None, params, grads)
  leaves = jax.tree.leaves(terms)
  if not leaves:
    raise ValueError("the network has no 'kernel' parameters (convolution or linear weights)")
  return sum(leaves)


def _loss_grads(apply_fn: ApplyFn, variables: Variables, batch: Batch):
  """Gradient of the mean cross-entropy on ``batch``, BatchNorm in training mode."""
  def loss(params):
    logits = apply_fn({**variables, "params": params}, batch["image"], True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  return jax.grad(loss)(variables["params"])


@register("grad_norm")
def grad_norm(apply_fn: ApplyFn, variables: Variables, batch: Batch) -> Array:
  r"""Sum over weight tensors of the L2 norm of the loss gradient (Abdelfattah et al., 2021).

  ``score = sum_l ||dL/dtheta_l||_2`` over the convolution and linear kernels ``theta_l``, with
  ``L`` the mean cross-entropy of ``batch`` and BatchNorm in training mode (batch statistics),
  as the ``grad_norm`` measure of Abdelfattah et al.'s code: a sum of per-tensor norms, not the
  norm of the whole gradient.

  Reference: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, section 3.
  """
  grads = _loss_grads(apply_fn, variables, batch)
  return _kernel_sum(lambda w, g: jnp.sqrt(jnp.sum(g * g)), variables["params"], grads)


@register("snip")
def snip(apply_fn: ApplyFn, variables: Variables, batch: Batch) -> Array:
  r"""SNIP's connection sensitivity summed over the weights (Lee et al., 2019).

  ``score = sum_theta |theta * dL/dtheta|`` over the convolution and linear kernels (eq. 6 of
  Lee et al., before its normalisation, which does not change a ranking; Abdelfattah et al.,
  section 3, sum it over the network to score an architecture). ``L`` is the mean
  cross-entropy of ``batch`` with BatchNorm in training mode.

  Reference: Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", ICLR 2019.
  """
  grads = _loss_grads(apply_fn, variables, batch)
  return _kernel_sum(lambda w, g: jnp.sum(jnp.abs(w * g)), variables["params"], grads)


def _identity_batch_stats(stats):
  """Running mean 0 and variance 1: inference-mode BatchNorm is then (nearly) the identity."""
  def reset(path, a):
    name = getattr(path[-1], "key", None) if path else None
    if name == "mean":
      return jnp.zeros_like(a)
    if name == "var":
      return jnp.ones_like(a)
    return a

  return jax.tree_util.tree_map_with_path(reset, stats)


@register("synflow", x64=True)
def synflow(apply_fn: ApplyFn, variables: Variables, batch: Batch) -> Array:
  r"""Synaptic flow (Tanaka et al., 2020), as Abdelfattah et al. (2021) score networks with it.

  Every parameter is replaced by its absolute value, the input by one all-ones image of the
  batch's shape, and with ``R = sum(f(1; |theta|))``::

      score = sum_theta |theta * dR/dtheta|   (Tanaka et al., eq. 2; summed over the weights)

  over the convolution and linear kernels. BatchNorm: Abdelfattah et al. remove it for
  synflow (``bn=False``); here it runs in inference mode with running mean 0 and variance 1,
  i.e. ``y = |gamma| x / sqrt(1 + eps) + |beta|``, the identity up to ``sqrt(1 + eps)`` at
  Flax's initial ``gamma = 1, beta = 0`` (whatever ``batch_stats`` the caller passes).

  Precision: ``R`` is a product over the depth of per-layer gains and overflows float32 in deep
  networks (NAS-Bench-201 at C=16 reaches ~1e40). ``score("synflow", ...)`` computes in
  float64, as the reference code does (``net.double()``); called directly under float32 the
  result may be ``inf``.

  Reference: Tanaka, Kunin, Yamins, Ganguli, NeurIPS 2020; Abdelfattah et al., ICLR 2021.
  """
  params = jax.tree.map(jnp.abs, variables["params"])
  state = {k: (_identity_batch_stats(v) if k == "batch_stats" else v)
           for k, v in variables.items() if k != "params"}
  image = batch["image"]
  ones = jnp.ones((1,) + tuple(image.shape[1:]), image.dtype)

  def r(p):
    return jnp.sum(apply_fn({**state, "params": p}, ones, False))

  grads = jax.grad(r)(params)
  return _kernel_sum(lambda w, g: jnp.sum(jnp.abs(w * g)), params, grads)


# --- NASWOT: binary ReLU codes, collected by interpreting the forward pass's jaxpr ---------

_CALL_PARAMS = ("jaxpr", "call_jaxpr")  # pjit/closed_call, custom_jvp_call/custom_vjp_call


def _is_zero_literal(v) -> bool:
  if not isinstance(v, jcore.Literal):
    return False
  val = np.asarray(v.val)
  return val.size == 1 and float(val.reshape(())) == 0.0


def _eval_collecting(jaxpr, consts, args, codes: list):
  """Evaluates ``jaxpr``, appending ``x > 0`` for every ``max(x, 0)`` (a ReLU) to ``codes``."""
  env = {}

  def read(v):
    return v.val if isinstance(v, jcore.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
    if sub is not None and hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
      outs = _eval_collecting(sub.jaxpr, sub.consts, invals, codes)
    else:
      if eqn.primitive.name == "max":
        a, b = eqn.invars
        if _is_zero_literal(b) and not _is_zero_literal(a):
          codes.append(read(a) > 0)
        elif _is_zero_literal(a):
          codes.append(read(b) > 0)
      outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def relu_codes(fn: Callable[..., Any], *args) -> Array:
  """The binary codes of every ReLU that ``fn(*args)`` evaluates, as one ``[B, N_A]`` array.

  A ReLU is found as a ``max(x, 0)`` in the traced computation (``jax.nn.relu``, ``nn.relu``,
  ``jnp.maximum(x, 0)``), inside nested ``jit`` and ``custom_jvp`` calls; the code of unit ``u``
  for sample ``b`` is ``x[b, u] > 0`` (the sign of the ReLU's input, as Mellor et al.'s hooks
  record). No module needs instrumenting. Not seen: ReLUs inside ``lax.scan``, ``cond`` or
  ``while`` bodies, and activations written another way (``jnp.where(x > 0, x, 0)``).

  Args:
    fn: a function of arrays whose first argument's leading axis is the batch.
    *args: its arguments.

  Returns:
    ``[B, N_A]`` booleans, the ReLUs in evaluation order, each flattened per sample.

  Raises:
    ValueError: ``fn`` evaluates no ReLU.
  """
  closed = jax.make_jaxpr(fn)(*args)
  codes: list = []
  _eval_collecting(closed.jaxpr, closed.consts, jax.tree.leaves(args), codes)
  if not codes:
    raise ValueError("naswot: the network evaluates no ReLU (max(x, 0)) to take codes from")
  batch = codes[0].shape[0]
  return jnp.concatenate([c.reshape(batch, -1) for c in codes], axis=1)


def hamming_logdet(codes: Array) -> Array:
  r"""``log |K_H|`` for binary codes ``c`` (``[B, N_A]``), Mellor et al.'s eq. 2.

  ``K_H[i, j] = N_A - d_H(c_i, c_j) = c_i . c_j + (1 - c_i) . (1 - c_j)``. Computed as
  ``B log N_A + log |K_H / N_A|`` to keep the determinant in floating-point range; ``-inf``
  when two samples have the same code (``K_H`` is then singular).
  """
  c = codes.astype(jnp.float32)
  n = c.shape[1]
  k = (c @ c.T + (1.0 - c) @ (1.0 - c).T) / n
  sign, logdet = jnp.linalg.slogdet(k)
  return jnp.where(sign > 0, logdet + c.shape[0] * jnp.log(float(n)), -jnp.inf)


@register("naswot")
def naswot(apply_fn: ApplyFn, variables: Variables, batch: Batch) -> Array:
  r"""NASWOT (Mellor et al., ICML 2021): log-determinant of the ReLU codes' Hamming kernel.

  Each image of ``batch`` gets a binary code, one bit per ReLU unit of the network (1 where the
  ReLU's input is positive); with ``N_A`` units and Hamming distance ``d_H``::

      K_H[i, j] = N_A - d_H(c_i, c_j),   score = log |det K_H|      (Mellor et al., eq. 2)

  Codes come from the traced forward pass (``relu_codes``), so any network built from
  ``relu``/``maximum(x, 0)`` works unchanged. BatchNorm is in training mode (batch statistics),
  as the reference code runs the freshly built network. The score needs distinct images: a
  batch with two equal codes gives ``-inf``.

  Reference: Mellor, Turner, Storkey, Crowley, "Neural Architecture Search without Training",
  ICML 2021, section 3 (github.com/BayesWatch/nas-without-training).
  """
  codes = relu_codes(lambda x: apply_fn(variables, x, True), batch["image"])
  return hamming_logdet(codes)
