r"""PC-DARTS on the NAS-Bench-201 space, CIFAR-10 (Xu et al., "PC-DARTS", ICLR 2020).

Variants:
  default       Partial channel connections (K=4) and edge normalisation: 60 epochs, batch 48,
                C=16, N=5 cells per stage, 3 nodes; DARTS' second-order step (alpha and beta
                first, by the exact hypergradient through DARTS' virtual step), then the weights.
  no_edge_norm  The NAS-Bench-201 reference as its code runs: partial channels, no beta
                (``search.strategy="darts"``, second order).
  smoke         C=4, 1 cell per stage, 256 real images, 2 epochs, first order: seconds on a CPU.

Run::

  dnas search --config experiments/nb201_pcdarts_cifar10.py --workdir runs/nb201_pcdarts \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_pcdarts_cifar10.py:smoke \
      --workdir runs/nb201_pcdarts_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string: on every edge the argmax of
``softmax(alpha) * softmax(beta)``, which is alpha's argmax (every edge is kept in this space,
so beta changes the search, not the rule), from the last epoch; retrain it with ``dnas train
--config experiments/train_cifar10.py:nb201 --genotype runs/.../genotype.json``.

The reference for NAS-Bench-201: the PC-DARTS search of few-shot NAS (Zhao et al., ICML 2021),
github.com/aoiang/few-shot-NAS, ``Few-Shot_NasBench201/``, commit d3423c1:
* ``exps/algos/PCDARTS.py`` (``main``): ``'pcdarts_prune_ratio': 4``, the channel proportion
  ``K = 4`` (``model.partial_channels=4``); alpha by Adam, betas (0.5, 0.999); ``search_func``
  takes alpha's step first (``backward_step_unrolled``: DARTS' second-order step, unclipped
  plain momentum, the Hessian-vector product by finite differences, ``r = 1e-2``), then the
  weights' step with the gradient norm clipped at 5 (``search.update_order="arch_first"``).
* ``lib/models/cell_searchs/search_cells.py``, ``NAS201SearchCell.forward_pcdarts``: the ops
  see the first quarter of the channels, the rest pass unchanged, then ``channel_shuffle(ans,
  4)``; no edge weights (``search_model_pcdarts.py``: the one alpha of ``[6, 5]``).
* ``search_algos/PCDARTS/one-shot/PCDARTS.sh``: C=16, N=5, max_nodes=4, alpha's learning rate
  3e-4 and weight decay 1e-3, ``configs/nas-benchmark/algos/DARTS.config`` (commit 2165cd3):
  Nesterov SGD, momentum 0.9, weight decay 5e-4, lr 0.025 cosine-annealed to 0.001, 60 epochs,
  batch 48.
* The split and the evaluation are NAS-Bench-201's (``get_nas_search_loaders``, ``valid_func``),
  as ``nb201_darts_cifar10.py`` gives them (this config builds on its ``second_order`` variant).
The paper's own search is in the DARTS space (yuhuixu1993/PC-DARTS, ``train_search.py``,
argparse l. 24-44: batch 256, lr 0.1 to 0.001, weight decay 3e-4, 50 epochs, alpha's lr 6e-4,
first order; l. 156: alpha rests in the first 15 epochs, ``search.pcdarts.arch_warmup_epochs``;
``model_search.py`` l. 31-32: ``k = 4``), with edge normalisation (``Cell.forward``, ``betas``).

Where dnas differs:
* Edge normalisation is on (the default variant), as in the paper; the NAS-Bench-201 reference
  code has none (``no_edge_norm`` runs it without). beta's learning rate, weight decay and
  initialisation are alpha's (the reference's ``Adam(arch_parameters)``, ``1e-3 * randn``).
* The second-order hypergradient is exact (autodiff; ``search.pcdarts.hessian="exact"``) where
  the reference takes a central difference (``"finite_difference"`` gives that).
* The learning rate follows the cosine every step, as NAS-Bench-201's scheduler does.
* BatchNorm's running statistics follow the weight pass's batches only.

Published result: none checked here for PC-DARTS on NAS-Bench-201 with this protocol. Runtime
here: not yet measured on a GPU; the smoke variant takes well under a minute on a CPU, mostly
compiling.
"""

import os

import ml_collections

from dnas import run_config

VARIANTS = ("default", "no_edge_norm", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  # NAS-Bench-201's DARTS-V2 protocol (data, split, model, optimizers, evaluation, logging, the
  # smoke sizes), with partial channels and the PC-DARTS reference's values below.
  c = run_config.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "nb201_darts_cifar10.py"),
                             "smoke" if variant == "smoke" else "second_order")
  c.model.partial_channels = 4  # PCDARTS.py: 'pcdarts_prune_ratio': 4
  c.model.edge_norm = variant != "no_edge_norm"
  c.search.update_order = "arch_first"  # search_func: alpha's step, then the weights'
  if variant != "smoke":
    c.data.batch_size = 48  # DARTS.config (few-shot NAS' copy): batch_size 48
    c.search.epochs = 60    # DARTS.config: epochs 60
  order = 1 if variant == "smoke" else 2  # backward_step_unrolled; smoke: compiles in seconds
  if variant == "no_edge_norm":
    c.search.darts.order = order
    return c
  del c.search["darts"]
  c.search.strategy = "pcdarts"  # dnas.strategies.pcdarts: softmax(alpha) * softmax(beta)
  c.search.pcdarts = ml_collections.ConfigDict({
      "order": order, "hessian": "exact", "virtual_step": "paper", "fd_epsilon": 0.01,
      "arch_warmup_epochs": 0})  # the NAS-Bench-201 reference steps alpha from the start
  return c
