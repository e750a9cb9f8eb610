r"""iDARTS on the NAS-Bench-201 space, CIFAR-10 (Zhang et al., "iDARTS: Differentiable
Architecture Search with Stochastic Implicit Gradients", ICML 2021).

Variants:
  default  NAS-Bench-201's DARTS protocol (``nb201_darts_cifar10.py``: 50 epochs, batch 64,
           C=16, N=5, Nesterov SGD 0.025 -> 0.001, wd 5e-4, clip 5; alpha by Adam 3e-4, betas
           (0.5, 0.999), wd 1e-3), alpha first, its gradient the implicit hypergradient.
  smoke    the DARTS smoke sizes (C=4, 1 cell per stage, 256 images, 2 epochs).

Run::

  dnas search --config experiments/nb201_idarts_cifar10.py --workdir runs/nb201_idarts \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz

The hypergradient (``search.darts.hessian="implicit"``, ``dnas.strategies.darts``' docstring):
``grad_alpha L_val - (d2 L_train / dalpha dw) H^{-1} grad_w L_val`` at the current weights,
``H^{-1}`` by the Neumann series ``xi * sum_{k=0..2} (I - xi H)^k`` with ``xi`` the weight
learning rate: the reference's ``architect_hess.py`` (github.com/miaozhang0525/iDARTS,
``NAS-Bench-1Shot1-codes/optimizers/idarts_v2/architect_hess.py``, ``_hessian_vector_product``:
``grads_sum = vector + grads_1 + grads_2``, scaled by ``eta``). Its NAS-Bench-201 folder
(``NAS_Bench201_codes/configs/nas-benchmark/algos/DARTS.config``) carries NAS-Bench-201's DARTS
settings, which this config keeps.

Where dnas differs:
* Before each architecture step the reference trains the weights for 5 more steps on training
  batches (``_compute_unrolled_model``), to bring them nearer the lower level's solution; dnas
  runs one weight step per step (alpha first, then the weights, DARTS-V2's order) and takes the
  hypergradient at the current weights.
* The reference takes both second derivatives as central differences (``r = 0.01 / |v|``);
  dnas takes them exactly (Hessian-vector products forward-over-reverse).
* Published NAS-Bench-201 figure: not quoted here (not checked against the paper).
"""

import os

from dnas import run_config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = run_config.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "nb201_darts_cifar10.py"),
                             "second_order" if variant == "default" else "smoke")
  c.search.darts.order = 2
  c.search.darts.hessian = "implicit"
  c.search.darts.neumann_steps = 2  # the Neumann series' terms after the first (reference: 2)
  c.search.update_order = "arch_first"
  return c
