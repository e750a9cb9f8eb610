"""Published genotypes in the DARTS space, as data, each with its citation.

Every cell here was checked op by op against the ``genotypes.py`` file named in ``CITATIONS``.
Sources count the two cell inputs as 0 and 1 and intermediate node ``i`` as ``i + 2``; every
cell concatenates its four intermediate nodes (``range(2, 6)`` in the original files).

Example::

    from dnas import published
    g = published.get("DARTS_V2")
    g.normal[7]  # ('dil_conv_3x3', 2)

Names are ``METHOD[_VERSION]`` as the original files name them, with ``_cifar10`` or
``_imagenet`` (the dataset searched on) where a method published cells for both:
``PC_DARTS_cifar10`` and ``PC_DARTS_imagenet`` (the original file's ``PC_DARTS_cifar`` and
``PC_DARTS_image``, which still load, as ``ALIASES``), ``DrNAS_cifar10`` and ``DrNAS_imagenet``.
There is deliberately no bare ``"DARTS"`` alias: in the DARTS repository that name has meant the first-
order cell (V1) in one version of the file and the second-order cell (V2) in another.

Not included: GDAS' "FRC" result (``GDAS_F1`` in D-X-Y's file) searches only the normal cell and
pairs it with a hand-designed reduction cell, which a DARTS-space genotype cannot express.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from dnas.genotypes import DartsGenotype, Edge, Genotype

_CONCAT = (2, 3, 4, 5)


def _cell(*nodes: Tuple[Edge, Edge]) -> Tuple[Edge, ...]:
  # One argument per intermediate node keeps the tables below readable node by node.
  return tuple(edge for node in nodes for edge in node)


def _darts(normal: Sequence[Edge], reduce: Sequence[Edge]) -> DartsGenotype:
  return DartsGenotype(tuple(normal), _CONCAT, tuple(reduce), _CONCAT)


GENOTYPES: Dict[str, Genotype] = {
    # DARTS, first-order search.
    "DARTS_V1": _darts(
        normal=_cell((("sep_conv_3x3", 1), ("sep_conv_3x3", 0)),
                     (("skip_connect", 0), ("sep_conv_3x3", 1)),
                     (("skip_connect", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 0), ("skip_connect", 2))),
        reduce=_cell((("max_pool_3x3", 0), ("max_pool_3x3", 1)),
                     (("skip_connect", 2), ("max_pool_3x3", 0)),
                     (("max_pool_3x3", 0), ("skip_connect", 2)),
                     (("skip_connect", 2), ("avg_pool_3x3", 0)))),
    # DARTS, second-order search: the cell behind the paper's 2.76% CIFAR-10 error.
    "DARTS_V2": _darts(
        normal=_cell((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 1), ("skip_connect", 0)),
                     (("skip_connect", 0), ("dil_conv_3x3", 2))),
        reduce=_cell((("max_pool_3x3", 0), ("max_pool_3x3", 1)),
                     (("skip_connect", 2), ("max_pool_3x3", 1)),
                     (("max_pool_3x3", 0), ("skip_connect", 2)),
                     (("skip_connect", 2), ("max_pool_3x3", 1)))),
    # PC-DARTS, searched on CIFAR-10.
    "PC_DARTS_cifar10": _darts(
        normal=_cell((("sep_conv_3x3", 1), ("skip_connect", 0)),
                     (("sep_conv_3x3", 0), ("dil_conv_3x3", 1)),
                     (("sep_conv_5x5", 0), ("sep_conv_3x3", 1)),
                     (("avg_pool_3x3", 0), ("dil_conv_3x3", 1))),
        reduce=_cell((("sep_conv_5x5", 1), ("max_pool_3x3", 0)),
                     (("sep_conv_5x5", 1), ("sep_conv_5x5", 2)),
                     (("sep_conv_3x3", 0), ("sep_conv_3x3", 3)),
                     (("sep_conv_3x3", 1), ("sep_conv_3x3", 2)))),
    # PC-DARTS, searched directly on (a subset of) ImageNet.
    "PC_DARTS_imagenet": _darts(
        normal=_cell((("skip_connect", 1), ("sep_conv_3x3", 0)),
                     (("sep_conv_3x3", 0), ("skip_connect", 1)),
                     (("sep_conv_3x3", 1), ("sep_conv_3x3", 3)),
                     (("sep_conv_3x3", 1), ("dil_conv_5x5", 4))),
        reduce=_cell((("sep_conv_3x3", 0), ("skip_connect", 1)),
                     (("dil_conv_5x5", 2), ("max_pool_3x3", 1)),
                     (("sep_conv_3x3", 2), ("sep_conv_3x3", 1)),
                     (("sep_conv_5x5", 0), ("sep_conv_3x3", 3)))),
    # P-DARTS, searched on CIFAR-10.
    "PDARTS": _darts(
        normal=_cell((("skip_connect", 0), ("dil_conv_3x3", 1)),
                     (("skip_connect", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 1), ("sep_conv_3x3", 3)),
                     (("sep_conv_3x3", 0), ("dil_conv_5x5", 4))),
        reduce=_cell((("avg_pool_3x3", 0), ("sep_conv_5x5", 1)),
                     (("sep_conv_3x3", 0), ("dil_conv_5x5", 2)),
                     (("max_pool_3x3", 0), ("dil_conv_3x3", 1)),
                     (("dil_conv_3x3", 1), ("dil_conv_5x5", 3)))),
    # GDAS, normal and reduction cells both searched (CIFAR-10). The original file stores
    # (op, source, weight) triples; the weights are dropped here.
    "GDAS_V1": _darts(
        normal=_cell((("skip_connect", 0), ("skip_connect", 1)),
                     (("skip_connect", 0), ("sep_conv_5x5", 2)),
                     (("sep_conv_3x3", 3), ("skip_connect", 0)),
                     (("sep_conv_5x5", 4), ("sep_conv_3x3", 3))),
        reduce=_cell((("sep_conv_5x5", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_5x5", 2), ("sep_conv_5x5", 1)),
                     (("dil_conv_5x5", 2), ("sep_conv_3x3", 1)),
                     (("sep_conv_5x5", 0), ("sep_conv_5x5", 1)))),
    # DrNAS, searched on CIFAR-10.
    "DrNAS_cifar10": _darts(
        normal=_cell((("sep_conv_3x3", 0), ("sep_conv_5x5", 1)),
                     (("sep_conv_3x3", 1), ("sep_conv_3x3", 2)),
                     (("skip_connect", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 2), ("dil_conv_5x5", 3))),
        reduce=_cell((("max_pool_3x3", 0), ("sep_conv_5x5", 1)),
                     (("dil_conv_5x5", 2), ("sep_conv_5x5", 1)),
                     (("sep_conv_5x5", 1), ("dil_conv_5x5", 3)),
                     (("skip_connect", 4), ("sep_conv_5x5", 1)))),
    # DrNAS, searched directly on ImageNet with progressive learning.
    "DrNAS_imagenet": _darts(
        normal=_cell((("sep_conv_3x3", 1), ("sep_conv_3x3", 0)),
                     (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 0), ("dil_conv_3x3", 3)),
                     (("skip_connect", 0), ("sep_conv_3x3", 1))),
        reduce=_cell((("max_pool_3x3", 0), ("sep_conv_3x3", 1)),
                     (("sep_conv_3x3", 0), ("skip_connect", 2)),
                     (("sep_conv_3x3", 0), ("sep_conv_3x3", 2)),
                     (("sep_conv_3x3", 3), ("sep_conv_3x3", 1)))),
}

_DARTS = ("Liu, Simonyan & Yang, 'DARTS: Differentiable Architecture Search', ICLR 2019")
_PC_DARTS = ("Xu et al., 'PC-DARTS: Partial Channel Connections for Memory-Efficient "
             "Architecture Search', ICLR 2020")
_PDARTS = ("Chen, Xie, Wu & Tian, 'Progressive Differentiable Architecture Search: Bridging "
           "the Depth Gap between Search and Evaluation', ICCV 2019")
_GDAS = ("Dong & Yang, 'Searching for A Robust Neural Architecture in Four GPU Hours', "
         "CVPR 2019")
_DRNAS = ("Chen, Wang, Cheng, Tang & Hsieh, 'DrNAS: Dirichlet Neural Architecture Search', "
          "ICLR 2021")

CITATIONS: Dict[str, str] = {
    "DARTS_V1": (f"{_DARTS}; github.com/quark0/darts cnn/genotypes.py (DARTS_V1; named "
                 "DARTS in early versions of that file)"),
    "DARTS_V2": (f"{_DARTS}; github.com/quark0/darts cnn/genotypes.py (DARTS_V2), as "
                 "reproduced in github.com/yuhuixu1993/PC-DARTS genotypes.py and "
                 "github.com/chenxin061/pdarts genotypes.py"),
    "PC_DARTS_cifar10": (f"{_PC_DARTS}; github.com/yuhuixu1993/PC-DARTS genotypes.py "
                       "(PC_DARTS_cifar)"),
    "PC_DARTS_imagenet": (f"{_PC_DARTS}; github.com/yuhuixu1993/PC-DARTS genotypes.py "
                       "(PC_DARTS_image)"),
    "PDARTS": f"{_PDARTS}; github.com/chenxin061/pdarts genotypes.py (PDARTS)",
    "GDAS_V1": (f"{_GDAS}; github.com/D-X-Y/AutoDL-Projects others/GDAS/lib/nas/genotypes.py "
                "(GDAS_V1, with weights) and lib/nas_infer_model/DXYs/genotypes.py (GDAS_V1)"),
    "DrNAS_cifar10": (f"{_DRNAS}; github.com/xiangning-chen/DrNAS DARTS-space/genotypes.py "
                      "(DrNAS_cifar10)"),
    "DrNAS_imagenet": (f"{_DRNAS}; github.com/xiangning-chen/DrNAS DARTS-space/genotypes.py "
                       "(DrNAS_imagenet)"),
}


# Earlier names, still accepted by ``get``.
ALIASES: Dict[str, str] = {"PC_DARTS_cifar": "PC_DARTS_cifar10",
                           "PC_DARTS_image": "PC_DARTS_imagenet"}


class UnknownGenotypeError(KeyError):
  """A genotype name that is not in ``GENOTYPES``."""

  def __str__(self):  # KeyError quotes its message; keep it readable.
    return str(self.args[0])


def names() -> list[str]:
  """The published genotype names, sorted."""
  return sorted(GENOTYPES)


def get(name: str) -> Genotype:
  """Returns the published genotype ``name``.

  Args:
    name: a key of ``GENOTYPES``, e.g. ``"DARTS_V2"`` or ``"PC_DARTS_cifar10"``, or of
      ``ALIASES``.

  Returns:
    The genotype; its source is ``CITATIONS[name]``.

  Raises:
    UnknownGenotypeError: (a ``KeyError``) ``name`` is unknown; the message lists valid names.
  """
  try:
    return GENOTYPES[ALIASES.get(name, name)]
  except (KeyError, TypeError):
    raise UnknownGenotypeError(
        f"unknown published genotype {name!r}; known: {', '.join(names())}") from None
