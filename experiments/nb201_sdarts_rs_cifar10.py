r"""SDARTS-RS on the NAS-Bench-201 space, CIFAR-10 (Chen & Hsieh, "SDARTS", ICML 2020).

Variants:
  default  The authors' NAS-Bench-201 search: 100 epochs, batch 64, C=16, N=5 cells per stage,
           3 nodes; the weight step runs at ``project(softmax(alpha) + U(-eps, eps))``,
           ``eps_e = 0.03 + 0.27 e / E`` (once per epoch); alpha first, DARTS' first-order
           gradient at the unperturbed softmax.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_sdarts_rs_cifar10.py --workdir runs/nb201_sdarts_rs \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_sdarts_rs_cifar10.py:smoke \
      --workdir runs/nb201_sdarts_rs_smoke --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of the noise-free
``softmax(alpha)`` on every edge.

Protocol: the official code, xiangning-chen/SmoothDARTS, ``nasbench201/train_search.py`` with
``--perturb_alpha random`` (its README's SDARTS-RS flag): argparse defaults (l. 35-57): batch 64,
lr 0.025 cosine-annealed to 0.001, momentum 0.9 (no Nesterov), weight decay 3e-4, 100 epochs,
C=16, seed 2, gradient norm clipped at 5, first order, alpha by Adam lr 3e-4 (betas (0.5,
0.999), ``optimizers/darts/architect.py``) with weight decay 1e-3, ``--epsilon_alpha 0.3``
(``search.sdarts_rs.epsilon_max``); ``main``: ``Network(C=16, N=5, max_nodes=4)``,
``epsilon_alpha = 0.03 + (0.3 - 0.03) * epoch / epochs``; ``train``: ``architect.step`` at the
unperturbed alpha, then the weight step at the softmax plus uniform noise, clipped to each edge's
simplex (``attacker/perturb.py``, ``Random_alpha``; ``nasbench201/model.py``, ``clip``).
Where dnas differs:
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step.
* The learning rate follows the cosine every step; the reference's scheduler steps per epoch.
* BatchNorm's running statistics follow the weight pass's batches only.
* The noise comes from dnas' keys (``fold_in`` of the step), not PyTorch's global generator.

Published result: none quoted. The SDARTS paper and README report the DARTS spaces and
NAS-Bench-1Shot1; we found no NAS-Bench-201 SDARTS-RS figure from its authors at hand.
Runtime here: not yet measured on a GPU.
"""

import ml_collections

VARIANTS = ("default", "smoke")


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
  c.search.strategy = "sdarts_rs"
  # eps_e = epsilon_min + (epsilon_max - epsilon_min) * e / E, once per epoch; order 1.
  c.search.sdarts_rs = ml_collections.ConfigDict({"epsilon_max": 0.3, "epsilon_min": 0.03,
                                                  "order": 1})
  c.search.update_order = "arch_first"  # architect.step, then the weights
  c.search.epochs = 100
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
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  c.precision = "highest"       # full float32 matmuls and convolutions on every device
  c.xla_cpu_preset = "default"  # see nb201_darts_cifar10.py
  c.xla_cpu_ynn_fusions = False

  if variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 256
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 1
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  return c
