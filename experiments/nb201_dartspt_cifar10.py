r"""DARTS-PT on the NAS-Bench-201 space, CIFAR-10 (Wang et al., "Rethinking Architecture
Selection in Differentiable NAS", ICLR 2021).

Variants:
  default  DARTS (first order) trains the supernet for 100 epochs (batch 64, C=16, N=5 cells per
           stage, 3 nodes, alpha first); then the genotype is selected by perturbation: edge by
           edge in a random order, each op removed in turn, the op whose removal costs the most
           validation accuracy kept, the supernet fine-tuned 5 epochs between two edges.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs, 1 fine-tuning epoch between edges,
           2 validation batches of 16 scored: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_dartspt_cifar10.py --workdir runs/nb201_dartspt \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_dartspt_cifar10.py:smoke \
      --workdir runs/nb201_dartspt_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the selected cell (a NAS-Bench-201 arch string); ``perturbation.json``
every decision: the order the edges were visited in, each op's accuracy drop, the op kept.

Protocol: the official code, ruocwang/darts-pt, ``exp_scripts/darts-201.sh`` (the supernet:
``nasbench201/train_search.py --method darts``) then ``exp_scripts/darts-proj-201.sh`` (the
selection: ``--dev proj --edge_decision random --proj_crit acc --proj_intv 5``). Argparse
defaults of ``nasbench201/train_search.py``: batch 64, lr 0.025 cosine-annealed to 0.001,
momentum 0.9 (plain SGD, ``search_model.py``), weight decay 3e-4, 100 epochs, C=16, gradient norm
clipped at 5, train_portion 0.5, alpha by Adam lr 3e-4 with weight decay 1e-3, first order;
``train``: ``architect.step`` before the weight step. The selection, ``nasbench201/
projection.py`` ``pt_project``: a random remaining edge (``np.random.choice``); each op masked
in turn (weight 0, no renormalisation), the whole validation queue evaluated with the supernet
in training mode (``infer(..., eval=False)``: BatchNorm on batch statistics); the op with the
lowest accuracy kept; between projections ``proj_intv`` = 5 epochs of the search's own steps
(alpha, then the weights) at ``learning_rate / 10`` with a fresh SGD (``reset_optimizer``).
Settings (``search.perturbation``, ``dnas.perturbation.PERTURBATION_DEFAULTS``): tune_epochs 5,
tune_lr_scale 0.1, tune_arch True, bn "batch", edge_order "random", batch_size 64,
eval_batches 0 (all).
Where dnas differs:
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* Scoring uses the validation split's whole batches of 64 only (the reference also scores the
  last, smaller one); the edge order comes from dnas' keys; no fine-tuning after the last edge
  (the reference trains one more epoch, which cannot change the genotype).
* BatchNorm's running statistics follow the weight pass's batches only.

Published result: the paper's NAS-Bench-201 table (DARTS+PT, CIFAR-10); its figure was not at
hand to quote here (DARTS alone: 54.30). Runtime here: not yet measured on a GPU.
"""

import os

import ml_collections

from dnas import run_config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  # NAS-Bench-201's DARTS config (nb201_darts_cifar10.py: data, model, logging, the smoke
  # sizes), with DARTS-PT's optimizer settings and the selection by perturbation.
  c = run_config.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "nb201_darts_cifar10.py"),
                             "smoke" if variant == "smoke" else "first_order")
  c.data.split = "seeded"  # the reference halves the training set in CIFAR's order
  c.search.update_order = "arch_first"  # architect.step, then the weights
  c.search.nesterov = False
  c.search.weight_decay = 3e-4
  if variant == "default":
    c.search.epochs = 100
  c.search.discretizer = "perturbation"
  c.search.perturbation = ml_collections.ConfigDict({
      "tune_epochs": 5,         # --proj_intv 5
      "tune_lr_scale": 0.1,     # reset_optimizer(args.learning_rate / 10, ...)
      "tune_arch": True,        # alpha of the undecided edges keeps learning (architect.step)
      "batch_size": 64,         # the validation queue's batch
      "eval_batches": 0,        # 0: every whole batch of the validation split
      "bn": "batch",            # infer(..., eval=False): BatchNorm on the batch's statistics
      "edge_order": "random"})  # --edge_decision random
  if variant == "smoke":
    c.search.perturbation.tune_epochs = 1
    c.search.perturbation.batch_size = 16
    c.search.perturbation.eval_batches = 2
  return c
