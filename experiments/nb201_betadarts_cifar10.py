r"""beta-DARTS on the NAS-Bench-201 space, CIFAR-10 (Ye et al., "beta-DARTS", CVPR 2022).

Variants:
  default  The authors' NAS-Bench-201 search: 100 epochs, batch 64, C=16, N=5 cells per stage,
           3 nodes; DARTS' softmax, first order; alpha's loss gains the Beta-Decay term
           ``lambda_e * mean_e logsumexp(alpha_e)``, ``lambda_e = 50 e / E`` (once per epoch);
           alpha first (validation batch), then the weights.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_betadarts_cifar10.py --workdir runs/nb201_betadarts \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_betadarts_cifar10.py:smoke \
      --workdir runs/nb201_betadarts_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of ``softmax(alpha)``
on every edge (the reference's ``Network.genotype``), from the last epoch; look it up in
NAS-Bench-201's table or retrain it with ``dnas train --config experiments/train_cifar10.py:nb201
--genotype runs/.../genotype.json``.

Protocol: the official code, Sunshine-Ye/Beta-DARTS (its README: ``python
./nasbench201/train_search.py``, no flags):
* ``nasbench201/train_search.py``, argparse defaults (l. 31-55): batch 64, lr 0.025 cosine-annealed
  to 0.001 (``CosineAnnealingLR`` over the epochs), momentum 0.9 (no Nesterov), weight decay 3e-4,
  100 epochs, C=16, gradient norm clipped at 5, seed 2, first order (no ``--unrolled``), alpha by
  Adam lr 3e-4, weight decay 1e-3; ``main``: ``Network(C=16, N=5, max_nodes=4)``, the training
  set's first and second halves for the weights and alpha.
* ``optimizers/darts/architect.py``: Adam betas (0.5, 0.999) (``__init__``); ``mlc_loss``
  (l. 55-59) is the Beta-Decay term, ``_backward_step`` (l. 80-84) adds it to the validation
  loss with weight ``50 * epoch / 100`` (``search.betadarts.lambda_max=50``).
* ``train``: ``architect.step`` on a random validation batch, then the weight step
  (``search.update_order="arch_first"``); the genotype is the argmax of alpha per edge.
* ``nasbench201/model.py``: alpha initialised ``1e-3 * N(0, 1)``, as dnas' space.
Where dnas differs:
* ``lambda``'s denominator is the run's epochs where the reference hard-codes 100 (equal here).
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* BatchNorm's running statistics follow the weight pass's batches only (the alpha pass's move
  them too in the reference; they matter only for the eval-mode validation).

Published result (Ye et al., CVPR 2022, NAS-Bench-201 table): 94.36 +- 0.00 % CIFAR-10 test
accuracy (91.55 validation; CIFAR-100 test 73.51; also listed by Papers with Code); the best cell of
the space reaches 94.37 %. Runtime here: not yet measured on a GPU.
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
  c.search.strategy = "betadarts"
  # lambda_e = lambda_max * e / E, once per epoch; order 1: no --unrolled.
  c.search.betadarts = ml_collections.ConfigDict({"lambda_max": 50.0, "order": 1})
  return c
