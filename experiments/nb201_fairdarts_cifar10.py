r"""FairDARTS on the NAS-Bench-201 space, CIFAR-10 (Chu et al., "Fair DARTS", ECCV 2020).

Variants:
  default  FairDARTS' search settings on NAS-Bench-201's supernet: 50 epochs, batch 128, C=16,
           N=5 cells per stage, 3 nodes; op weights ``sigmoid(alpha)`` (independent, not a
           softmax); alpha's loss gains ``10 * L01``, ``L01 = -mean((sigmoid(alpha) - 0.5)^2)``;
           alpha first (validation batch, first order), then the weights.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_fairdarts_cifar10.py --workdir runs/nb201_fairdarts \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_fairdarts_cifar10.py:smoke \
      --workdir runs/nb201_fairdarts_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

Selection: FairDARTS keeps every op whose sigmoid exceeds 0.85 (``--op_threshold 0.85``,
``--parse_method threshold_sparse``), on the DARTS space. A NAS-Bench-201 cell must hold exactly
one op per edge, so ``genotype.json`` holds, on every edge, the op with the largest
``sigmoid(alpha)`` (the argmax, whether or not it passes 0.85); the step lines log
``above_threshold``, the share of ops the paper's rule would keep, and ``zero_one`` (``L01``).

Protocol. The authors' code (xiaomi-automl/FairDARTS) searches the DARTS space only; no
NAS-Bench-201 run of theirs is public. This config takes their search settings,
``fairdarts/train_search.py`` argparse defaults: batch 128 (l. 23), lr 0.005 (l. 24)
cosine-annealed to 0.001 (l. 25), momentum 0.9, weight decay 3e-4, ``--aux_loss_weight 10``
(l. 29: ``search.fairdarts.zero_one_weight``), 50 epochs (l. 31), gradient norm clipped at 5
(l. 44), alpha's Adam lr 3e-3 (l. 46) with weight decay 1e-3 (l. 48); ``train``:
``architect.step`` on a validation batch before the weight step (bi-level, the default);
``fairdarts/architect.py``, ``step`` (l. 20-26): cross-entropy plus ``10 * L01`` of the sigmoids,
first order; ``fairdarts/separate_loss.py``, ``ConvSeparateLoss`` (l. 16): ``L01``.
Where dnas differs:
* Alpha's Adam uses betas (0.5, 0.999), dnas' fixed alpha optimizer
  (``search.darts_arch_optimizer``); FairDARTS' are (0.9, 0.999) (``architect.py`` l. 15-16,
  ``--arch_lr_gamma 0.9``).
* The supernet is NAS-Bench-201's (5 cells per stage, 3 nodes), not FairDARTS' 8-cell DARTS net;
  selection is the per-edge argmax (above), not the threshold.
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* BatchNorm's running statistics follow the weight pass's batches only.

Published result: none quoted. FairDARTS' paper and README report the DARTS space (and
ImageNet), not NAS-Bench-201, and we found no NAS-Bench-201 FairDARTS figure from its authors.
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
  c.search.strategy = "fairdarts"
  # Alpha's loss: cross-entropy + zero_one_weight * L01; threshold: only logged (the genotype is
  # the argmax of sigmoid(alpha) per edge).
  c.search.fairdarts = ml_collections.ConfigDict({"zero_one_weight": 10.0, "threshold": 0.85})
  c.search.learning_rate = 0.005
  c.search.arch_learning_rate = 0.003
  if variant == "default":
    c.data.batch_size = 128
    c.search.epochs = 50
  return c
