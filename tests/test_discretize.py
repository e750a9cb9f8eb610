"""Discretization on hand-built op weights, and genotype records: JSON, validation."""

import json

import numpy as np
import pytest

from dnas import discretize, genotypes, published
from dnas.ops.sets import DARTS, NB201
from dnas.spaces import DartsSearchNet, NB201SearchNet

OPS = {op: k for k, op in enumerate(DARTS.ops)}


def _weights(entries, n_edges=14):
  w = np.full((n_edges, len(DARTS.ops)), 0.01)
  for (edge, op), value in entries.items():
    w[edge, OPS[op]] = value
  return w


def test_darts_derivation_on_hand_built_weights():
  # Edges per node: node0 e0-1 (sources 0,1), node1 e2-4, node2 e5-8, node3 e9-13.
  normal = _weights({
      (0, "sep_conv_3x3"): 0.5,
      (1, "skip_connect"): 0.4, (1, "none"): 0.9,   # 'none' never counts
      (2, "max_pool_3x3"): 0.2,
      (3, "dil_conv_5x5"): 0.6,
      (4, "avg_pool_3x3"): 0.3, (4, "none"): 0.95,
      (6, "sep_conv_5x5"): 0.7,
      (8, "dil_conv_3x3"): 0.7,                      # tie with edge 6: lower source first
      (9, "none"): 0.99, (10, "none"): 0.99,         # node3: all ties, 'none' aside
  })
  reduce = _weights({(e, "skip_connect"): 0.1 * (e + 1) for e in range(14)})
  g = discretize.darts_genotype({"normal": normal, "reduce": reduce}, DARTS)
  assert g.normal == (("sep_conv_3x3", 0), ("skip_connect", 1),
                      ("dil_conv_5x5", 1), ("avg_pool_3x3", 2),
                      ("sep_conv_5x5", 1), ("dil_conv_3x3", 3),
                      ("max_pool_3x3", 0), ("max_pool_3x3", 1))
  # Larger weights on later edges: each node keeps its two latest sources, latest first.
  assert g.reduce == (("skip_connect", 1), ("skip_connect", 0),
                      ("skip_connect", 2), ("skip_connect", 1),
                      ("skip_connect", 3), ("skip_connect", 2),
                      ("skip_connect", 4), ("skip_connect", 3))
  assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_derive_follows_the_models_node_count():
  model = DartsSearchNet(nodes=3, multiplier=3)
  w = np.random.default_rng(0).random((9, len(DARTS.ops)))
  g = discretize.derive(model, {"normal": w, "reduce": w})
  assert len(g.normal) == 6 and g.normal_concat == (2, 3, 4)
  assert all(op != "none" for op, _ in g.normal)
  with pytest.raises(ValueError, match="edges"):
    discretize.darts_genotype({"normal": w[:8], "reduce": w[:8]}, DARTS, nodes=3)


def test_nb201_derivation_is_argmax_with_none():
  ops = {op: k for k, op in enumerate(NB201.ops)}
  w = np.zeros((6, 5))
  for e, op in enumerate(["nor_conv_3x3", "none", "avg_pool_3x3", "skip_connect",
                          "nor_conv_1x1", "none"]):
    w[e, ops[op]] = 1.0
  g = discretize.derive(NB201SearchNet(), {"cell": w})
  assert g.arch == ("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|"
                    "+|skip_connect~0|nor_conv_1x1~1|none~2|")


def test_each_space_derives_by_its_own_rule():
  """``derive`` asks the model: a user's space brings its own rule, and a model without one is
  refused naming its class."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class FirstOpSpace(nn.Module):
    def genotype(self, op_weights):  # a made-up rule: op 0 on every edge of a 1-node cell
      del op_weights
      return genotypes.NB201Genotype.from_arch("|nor_conv_3x3~0|+|none~0|none~1|"
                                               "+|none~0|none~1|none~2|")

  class NoRule(nn.Module):
    pass

  w = {"cell": np.ones((6, 5))}
  assert discretize.derive(FirstOpSpace(), w).arch.startswith("|nor_conv_3x3~0|")
  with pytest.raises(TypeError, match="NoRule has no discretization rule"):
    discretize.derive(NoRule(), w)


def test_derive_weights_default_and_override():
  from dnas.strategies import Strategy, darts, derive_weights  # pylint: disable=g-import-not-at-top
  arch = {"cell": np.array([[0.0, 1.0, 2.0]])}
  w = derive_weights(darts(), arch, ())
  np.testing.assert_allclose(w["cell"], [np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()],
                             rtol=1e-6)

  def sampling_mix(arch, state, key):  # needs a key: deriving must not call it
    raise AssertionError("mix called without a key")

  s = Strategy(init=lambda a: (), mix=sampling_mix, arch_grad=None,
               derive_weights=lambda a, state: {"cell": a["cell"] * 2})
  np.testing.assert_array_equal(derive_weights(s, arch, ())["cell"], [[0.0, 2.0, 4.0]])


@pytest.mark.parametrize("g", [published.get("DARTS_V2"), genotypes.NB201Genotype.from_arch(
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
    "skip_connect~2|")])
def test_json_round_trip(tmp_path, g):
  path = tmp_path / "genotype.json"
  genotypes.save(g, str(path))
  assert genotypes.load(str(path)) == g
  assert json.loads(path.read_text())["space"] == g.space


def _darts_json(**changes):
  obj = published.get("DARTS_V2").to_json()
  obj.update(changes)
  return obj


@pytest.mark.parametrize("obj,field", [
    (_darts_json(normal=[["sep_conv_9x9", 0]] + _darts_json()["normal"][1:]), "normal[0]"),
    (_darts_json(reduce=_darts_json()["reduce"][:7] + [["skip_connect", 6]]), "reduce[7]"),
    (_darts_json(normal=_darts_json()["normal"][:7]), "normal"),
    (_darts_json(normal_concat=[2, 3, 9]), "normal_concat"),
    (_darts_json(colour="red"), "colour"),
    ({"space": "nb201", "arch": "|nor_conv_3x3~0|+|nor_conv_3x3~0|"}, "node 2"),
    ({"space": "nb201", "arch": "|nor_conv_3x3~1|"}, "node 1"),
    ({"space": "nb201", "arch": "|conv_7x7~0|"}, "node 1"),
    ({"space": "resnet"}, "space"),
])
def test_bad_genotype_is_rejected_naming_the_field(tmp_path, obj, field):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(obj))
  with pytest.raises(genotypes.GenotypeError) as e:
    genotypes.load(str(path))
  assert str(path) in str(e.value) and field in str(e.value)


def test_unreadable_genotype_files(tmp_path):
  with pytest.raises(genotypes.GenotypeError, match="not found"):
    genotypes.load(str(tmp_path / "missing.json"))
  (tmp_path / "torn.json").write_text('{"space": "darts", "normal": [')
  with pytest.raises(genotypes.GenotypeError, match="torn.json"):
    genotypes.load(str(tmp_path / "torn.json"))
