r"""DARTS search on CIFAR-10 (Liu, Simonyan & Yang, "DARTS", ICLR 2019, section 3.1).

Variants:
  first_order (default)  DARTS (first order): 50 epochs, batch 64, C=16, 8 cells.
  second_order           DARTS (second order): the exact hypergradient (eq. 6 by autodiff)
                         through DARTS' own virtual step (eq. 7: plain momentum, unclipped).
  smoke                  a tiny search on 512 real images, for a CPU in a couple of minutes.

Run::

  dnas search --config experiments/darts_cifar10.py --workdir runs/darts1 \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/darts_cifar10.py:second_order --workdir runs/darts2
  dnas search --config experiments/darts_cifar10.py:smoke --workdir runs/smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

Published result (Liu et al. 2019, table 1): the searched cell retrained (600 epochs, C=36,
20 cells, cutout) reaches 3.00 +- 0.14 % test error (first order) and 2.76 +- 0.09 % (second
order); the search itself takes 1.5 (first order) and 4 (second order) GPU-days on a 1080Ti.
Runtime here: see README's results table (only measured figures are quoted there).

What dnas does as DARTS' code does (quark0/darts ``cnn/train_search.py``, ``cnn/architect.py``):
alpha steps first, then the weights at the new alpha (``search.update_order="arch_first"``,
``train``); the second-order virtual step is ``w - xi * (mu * m + g + lambda * w)`` without the
weight step's clipping (``search.darts.virtual_step="paper"``, ``Architect._compute_unrolled_model``);
after every epoch the validation half is evaluated with BatchNorm in eval mode (``infer``,
``model.eval()``: the ``"split": "val"`` lines of ``metrics.jsonl``); the genotype reported is
the final epoch's. Matmuls and convolutions run in full float32 (``precision="highest"``).

Where dnas differs, and why:
* The split. DARTS' code trains the weights on the first ``train_portion`` of CIFAR-10's
  training images and alpha on the rest (``main``: ``indices[:split]``, ``indices[split:]``).
  dnas takes a seeded permutation first (``data.split="seeded"``): a local archive lists its
  images class by class, where the first half would hold five classes only.
* The learning rate follows the cosine per step; DARTS' code steps its ``CosineAnnealingLR``
  once per epoch (``main``: ``scheduler.step()``), and uses that epoch's rate as ``xi``.
* Validation images are unaugmented; DARTS' ``infer`` reads the held-out half through the
  training transform (random crop and flip), a noisier estimate of the same accuracy.
* BatchNorm's running statistics follow the weight pass's training batches only; in DARTS' code
  the alpha pass's forward passes (on validation batches, and for second order the two
  finite-difference passes) move them too. They matter only for the eval-mode validation.
"""

import ml_collections

VARIANTS = ("first_order", "second_order", "smoke")


def get_config(variant: str = "first_order") -> ml_collections.ConfigDict:
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
  c.data.split = "seeded"   # weights/alpha halves: "seeded" permutation, or "nb201"'s list
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "darts"
  c.model.op_set = "darts"
  c.model.ops = ()  # or the candidate ops by name, in place of op_set
  c.model.channels = 16
  c.model.layers = 8
  c.model.nodes = 4
  # A normal cell's input edges join its node scan (its ops compile once), and the scan packs
  # its edges by destination (7 iterations x 2 edges, no padding). Together: paper-size step
  # compiled in 44.6 s against 63.5 s on a 2-core CPU, and a faster step (benchmarks/RESULTS.md,
  # "Packing the node scans"). Same results and parameters either way.
  c.model.scan_inputs = True
  c.model.pack = True
  # True: the backward pass recomputes each candidate op from its input instead of keeping its
  # insides: same results, less memory (benchmarks/RESULTS.md, "Recomputing the ops").
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "darts"  # dnas.strategies.registry; its options under c.search.darts
  c.search.darts = ml_collections.ConfigDict()
  c.search.darts.order = 1
  c.search.darts.hessian = "exact"  # or "finite_difference" (DARTS eq. 8) for order 2
  # Second order: "paper" (eq. 7 as DARTS' code: plain momentum, no clipping) or "optimizer"
  # (one step of the real weight optimizer, clipping and Nesterov included).
  c.search.darts.virtual_step = "paper"
  c.search.update_order = "arch_first"  # DARTS: alpha, then the weights ("weights_first")
  c.search.epochs = 50
  c.search.num_seeds = 1  # >1: seeds seed.. as one vmapped program, WORKDIR/seed_<s>/ (dnas.seeds)
  c.search.learning_rate = 0.025
  c.search.min_learning_rate = 0.001
  c.search.momentum = 0.9
  c.search.nesterov = False
  c.search.weight_decay = 3e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 3e-4
  c.search.arch_weight_decay = 1e-3

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  # Matmul/convolution precision: "highest" is full float32 on every device; "high" (TF32 on
  # GPUs, 3 bfloat16 passes on TPUs) and "default" (1 bfloat16 pass on TPUs) are faster.
  c.precision = "highest"
  c.xla_cpu_preset = "fast_compile"  # XLA CPU preset: fast_compile, default, fast_runtime
  c.xla_cpu_ynn_fusions = False  # XLA CPU YNNPACK fusions: off, its cache loads 3x faster

  if variant == "first_order":
    pass
  elif variant == "second_order":
    c.search.darts.order = 2
  elif variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 512
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 3
    c.model.nodes = 2
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  else:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return c
