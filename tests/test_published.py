"""Tests for dnas.published: the published genotypes and their citations."""

import json

import pytest

from dnas import genotypes
from dnas import published


@pytest.mark.parametrize("name", sorted(published.GENOTYPES))
def test_validates(name):
  g = published.get(name)
  assert genotypes.validate(g, name) is g
  assert g.space == "darts"
  assert g.nodes == 4
  assert tuple(g.normal_concat) == tuple(g.reduce_concat) == (2, 3, 4, 5)


@pytest.mark.parametrize("name", sorted(published.GENOTYPES))
def test_json_round_trip(name):
  g = published.get(name)
  back = genotypes.from_json(json.loads(json.dumps(g.to_json())), name)
  assert back == g


@pytest.mark.parametrize("name", sorted(published.GENOTYPES))
def test_every_genotype_is_cited(name):
  citation = published.CITATIONS[name]
  assert "github.com/" in citation and "genotypes.py" in citation


def test_citations_and_genotypes_have_the_same_names():
  assert set(published.CITATIONS) == set(published.GENOTYPES)
  assert published.names() == sorted(published.GENOTYPES)


def test_unknown_name_lists_valid_names():
  with pytest.raises(KeyError) as info:
    published.get("DARTS_V3")
  message = str(info.value)
  assert "DARTS_V3" in message
  for name in published.GENOTYPES:
    assert name in message


def test_unhashable_name_is_a_key_error():
  with pytest.raises(published.UnknownGenotypeError):
    published.get(["DARTS_V2"])


# Spot checks against the cited files, edge by edge (index into the flat (op, source) list).
@pytest.mark.parametrize("name, field, index, edge", [
    # quark0/darts cnn/genotypes.py
    ("DARTS_V1", "normal", 7, ("skip_connect", 2)),
    ("DARTS_V1", "reduce", 7, ("avg_pool_3x3", 0)),
    ("DARTS_V2", "normal", 7, ("dil_conv_3x3", 2)),
    ("DARTS_V2", "normal", 0, ("sep_conv_3x3", 0)),
    ("DARTS_V2", "reduce", 3, ("max_pool_3x3", 1)),
    # yuhuixu1993/PC-DARTS genotypes.py
    ("PC_DARTS_cifar10", "normal", 6, ("avg_pool_3x3", 0)),
    ("PC_DARTS_cifar10", "reduce", 5, ("sep_conv_3x3", 3)),
    ("PC_DARTS_imagenet", "normal", 7, ("dil_conv_5x5", 4)),
    ("PC_DARTS_imagenet", "reduce", 2, ("dil_conv_5x5", 2)),
    # chenxin061/pdarts genotypes.py
    ("PDARTS", "normal", 1, ("dil_conv_3x3", 1)),
    ("PDARTS", "reduce", 0, ("avg_pool_3x3", 0)),
    ("PDARTS", "reduce", 7, ("dil_conv_5x5", 3)),
    # D-X-Y/AutoDL-Projects others/GDAS/lib/nas/genotypes.py (weights dropped)
    ("GDAS_V1", "normal", 6, ("sep_conv_5x5", 4)),
    ("GDAS_V1", "reduce", 4, ("dil_conv_5x5", 2)),
    ("GDAS_V1", "reduce", 7, ("sep_conv_5x5", 1)),
    # xiangning-chen/DrNAS DARTS-space/genotypes.py
    ("DrNAS_cifar10", "normal", 7, ("dil_conv_5x5", 3)),
    ("DrNAS_cifar10", "reduce", 6, ("skip_connect", 4)),
    ("DrNAS_imagenet", "normal", 5, ("dil_conv_3x3", 3)),
    ("DrNAS_imagenet", "reduce", 3, ("skip_connect", 2)),
])
def test_edges_match_the_cited_file(name, field, index, edge):
  assert getattr(published.get(name), field)[index] == edge


def test_darts_v2_whole_normal_cell():
  assert published.get("DARTS_V2").normal == (
      ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
      ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2))


def test_genotypes_are_distinct():
  cells = [(g.normal, g.reduce) for g in published.GENOTYPES.values()]
  assert len(set(cells)) == len(cells)


def test_one_naming_convention_and_the_old_names_still_load():
  for name in published.names():
    assert not name.endswith(("_cifar", "_image")), name
  for old, new in published.ALIASES.items():
    assert old not in published.GENOTYPES
    assert published.get(old) == published.get(new)
