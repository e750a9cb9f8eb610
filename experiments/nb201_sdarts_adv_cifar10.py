r"""SDARTS-ADV on the NAS-Bench-201 space, CIFAR-10 (Chen & Hsieh, "SDARTS", ICML 2020).

Variants:
  default  The authors' NAS-Bench-201 search: 100 epochs, batch 64, C=16, N=5 cells per stage,
           3 nodes; before each weight step a 7-step PGD attack (sign steps of 2 eps / 7, a
           random start) finds the op weights within ``eps`` of ``softmax(alpha)`` (projected on
           each edge's simplex) that raise the training loss the most, and the weights step
           there; ``eps_e = 0.03 + 0.27 e / E`` (once per epoch); alpha first, DARTS'
           first-order gradient at the unperturbed softmax.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_sdarts_adv_cifar10.py --workdir runs/nb201_sdarts_adv \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_sdarts_adv_cifar10.py:smoke \
      --workdir runs/nb201_sdarts_adv_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of the unperturbed
``softmax(alpha)`` on every edge.

Protocol: the official code, xiangning-chen/SmoothDARTS, ``nasbench201/train_search.py`` with
``--perturb_alpha pgd_linf`` (README.MD's SDARTS-ADV flag); every other setting as SDARTS-RS'
(``nb201_sdarts_rs_cifar10.py``: argparse defaults l. 35-57, batch 64, lr 0.025 cosine to
0.001, momentum 0.9, weight decay 3e-4, 100 epochs, C=16, seed 2, gradient norm clipped at 5,
first order, alpha by Adam lr 3e-4 with weight decay 1e-3, ``--epsilon_alpha 0.3``
(``search.sdarts_adv.epsilon_max``), ``epsilon_alpha = 0.03 + (0.3 - 0.03) * epoch / epochs`` in
``main``). The attack: ``Linf_PGD_alpha(model, X, y, epsilon, steps=7, random_start=True)``
(``search.sdarts_adv.attack_steps``, ``random_start``), ``Linf_SGD`` at lr ``2 * epsilon /
steps`` on the gradient's sign, each iterate clamped to the ball around the unperturbed
softmax and ``model.clip()``-ed, the unperturbed weights restored if the loss fell
(ruocwang/darts-pt ``attacker/perturb.py`` l. 12-42 and ``attacker/linf_sgd.py``, the same
attacker as SmoothDARTS', whose copy is not at hand); ``train`` runs it on the training batch
after ``architect.step``.
Where dnas differs:
* As for SDARTS-RS: dnas' seeded half as the split, the cosine stepped every step, BatchNorm's
  running statistics from the weight pass only, noise from dnas' keys.
* The attack's loss uses BatchNorm in training mode (the batch's statistics); the reference
  switches the model to eval mode for the attack (``model.eval()``, running statistics).

Published result: none quoted. The SDARTS paper reports the DARTS spaces and NAS-Bench-1Shot1;
we found no NAS-Bench-201 SDARTS-ADV figure from its authors at hand.
Runtime here: not yet measured on a GPU (each step runs 9 forward and 8 backward passes of the
supernet on the training batch: about 4x DARTS' first-order step).
"""

import os

import ml_collections

from dnas import run_config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  # SDARTS-RS' protocol (nb201_sdarts_rs_cifar10.py: data, model, optimizers, logging, the
  # smoke sizes), with the attack in place of the random perturbation.
  c = run_config.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "nb201_sdarts_rs_cifar10.py"), variant)
  del c.search["sdarts_rs"]
  c.search.strategy = "sdarts_adv"
  # eps_e = epsilon_min + (epsilon_max - epsilon_min) * e / E, once per epoch; a 7-step attack
  # from a random start; order 1.
  c.search.sdarts_adv = ml_collections.ConfigDict({
      "epsilon_max": 0.3, "epsilon_min": 0.03, "attack_steps": 7, "random_start": True,
      "order": 1})
  return c
