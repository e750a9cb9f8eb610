"""iDARTS' implicit hypergradient (``search.darts.hessian="implicit"``) against the exact
hypergradient of a bilevel problem whose lower level is solved in closed form."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas.strategies import darts
from dnas.strategies.base import BilevelProblem
from dnas.strategies.darts import neumann_inverse_hvp

N, E, K = 6, 3, 4


@pytest.fixture
def quadratic(x64):
  del x64
  rng = np.random.default_rng(0)
  m = rng.normal(size=(N, N))
  a = jnp.asarray(m @ m.T / N + np.eye(N))              # the lower level's Hessian, SPD
  b = jnp.asarray(rng.normal(size=(N, E * K)))
  c = jnp.asarray(rng.normal(size=N))
  d = jnp.asarray(rng.normal(size=E * K))

  def loss_fn(w, op_weights, batch):
    s = op_weights["cell"].reshape(-1)
    if batch == "train":  # L_train = 1/2 w'Aw - w'Bs: w*(alpha) = A^-1 B s
      loss = 0.5 * w @ a @ w - w @ (b @ s)
    else:                 # L_val = 1/2 |w - c|^2 + d's
      loss = 0.5 * jnp.sum((w - c) ** 2) + d @ s
    return loss, (None, jnp.zeros((1, 2)))

  def w_star(arch):
    return jnp.linalg.solve(a, b @ jax.nn.softmax(arch["cell"], -1).reshape(-1))

  def exact(arch):  # d/dalpha L_val(w*(alpha), alpha), by autodiff through the solve
    return jax.grad(lambda ar: loss_fn(w_star(ar), {"cell": jax.nn.softmax(ar["cell"], -1)},
                                       "val")[0])(arch)

  arch = {"cell": jnp.asarray(rng.normal(size=(E, K)))}
  return a, loss_fn, w_star, exact, arch


def _hypergrad(loss_fn, w, arch, xi, steps):
  strategy = darts(order=2, hessian="implicit", learning_rate=xi, neumann_steps=steps)
  problem = BilevelProblem(loss_fn, None, None, "train", "val")
  g, aux = strategy.arch_grad(problem, w, arch, strategy.init(arch), None)
  assert np.isfinite(aux["val_loss"])
  return g["cell"]


def test_converged_neumann_series_gives_the_exact_hypergradient(quadratic):
  a, loss_fn, w_star, exact, arch = quadratic
  xi = 1.0 / float(np.linalg.eigvalsh(np.asarray(a)).max())  # 0 < xi * eig(A) <= 1
  got = _hypergrad(loss_fn, w_star(arch), arch, xi, 400)
  np.testing.assert_allclose(got, exact(arch)["cell"], rtol=1e-6, atol=1e-9)
  # The first-order gradient (no implicit term) is not it: the test can tell.
  first = jax.grad(lambda ar: loss_fn(w_star(arch), {"cell": jax.nn.softmax(ar["cell"], -1)},
                                      "val")[0])(arch)["cell"]
  assert np.abs(first - exact(arch)["cell"]).max() > 1e-2


def test_truncated_series_is_the_reference_sum_by_hand(quadratic):
  a, loss_fn, w_star, _, arch = quadratic
  w = w_star(arch) + 0.1  # away from the solution: the formula holds at any weights
  xi, steps = 0.05, 2
  an = np.asarray(a)
  bmat = np.asarray(jax.jacobian(lambda s: jax.grad(
      lambda ww: loss_fn(ww, {"cell": s.reshape(E, K)}, "train")[0])(w))(
          jnp.zeros(E * K)))                               # d(grad_w L_train)/ds = -B
  # grad_w L_val = w - c, read off the loss (c is the fixture's).
  v = np.asarray(jax.grad(lambda ww: loss_fn(ww, {"cell": jax.nn.softmax(arch["cell"], -1)},
                                             "val")[0])(w))
  series = v + (np.eye(N) - xi * an) @ v + (np.eye(N) - xi * an) @ (np.eye(N) - xi * an) @ v
  u = -xi * series
  s = np.asarray(jax.nn.softmax(arch["cell"], -1))
  # d/dalpha [ (grad_w L_train)' u ] = d/dalpha [ -(B s)' u ] = -(B' u) through the softmax.
  dl_ds = bmat.T @ u + np.asarray(jax.grad(
      lambda ss: loss_fn(w, {"cell": ss.reshape(E, K)}, "val")[0])(jnp.asarray(s.reshape(-1))))
  jac = np.zeros((E, K, K))
  for e in range(E):
    jac[e] = np.diag(s[e]) - np.outer(s[e], s[e])
  want = np.einsum("ekj,ej->ek", jac, dl_ds.reshape(E, K))
  np.testing.assert_allclose(_hypergrad(loss_fn, w, arch, xi, steps), want, rtol=1e-8, atol=1e-12)


def test_neumann_series_and_errors():
  h = jnp.diag(jnp.array([1.0, 2.0]))
  v = jnp.array([1.0, 1.0])
  got = neumann_inverse_hvp(lambda p: h @ p, v, 0.4, 60)
  np.testing.assert_allclose(got, [1.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(neumann_inverse_hvp(lambda p: h @ p, v, 0.4, 0), 0.4 * v)
  with pytest.raises(ValueError, match="hessian must be one of"):
    darts(order=2, hessian="neumann", learning_rate=0.1)
  with pytest.raises(ValueError, match="needs the weight learning_rate"):
    darts(order=2, hessian="implicit")
  with pytest.raises(ValueError, match="neumann_steps must be a non-negative int"):
    darts(order=2, hessian="implicit", learning_rate=0.1, neumann_steps=-1)


def test_the_idarts_config():
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                      "nb201_idarts_cifar10.py")
  for variant in ("default", "smoke"):
    c = train_lib.load_config(path, variant)
    train_lib.validate_search_config(c)
    assert (c.search.strategy, c.search.darts.order, c.search.darts.hessian,
            c.search.darts.neumann_steps, c.search.update_order) == (
                "darts", 2, "implicit", 2, "arch_first")
  assert train_lib.load_config(path).search.epochs == 50
