r"""DARTS- on the NAS-Bench-201 space, CIFAR-10 (Chu et al., "DARTS-", ICLR 2021).

Variants:
  default  50 epochs, batch 64, C=16, N=5 cells per stage, 3 nodes; DARTS' softmax plus an
           auxiliary identity path of weight ``beta_e = 1 - e / 50`` on every edge (once per
           epoch; ``beta`` on the ``skip_connect`` column of the op weights); alpha first
           (validation batch, first order), then the weights.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_dartsminus_cifar10.py --workdir runs/nb201_dartsminus \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_dartsminus_cifar10.py:smoke \
      --workdir runs/nb201_dartsminus_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of ``softmax(alpha)``
on every edge (the auxiliary path left out, as the reference's ``Network.genotype`` does).
``search.dartsminus.op_set`` and ``.ops`` refer to ``model.op_set`` and ``model.ops``, so the
skip's column follows the model's op set; an op set without ``skip_connect`` is refused.

Protocol. The authors' public code (Meituan-AutoML/DARTS-) searches the DARTS spaces only; its
NAS-Bench-201 search is not public. This config takes its search settings,
``src/search/args.py`` defaults: 50 epochs, batch 64, lr 0.025 cosine-annealed to 0.001,
momentum 0.9, weight decay 3e-4, gradient norm clipped at 5, alpha's lr 3e-4 and weight decay
1e-3, first order (no ``--unrolled``); ``scripts/run_darts_minus.sh``: ``--skip_beta 1 --decay
linear`` with ``--decay_max_epoch 50``; ``src/utils.py``, ``DecayScheduler.step``: ``beta = (50 -
e) / 50`` at the start of epoch ``e`` (``src/search/train_search.py``, ``train_epochs``);
``src/search/model_search.py``, ``MixedOp.forward``: the path is added on every edge in every
forward pass (both steps and the validation); ``train``: ``architect.step`` on a validation
batch, then the weights (``search.update_order="arch_first"``).
Where dnas differs:
* The auxiliary path is the ``skip_connect`` candidate's weight raised by ``beta`` (the same
  identity on NAS-Bench-201's stride-1 edges), not a separate module.
* The supernet is NAS-Bench-201's (5 cells per stage, 3 nodes); NAS-Bench-201's own DARTS runs
  use Nesterov and weight decay 5e-4 (``nb201_darts_cifar10.py``), DARTS-' code neither.
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* BatchNorm's running statistics follow the weight pass's batches only.

Published result (Chu et al., ICLR 2021, NAS-Bench-201 table, as cited by later work): 93.80 %
CIFAR-10 test accuracy (we could not confirm the paper's +- 0.40 from a source at hand); the best
cell of the space reaches 94.37 %. Runtime here: not yet measured on a GPU.
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
  c.model.ops = ()  # or the candidate ops by name, in place of op_set (must hold skip_connect)
  c.search.strategy = "dartsminus"
  # beta_e = beta0 * (1 - e / E), once per epoch, on the op set's skip_connect column.
  c.search.dartsminus = ml_collections.ConfigDict({
      "beta0": 1.0, "op_set": c.model.get_ref("op_set"), "ops": c.model.get_ref("ops"),
      "skip_op": "skip_connect"})
  if variant == "default":
    c.search.epochs = 50
  return c
