"""Tests for dnas.plot: DOT text, cell drawings and alpha-history figures."""

import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from dnas import genotypes  # pylint: disable=g-import-not-at-top
from dnas import ops
from dnas import plot
from dnas import published

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NB201_ARCH = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
              "+|skip_connect~0|none~1|skip_connect~2|")
STATES = ["c_{k-2}", "c_{k-1}", "2", "3", "4", "5"]


@pytest.fixture
def nb201():
  return genotypes.NB201Genotype.from_arch(NB201_ARCH)


def _softmax_history(key_seed, epochs, edges, n_ops):
  rng = np.random.default_rng(key_seed)
  logits = np.cumsum(rng.normal(size=(epochs, edges, n_ops)), axis=0)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  return w / w.sum(-1, keepdims=True)


def _leftovers(folder):
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# --- DOT ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(published.GENOTYPES))
@pytest.mark.parametrize("which", ["normal", "reduce"])
def test_dot_has_every_edge_with_its_op(name, which):
  g = published.get(name)
  dot = plot.cell_dot(g, which)
  assert dot.startswith(f'digraph "{which}" {{') and dot.rstrip().endswith("}")
  for i, (op, src) in enumerate(getattr(g, which)):
    assert f'"{STATES[src]}" -> "{i // 2 + 2}" [label="{op}"]' in dot
  for c in getattr(g, which + "_concat"):
    assert f'"{STATES[c]}" -> "c_{{k}}"' in dot
  assert dot.count("->") == len(getattr(g, which)) + len(getattr(g, which + "_concat"))


def test_dot_nb201_has_every_edge(nb201):
  dot = plot.cell_dot(nb201, "cell")
  for i, node in enumerate(nb201.nodes):
    for op, src in node:
      assert f'"{src}" -> "{i + 1}" [label="{op}"' in dot
  assert '"1" -> "3" [label="none", style=dashed' in dot
  assert dot.count("->") == 6
  assert plot.cell_dot(nb201) == dot  # "normal" means the one cell too


def test_dot_rejects_unknown_cell(nb201):
  with pytest.raises(ValueError, match="normal"):
    plot.cell_dot(published.get("DARTS_V2"), "cell")
  with pytest.raises(ValueError, match="cell"):
    plot.cell_dot(nb201, "reduce")
  with pytest.raises(TypeError):
    plot.cell_dot({"space": "darts"})


def test_dot_rejects_bad_source():
  g = genotypes.DartsGenotype((("sep_conv_3x3", 0), ("sep_conv_3x3", 2)), (2,),
                              (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), (2,))
  with pytest.raises(genotypes.GenotypeError, match=r"normal\[1\]"):
    plot.cell_dot(g, "normal")


# --- Layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS_imagenet", "GDAS_V1"])
def test_layout_is_layered_left_to_right(name):
  g = published.get(name)
  graph = plot._graph(g, "normal")  # pylint: disable=protected-access
  pos = plot._layout(graph)  # pylint: disable=protected-access
  for e in graph.edges:
    assert pos[e.src][0] < pos[e.dst][0], e
  assert pos["c_{k-2}"][0] == pos["c_{k-1}"][0] == min(x for x, _ in pos.values())
  assert pos["c_{k}"][0] == max(x for x, _ in pos.values())
  assert len(set(pos.values())) == len(pos)  # no two nodes on the same spot


def test_parallel_edges_bend_apart():
  g = genotypes.darts(normal=[("sep_conv_3x3", 0), ("skip_connect", 0),
                              ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
                      reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1),
                              ("skip_connect", 2), ("max_pool_3x3", 1)],
                      normal_concat=(2, 3), reduce_concat=(2, 3))
  graph = plot._graph(g, "normal")  # pylint: disable=protected-access
  geo = plot._geometry(graph)  # pylint: disable=protected-access
  assert geo.rads[0] != geo.rads[1]
  assert all(label is not None for e, label in zip(graph.edges, geo.labels) if e.op)


# --- Drawing cells ------------------------------------------------------------------------------

def test_draw_cell_png_and_pdf(tmp_path):
  g = published.get("DARTS_V2")
  png = plot.draw_cell(g, "normal", str(tmp_path / "n.png"))
  pdf = plot.draw_cell(g, "reduce", str(tmp_path / "sub" / "r.pdf"))
  with open(png, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with open(pdf, "rb") as f:
    assert f.read(5) == b"%PDF-"
  assert os.path.getsize(png) > 1000 and os.path.getsize(pdf) > 1000
  assert _leftovers(tmp_path / "sub") == ["r.pdf"]  # no temporary files left behind


def test_draw_cell_rejects_unknown_extension(tmp_path):
  with pytest.raises(ValueError, match=r"\.png"):
    plot.draw_cell(published.get("DARTS_V2"), "normal", str(tmp_path / "cell.svg"))
  assert _leftovers(tmp_path) == []


def test_draw_genotype_darts(tmp_path):
  g = published.get("PC_DARTS_cifar10")
  paths = plot.draw_genotype(g, str(tmp_path / "out"), stem="pc")
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(f"pc_{w}.{ext}" for w in ("normal", "reduce")
                         for ext in ("png", "pdf", "dot"))
  assert _leftovers(tmp_path / "out") == names
  for p in paths:
    assert os.path.getsize(p) > 0
  with open(tmp_path / "out" / "pc_reduce.dot") as f:
    assert f.read() == plot.cell_dot(g, "reduce")


def test_draw_genotype_nb201(tmp_path, nb201):
  paths = plot.draw_genotype(nb201, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
      "genotype.dot", "genotype.pdf", "genotype.png"]
  with open(tmp_path / "genotype.png", "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with open(tmp_path / "genotype.dot") as f:
    assert f.read() == plot.cell_dot(nb201, "cell")


def _failing_savefig(monkeypatch):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  def savefig(*args, **kwargs):
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(Figure, "savefig", savefig)


def test_failed_draw_leaves_no_file(tmp_path, monkeypatch):
  _failing_savefig(monkeypatch)
  for name in ("cell.png", "cell.pdf"):
    with pytest.raises(RuntimeError, match="disk on fire"):
      plot.draw_cell(published.get("DARTS_V2"), "normal", str(tmp_path / name))
  with pytest.raises(RuntimeError):
    plot.draw_genotype(published.get("DARTS_V2"), str(tmp_path / "g"))
  assert _leftovers(tmp_path) == []
  assert _leftovers(tmp_path / "g") == []


def test_failed_draw_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "cell.png"
  path.write_bytes(b"old")
  _failing_savefig(monkeypatch)
  with pytest.raises(RuntimeError):
    plot.draw_cell(published.get("DARTS_V2"), "normal", str(path))
  assert path.read_bytes() == b"old"
  assert _leftovers(tmp_path) == ["cell.png"]


# --- Alpha history ------------------------------------------------------------------------------

def test_alpha_history_single_array_png(tmp_path):
  h = _softmax_history(0, epochs=5, edges=14, n_ops=len(ops.DARTS.ops))
  path = plot.draw_alpha_history(h, ops.DARTS.ops, str(tmp_path / "alpha.png"))
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC


def test_alpha_history_dict_pdf_with_edge_labels(tmp_path):
  n = len(ops.DARTS.ops)
  history = {"normal": _softmax_history(1, 4, 14, n), "reduce": _softmax_history(2, 4, 14, n)}
  labels = [f"{i // 2}<-{i % 2}" for i in range(14)]
  path = plot.draw_alpha_history(history, ops.DARTS.ops, str(tmp_path / "alpha.pdf"),
                                 edge_labels=labels)
  with open(path, "rb") as f:
    assert f.read(5) == b"%PDF-"
  assert _leftovers(tmp_path) == ["alpha.pdf"]


def test_alpha_history_nb201_ops_without_none(tmp_path):
  names = [o for o in ops.NB201.ops if o != "none"]
  h = _softmax_history(3, 3, 6, len(names))
  plot.draw_alpha_history({"cell": h}, names, str(tmp_path / "a.png"))
  assert os.path.getsize(tmp_path / "a.png") > 0


@pytest.mark.parametrize("history, match", [
    (np.ones((3, 14)), "epochs, edges, ops"),
    (np.ones((0, 14, 8)), "at least one epoch"),
    (np.ones((3, 14, 5)), "op_names lists 8"),
    ({}, "no cell types"),
])
def test_alpha_history_rejects_bad_shapes(tmp_path, history, match):
  with pytest.raises(ValueError, match=match):
    plot.draw_alpha_history(history, ops.DARTS.ops, str(tmp_path / "a.png"))
  assert _leftovers(tmp_path) == []


def test_alpha_history_rejects_wrong_edge_label_count(tmp_path):
  h = _softmax_history(4, 2, 14, 8)
  with pytest.raises(ValueError, match="edge_labels"):
    plot.draw_alpha_history(h, ops.DARTS.ops, str(tmp_path / "a.png"), edge_labels=["a"])
  assert _leftovers(tmp_path) == []


def test_failed_alpha_history_leaves_no_file(tmp_path, monkeypatch):
  _failing_savefig(monkeypatch)
  h = _softmax_history(5, 2, 14, 8)
  with pytest.raises(RuntimeError):
    plot.draw_alpha_history(h, ops.DARTS.ops, str(tmp_path / "a.png"))
  assert _leftovers(tmp_path) == []


def test_heatmap_scale_spans_the_values_and_titles_name_the_genotype():
  assert plot._span(np.array([[0.12, 0.14], [0.13, 0.125]])) == (0.12, 0.14)
  lo, hi = plot._span(np.full((2, 2), 0.2))
  assert lo < 0.2 < hi
  graph = plot._graph(published.get("DARTS_V2"), "normal")
  fig = plot._cell_figure(graph, "DARTS_V2: normal cell")
  assert fig._suptitle.get_text() == "DARTS_V2: normal cell"
  # Intermediate nodes are numbered as the genotype JSON's states: 2 .. 5.
  assert [n.name for n in graph.nodes] == ["c_{k-2}", "c_{k-1}", "2", "3", "4", "5", "c_{k}"]
