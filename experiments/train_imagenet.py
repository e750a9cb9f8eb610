r"""Retraining a DARTS-space genotype on ImageNet, mobile setting (Liu et al., "DARTS", ICLR 2019).

Variants:
  default  the paper's recipe (section 3.3 and the reference ``cnn/train_imagenet.py``): the
           ImageNet network (two stride-2 stems) with C=48 and 14 cells, auxiliary head
           (weight 0.4), label smoothing 0.1, SGD with momentum 0.9, weight decay 3e-5,
           gradient norm clipped at 5, lr 0.1 multiplied by 0.97 after every epoch, batch 128,
           250 epochs, no drop-path.
  smoke    the same network code and optimizer at C=8 with 3 cells on 128 CIFAR-10 images
           (32x32) from the local archive, 2 epochs: seconds on a CPU. The auxiliary head is
           off: the ImageNet head pools a 5x5 window out of the features after the second
           reduction, which are 7x7 at 224x224 input but 1x1 at 32x32.

Run::

  dnas train --config experiments/train_imagenet.py --genotype DARTS_V2 --workdir runs/v2_in \
      --config.data.path=/path/to/imagenet_folder
  dnas train --config experiments/train_imagenet.py:smoke --genotype DARTS_V2 \
      --workdir runs/in_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz
  dnas info --config experiments/train_imagenet.py --genotype DARTS_V2 --json

Data: the paper's recipe streams its images (``data.streaming=True``): ``data.path`` is an
image folder or an uncompressed ``.tar`` laid out as ``{train,test}/CLASS/IMAGE`` (ImageNet's
validation images go under ``test/``), or, with ``data.path`` empty, TFDS' ``imagenet2012``
prepared in the array_record format. Host threads (``data.workers``) decode each batch and apply
Inception's random resized crop to 224 (training) or resize-256 / centre-crop-224 (testing);
flips and normalisation by ImageNet's mean and std run on the device. Left out: DARTS' colour
jitter (brightness, contrast, saturation 0.4, hue 0.2) -- no colour augmentation is applied.

Published result (Liu et al. 2019, table 3): DARTS (second order) reaches 26.7 % top-1 and
8.7 % top-5 error with 4.7M weights and 574M multiply-adds; ``dnas info`` on DARTS_V2 counts
4,718,752 weights without the auxiliary head. Runtime: the paper does not give it; no dnas
figure is quoted until measured (see README's results table).
"""

import ml_collections

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Modules or .py files that register the user's ops (a genotype's ops must be registered).
  c.imports = ()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "imagenet2012"  # with data.path empty: TFDS, prepared as array_record
  c.data.path = ""
  c.data.data_dir = ""
  c.data.cache_dir = ""
  c.data.batch_size = 128
  c.data.eval_batch_size = 250
  c.data.train_size = 0     # first N of a seeded permutation of the training set (0: all)
  c.data.test_size = 0      # same for the test set
  c.data.crop_padding = 0   # no pad-and-crop: the streaming pipeline's Inception crop instead
  c.data.flip = True
  c.data.cutout = 0
  # Streaming: read images from disk a batch at a time instead of holding the split on the
  # device (for data that does not fit: a folder or uncompressed .tar, or a TFDS array_record
  # dataset); image_size > 0 crops and resizes every image (Inception crop for training,
  # resize + centre crop for testing); mean/std () are estimated from 2048 training images.
  c.data.streaming = True
  c.data.image_size = 224
  c.data.workers = 8
  c.data.mean = (0.485, 0.456, 0.406)  # ImageNet's, as DARTS' train_imagenet.py normalises
  c.data.std = (0.229, 0.224, 0.225)

  c.model = ml_collections.ConfigDict()
  c.model.space = "darts_imagenet"
  c.model.channels = 48
  c.model.layers = 14
  c.model.auxiliary = True

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 250
  c.train.optimizer = "darts_imagenet"
  c.train.learning_rate = 0.1
  c.train.lr_decay_rate = 0.97  # per epoch (DARTS' StepLR(1, gamma=0.97))
  c.train.min_learning_rate = 0.0  # unused by the darts_imagenet schedule
  c.train.momentum = 0.9
  c.train.weight_decay = 3e-5
  c.train.grad_clip = 5.0
  c.train.nesterov = False
  c.train.aux_weight = 0.4
  c.train.drop_path_prob = 0.0
  c.train.label_smoothing = 0.1
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
    c.data.name = "cifar10"  # with data.path set, only a label; pass the CIFAR-10 archive
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.data.train_size = 128
    c.data.test_size = 128
    c.data.crop_padding = 4
    c.data.streaming = False
    c.data.image_size = 0
    c.data.mean = ()
    c.data.std = ()
    c.model.channels = 8
    c.model.layers = 3
    c.model.auxiliary = False
    c.train.epochs = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
  else:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return c
