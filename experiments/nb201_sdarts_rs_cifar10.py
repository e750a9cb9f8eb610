r"""SDARTS-RS on the NAS-Bench-201 space, CIFAR-10 (Chen & Hsieh, "SDARTS", ICML 2020).

Variants:
  default  The authors' NAS-Bench-201 search: 100 epochs, batch 64, C=16, N=5 cells per stage,
           3 nodes; the weight step runs at ``project(softmax(alpha) + U(-eps, eps))``,
           ``eps_e = 0.03 + 0.27 e / E`` (once per epoch); alpha first, DARTS' first-order
           gradient at the unperturbed softmax.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_sdarts_rs_cifar10.py --workdir runs/nb201_sdarts_rs \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_sdarts_rs_cifar10.py:smoke \
      --workdir runs/nb201_sdarts_rs_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of the noise-free
``softmax(alpha)`` on every edge.

Protocol: the official code, xiangning-chen/SmoothDARTS, ``nasbench201/train_search.py`` with
``--perturb_alpha random`` (its README's SDARTS-RS flag): argparse defaults (l. 35-57): batch 64,
lr 0.025 cosine-annealed to 0.001, momentum 0.9 (no Nesterov), weight decay 3e-4, 100 epochs,
C=16, seed 2, gradient norm clipped at 5, first order, alpha by Adam lr 3e-4 (betas (0.5,
0.999), ``optimizers/darts/architect.py``) with weight decay 1e-3, ``--epsilon_alpha 0.3``
(``search.sdarts_rs.epsilon_max``); ``main``: ``Network(C=16, N=5, max_nodes=4)``,
``epsilon_alpha = 0.03 + (0.3 - 0.03) * epoch / epochs``; ``train``: ``architect.step`` at the
unperturbed alpha, then the weight step at the softmax plus uniform noise, clipped to each edge's
simplex (``attacker/perturb.py``, ``Random_alpha``; ``nasbench201/model.py``, ``clip``).
Where dnas differs:
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* BatchNorm's running statistics follow the weight pass's batches only.
* The noise comes from dnas' keys (``fold_in`` of the step), not PyTorch's global generator.

Published result: none quoted. The SDARTS paper and README report the DARTS spaces and
NAS-Bench-1Shot1; we found no NAS-Bench-201 SDARTS-RS figure from its authors at hand.
Runtime here: not yet measured on a GPU.
"""

import os

import ml_collections

from dnas import run_config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  # DrNAS' NAS-Bench-201 protocol, as nb201_snas_cifar10.py gives it (data, model, optimizers,
  # logging, the smoke sizes), with this strategy in place of SNAS.
  c = run_config.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "nb201_snas_cifar10.py"), variant)
  del c.search["snas"]
  c.search.strategy = "sdarts_rs"
  # eps_e = epsilon_min + (epsilon_max - epsilon_min) * e / E, once per epoch; order 1.
  c.search.sdarts_rs = ml_collections.ConfigDict({"epsilon_max": 0.3, "epsilon_min": 0.03,
                                                  "order": 1})
  return c
