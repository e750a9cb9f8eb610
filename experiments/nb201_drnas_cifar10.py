r"""DrNAS on the NAS-Bench-201 space, CIFAR-10 (Chen et al., "DrNAS", ICLR 2021).

Variants:
  default      DrNAS' single-stage search: 100 epochs, batch 64, C=16, N=5 cells per stage, 3
               nodes; Dirichlet op weights (concentration elu(alpha) + 1), alpha first (first
               order, validation batch), then the weights; L2 anchor on alpha (1e-3).
  progressive  the published search's schedule: two stages of 50 epochs, every edge pruned to
               its 3 strongest ops between them, alpha at rest in each stage's first 10 epochs
               (without the reference's partial channels: see below).
  smoke        C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly
               compiling.
  progressive_smoke  smoke's size, two stages of one epoch (5 ops, then 3).

Run::

  dnas search --config experiments/nb201_drnas_cifar10.py --workdir runs/nb201_drnas \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_drnas_cifar10.py:smoke --workdir runs/nb201_drnas_smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of the Dirichlet
mean on every edge (the reference's argmax of ``softmax(alpha)``: the same ops); retrain it with
``dnas train --config experiments/train_cifar10.py:nb201 --genotype runs/.../genotype.json`` or
look it up in NAS-Bench-201's table.

Search hyperparameters: xiangning-chen/DrNAS, ``201-space/train_search.py`` (``--method
dirichlet``) and ``architect.py``:
* Weights: SGD, momentum 0.9 (no Nesterov), weight decay 3e-4, lr 0.025 cosine-annealed to 0.001
  over the run, gradient norm clipped at 5, batch 64, 100 epochs.
* Alpha: Adam, lr 3e-4, betas (0.5, 0.999), initialised ``1e-3 * N(0, 1)``; the anchor
  regulariser ``reg_type='l2'``, ``reg_scale=1e-3``, which the reference applies as Adam's weight
  decay: here ``search.drnas`` (``dnas.strategies.drnas``), with ``search.arch_weight_decay=0``
  so that alpha is not decayed twice (the same gradient, ``1e-3 * alpha``).
* The step: ``architect.step`` on a validation batch, first order (no ``--unrolled``), then the
  weights on the training batch (``search.update_order="arch_first"``); each forward pass draws
  its own Dirichlet sample, as here.
* The split: the first and second halves of CIFAR-10's training set (``train_portion`` 0.5).

The published result ran the README's NAS-Bench-201 command,
``201-space/train_search_progressive.py``: two stages of 50 epochs (``main``: ``train_epochs =
[50, 50]``), alpha held still for the first 10 epochs of each stage (``train``: ``if epoch >=
10``, the epoch counted within the stage), and after the first stage each edge pruned to its 3
strongest ops (``num_keeps = [5, 3]``): the ``progressive`` variant (``search.drnas.stage_epochs``,
``num_keep``, ``arch_warmup_epochs``; ``dnas.strategies.drnas``). What it does not do: the
reference's mixed ops see a quarter, then half, of the channels (partial channels, ``ks = [4,
2]``, the ops' weights widened between the stages by ``net2wider.py``); dnas' supernet has no
partial channels yet, so every op sees every channel in both stages. The ``default`` variant is
the repository's single-stage script with every channel (its ``--k`` default 1), 100 epochs.
Where dnas differs besides:
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step
  (``next(iter(valid_queue))``).
* The per-epoch validation evaluates the supernet at the Dirichlet mean on unaugmented images,
  where the reference's ``infer`` evaluates it at a random sample, on images augmented as for
  training (both its queues read ``train_data``).
* The learning rate follows the cosine every step; the reference's ``CosineAnnealingLR`` steps
  once per epoch.
* BatchNorm's running statistics follow the weight pass's batches only.

Published result (Chen et al. 2021, NAS-Bench-201 table; xiangning-chen/DrNAS ``README.MD``):
DrNAS reaches 94.36 +- 0.00 % CIFAR-10 test accuracy (CIFAR-100 73.51 +- 0.00, ImageNet16-120
46.34 +- 0.00; the best cell of the space: 94.37 %), with the progressive search above; what this
single-stage config reaches is not yet measured. Runtime here: not yet measured on a GPU.
"""

import ml_collections

VARIANTS = ("default", "progressive", "smoke", "progressive_smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.seed = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.path = ""          # a local archive or folder; empty: TFDS
  c.data.data_dir = ""      # TFDS data_dir; empty: TFDS' default
  c.data.cache_dir = ""     # decoded-array cache; empty: $DNAS_CACHE_DIR or ~/.cache/dnas
  c.data.batch_size = 64
  c.data.train_portion = 0.5
  c.data.train_size = 0     # a seeded random subset of N training images (0: all)
  c.data.split = "seeded"   # the reference halves the training set, not by NAS-Bench-201's list
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "nb201"
  c.model.op_set = "nb201"
  c.model.channels = 16
  c.model.layers = 5        # cells per stage (N)
  c.model.nodes = 3
  c.model.scan_inputs = False  # see nb201_darts_cifar10.py
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "drnas"
  # "l2": reg_scale / 2 * ||alpha||^2 (the reference's Adam weight decay); "kl": reg_scale *
  # KL(Dir(elu(alpha) + 1) || Dir(1)) summed over the edges.
  # Progressive learning: the epochs of each stage (empty: one stage), the ops each keeps per
  # edge, and the epochs alpha rests at the start of each.
  c.search.drnas = ml_collections.ConfigDict({"reg_type": "l2", "reg_scale": 1e-3,
                                              "stage_epochs": (), "num_keep": (),
                                              "arch_warmup_epochs": 0})
  c.search.update_order = "arch_first"  # architect.step, then the weights
  c.search.epochs = 100
  c.search.num_seeds = 1  # >1: seeds seed.. as one vmapped program, WORKDIR/seed_<s>/ (dnas.seeds)
  c.search.learning_rate = 0.025
  c.search.min_learning_rate = 0.001
  c.search.momentum = 0.9
  c.search.nesterov = False
  c.search.weight_decay = 3e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 3e-4
  c.search.arch_weight_decay = 0.0  # the anchor regulariser (search.drnas) is alpha's decay

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  c.precision = "highest"       # full float32 matmuls and convolutions on every device
  c.xla_cpu_preset = "default"  # see nb201_darts_cifar10.py
  c.xla_cpu_ynn_fusions = False

  if variant in ("progressive", "progressive_smoke"):
    c.search.drnas.stage_epochs = (50, 50)
    c.search.drnas.num_keep = (5, 3)
    c.search.drnas.arch_warmup_epochs = 10
  if variant in ("smoke", "progressive_smoke"):
    c.data.batch_size = 16
    c.data.train_size = 256
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 1
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  if variant == "progressive_smoke":
    c.search.drnas.stage_epochs = (1, 1)
    c.search.drnas.arch_warmup_epochs = 0
  return c
