r"""Retraining a DARTS-space genotype on CIFAR-10 (Liu et al., "DARTS", ICLR 2019, appendix A.2).

Variants:
  default  the paper's recipe: C=36, 20 cells, auxiliary head (weight 0.4), drop-path to 0.2,
           cutout 16, SGD lr 0.025 cosine, momentum 0.9, wd 3e-4, clip 5, batch 96, 600 epochs.
  smoke    C=8, 5 cells, 256 real images, 1 epoch: seconds of stepping on a CPU.
  nb201    NAS-Bench-201's training recipe for an NB201 cell (Dong & Yang, ICLR 2020, its
           hyperparameter set H): C=16, 5 cells per stage, Nesterov SGD with momentum 0.9,
           weight decay 5e-4, lr 0.1 cosine to 0, batch 256, 200 epochs, crop and flip; no
           cutout, auxiliary head, drop-path or gradient clipping.
  nb201_smoke  the nb201 recipe at smoke size: C=8, 1 cell per stage, 256 real images, batch 32,
           1 epoch.

Run::

  dnas train --config experiments/train_cifar10.py --genotype DARTS_V2 --workdir runs/v2 \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas train --config experiments/train_cifar10.py:smoke --genotype runs/smoke/genotype.json \
      --workdir runs/smoke_train --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  dnas train --config experiments/train_cifar10.py:nb201 \
      --genotype runs/nb201_darts1/genotype.json --workdir runs/nb201_train

Published result (Liu et al. 2019, table 1): DARTS_V2 reaches 2.76 +- 0.09 % test error with
3.3M weights; DARTS_V1 3.00 +- 0.14 %. The paper's run is 600 epochs on one GPU (about 1.5 days
on a 1080Ti). No dnas figure is quoted until measured (see README's results table).
NAS-Bench-201 (table 5): the all-skip_connect cell DARTS finds there tests at 54.30 %, the
space's best cell at 94.37 % (CIFAR-10, 200 epochs).
"""

import ml_collections

VARIANTS = ("default", "smoke", "nb201", "nb201_smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Modules or .py files that register the user's ops (a genotype's ops must be registered).
  c.imports = ()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.path = ""
  c.data.data_dir = ""
  c.data.cache_dir = ""
  c.data.batch_size = 96
  c.data.eval_batch_size = 500
  c.data.train_size = 0     # first N of a seeded permutation of the training set (0: all)
  c.data.test_size = 0      # same for the test set
  # N training images held out and evaluated in place of the test set (0: the test set); for
  # scoring architectures by training them (dnas.blackbox's low-fidelity evaluator).
  c.data.holdout = 0
  c.data.crop_padding = 4
  c.data.flip = True
  c.data.cutout = 16
  # Streaming: read images from disk a batch at a time instead of holding the split on the
  # device (for data that does not fit: a folder or uncompressed .tar, or a TFDS array_record
  # dataset); image_size > 0 crops and resizes every image (Inception crop for training,
  # resize + centre crop for testing); mean/std () are estimated from 2048 training images.
  c.data.streaming = False
  c.data.image_size = 0
  c.data.workers = 8
  c.data.mean = ()
  c.data.std = ()

  c.model = ml_collections.ConfigDict()
  c.model.space = "darts_cifar"  # darts_cifar | darts_imagenet | nb201
  c.model.channels = 36
  c.model.layers = 20
  c.model.auxiliary = True

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 600
  c.train.optimizer = "darts_cifar"
  c.train.learning_rate = 0.025
  c.train.min_learning_rate = 0.0
  c.train.momentum = 0.9
  c.train.weight_decay = 3e-4
  c.train.grad_clip = 5.0
  c.train.nesterov = False
  c.train.aux_weight = 0.4
  c.train.drop_path_prob = 0.2
  c.train.label_smoothing = 0.0
  # The papers train in float32. "bfloat16" (mixed precision: bfloat16 compute, float32
  # weights) is faster on GPUs and TPUs; "auto" is bfloat16 there and float32 on the CPU.
  c.train.compute_dtype = "float32"

  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.compilation_cache_dir = ""
  # Matmul/convolution precision: "highest" is full float32 on every device; "high" (TF32 on
  # GPUs, 3 bfloat16 passes on TPUs) and "default" (1 bfloat16 pass on TPUs) are faster.
  c.precision = "highest"
  c.xla_cpu_preset = "fast_compile"  # XLA CPU preset: fast_compile, default, fast_runtime
  c.xla_cpu_ynn_fusions = True  # XLA CPU YNNPACK fusions: dense convs run faster

  if variant == "default":
    pass
  elif variant == "smoke":
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.data.train_size = 256
    c.data.test_size = 256
    c.model.channels = 8
    c.model.layers = 5
    c.train.epochs = 1
    c.log_every_steps = 4
    c.checkpoint_every_steps = 4
  elif variant in ("nb201", "nb201_smoke"):
    c.data.batch_size = 256
    c.data.cutout = 0
    c.model.space = "nb201"
    c.model.channels = 16
    c.model.layers = 5  # cells per stage
    c.model.auxiliary = False
    c.train.epochs = 200
    c.train.optimizer = "nb201"
    c.train.learning_rate = 0.1
    c.train.min_learning_rate = 0.0
    c.train.weight_decay = 5e-4
    c.train.grad_clip = 0.0  # none
    c.train.nesterov = True
    c.train.aux_weight = 0.0
    c.train.drop_path_prob = 0.0
    if variant == "nb201_smoke":
      c.data.batch_size = 32
      c.data.eval_batch_size = 128
      c.data.train_size = 256
      c.data.test_size = 256
      c.model.channels = 8
      c.model.layers = 1
      c.train.epochs = 1
      c.log_every_steps = 4
      c.checkpoint_every_steps = 4
  else:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return c
