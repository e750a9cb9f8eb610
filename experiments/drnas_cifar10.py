r"""DrNAS on the DARTS space, CIFAR-10 (Chen et al., "DrNAS: Dirichlet Neural Architecture
Search", ICLR 2021, section 4.2).

Variants:
  default  DrNAS' progressive search on the DARTS space, directly at the evaluation network's
           size (C=36, 20 cells): two stages of 25 epochs, every edge pruned from its 7 ops to
           its 4 strongest between them, alpha at rest in each stage's first 10 epochs;
           Dirichlet op weights, first order, alpha first.
  smoke    C=4, 3 cells, 2 nodes, 512 real images, two stages of one epoch: minutes on a CPU.

Run::

  dnas search --config experiments/drnas_cifar10.py --workdir runs/drnas \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas train --config experiments/train_cifar10.py --genotype runs/drnas/genotype.json ...

Search hyperparameters: xiangning-chen/DrNAS, ``DARTS-space/train_search.py`` (the README's
command for CIFAR-10) and ``architect.py``:
* The ops: DARTS' without ``none`` (``DARTS-space/genotypes.py``, ``PRIMITIVES``: 7 ops), the
  pools followed by an affine-free BatchNorm as in DARTS' ``MixedOp``.
* The network: ``--init_channels 36 --layers 20`` (``Network(args.init_channels, ...,
  args.layers)``), 4 nodes per cell.
* Weights: SGD, momentum 0.9, weight decay 3e-4, lr 0.1 cosine-annealed to 0 over the 50
  epochs, gradient norm clipped at 5, batch 64.
* Alpha: Adam, lr 6e-4, betas (0.5, 0.999), weight decay 1e-3 (``--arch_weight_decay``): here
  the L2 anchor ``search.drnas`` with ``reg_scale`` 1e-3 and ``search.arch_weight_decay`` 0, the
  same gradient.
* Progressive learning (``main``): ``train_epochs = [25, 25]``, ``num_keeps = [7, 4]``,
  ``if epoch >= 10: architect.step`` with the epoch counted within the stage.
* The split: the first and second halves of CIFAR-10's training set (``train_portion`` 0.5).

Where dnas differs:
* Partial channels. The reference's mixed ops see 1/6, then 1/4, of the channels (``--k 6``,
  ``ks = [6, 4]``), the ops' weights widened between the stages (``net2wider.py``); dnas'
  supernet has no partial channels yet, so every op sees every channel. This takes far more
  memory and time than the reference's search at this size (an accelerator with tens of GB).
* The split is dnas' seeded half (``data.split="seeded"``); the reference draws a fresh random
  validation batch every step, dnas pairs each training batch with one.
* The per-epoch validation evaluates the supernet at the Dirichlet mean, BatchNorm in eval mode,
  on unaugmented images; the learning rate follows the cosine every step (the reference steps
  it per epoch); BatchNorm's running statistics follow the weight pass's batches only.

Published result (Chen et al. 2021, table 2; the repository's README): 2.46 +- 0.03 % CIFAR-10
test error with 4.1 M parameters, search cost 0.6 GPU-days; the published cell is
``dnas.published``' ``DrNAS_cifar10``. What this config reaches is not yet measured (no GPU).
"""

import ml_collections

VARIANTS = ("default", "smoke")

# DARTS-space/genotypes.py's PRIMITIVES: DARTS' ops without `none`.
OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
       "dil_conv_3x3", "dil_conv_5x5")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  # Modules or .py files that register the user's ops, op sets, spaces or strategies.
  c.imports = ()
  c.seed = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.path = ""          # a local archive or folder; empty: TFDS
  c.data.data_dir = ""      # TFDS data_dir; empty: TFDS' default
  c.data.cache_dir = ""     # decoded-array cache; empty: $DNAS_CACHE_DIR or ~/.cache/dnas
  c.data.batch_size = 64
  c.data.train_portion = 0.5
  c.data.train_size = 0     # a seeded random subset of N training images (0: all)
  c.data.split = "seeded"
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "darts"
  c.model.op_set = "darts"  # unused: model.ops names the ops
  c.model.ops = OPS
  c.model.bn_after = ("max_pool_3x3", "avg_pool_3x3")
  c.model.channels = 36
  c.model.layers = 20
  c.model.nodes = 4
  c.model.scan_inputs = True
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "drnas"
  c.search.drnas = ml_collections.ConfigDict({"reg_type": "l2", "reg_scale": 1e-3,
                                              "stage_epochs": (25, 25), "num_keep": (7, 4),
                                              "arch_warmup_epochs": 10})
  c.search.update_order = "arch_first"  # architect.step, then the weights
  c.search.epochs = 50
  c.search.num_seeds = 1  # >1: seeds seed.. as one vmapped program, WORKDIR/seed_<s>/ (dnas.seeds)
  c.search.learning_rate = 0.1
  c.search.min_learning_rate = 0.0
  c.search.momentum = 0.9
  c.search.nesterov = False
  c.search.weight_decay = 3e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 6e-4
  c.search.arch_weight_decay = 0.0  # the anchor regulariser (search.drnas) is alpha's decay

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  c.precision = "highest"       # full float32 matmuls and convolutions on every device
  c.xla_cpu_preset = "fast_compile"
  c.xla_cpu_ynn_fusions = False

  if variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 512
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 3
    c.model.nodes = 2
    c.search.epochs = 2
    c.search.drnas.stage_epochs = (1, 1)
    c.search.drnas.arch_warmup_epochs = 0
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  return c
