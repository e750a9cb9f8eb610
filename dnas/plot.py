"""Drawings of cells and of alpha during search, with matplotlib alone (no graphviz binary).

A DARTS cell (Liu et al., 2019) reads two inputs, ``c_{k-2}`` and ``c_{k-1}`` (states 0 and 1),
builds intermediate nodes ``2 .. n+1`` from two labelled edges each, and concatenates the nodes
listed in ``*_concat`` into its output ``c_{k}``: the numbering of the genotype JSON (an edge's
source and ``*_concat``) and of the alpha heatmap's edge labels. An NB201 cell (Dong & Yang, 2020)
has nodes ``0 .. 3``; node 0 is the input, node 3 the output, and every edge is labelled with its
op.

``cell_dot`` writes a cell as graphviz DOT text for those who have graphviz; ``draw_cell`` draws
the same graph with matplotlib on a layered layout computed here. Every file is rendered in memory
first and then written atomically, so a failed draw leaves no file behind.

Example::

    from dnas import plot, published
    plot.draw_genotype(published.get("DARTS_V2"), "out/", stem="darts_v2")
    # out/darts_v2_normal.{png,pdf,dot}, out/darts_v2_reduce.{png,pdf,dot}

matplotlib is imported inside the drawing functions, so ``import dnas.plot`` stays cheap and
``cell_dot`` works without it.
"""

from __future__ import annotations

import io as _io
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from dnas import io
from dnas.genotypes import DartsGenotype, Genotype, GenotypeError, NB201Genotype

_FORMATS = ("png", "pdf")
_INPUT, _INTERMEDIATE, _OUTPUT = "input", "intermediate", "output"
_FILL = {_INPUT: "#c1e1c1", _INTERMEDIATE: "#add8e6", _OUTPUT: "#eee8aa"}
_DOT_FILL = {_INPUT: "darkseagreen2", _INTERMEDIATE: "lightblue", _OUTPUT: "palegoldenrod"}
_COLUMN, _ROW = 3.0, 1.5   # layout spacing, in data units
_RADIUS = 0.36        # node circles, in data units
_INCHES_PER_UNIT = 0.7
_LABEL_FONTSIZE = 7
_CHAR_WIDTH = 0.08    # data units per character of a label at _LABEL_FONTSIZE
_LABEL_HEIGHT = 0.25
_RADS = (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5, 0.7, -0.7)
_LABEL_TS = (0.5, 0.45, 0.55, 0.4, 0.6, 0.35, 0.65, 0.3, 0.7, 0.25, 0.75, 0.2, 0.8)


class _Node(NamedTuple):
  name: str   # the DOT id and the text drawn in the node
  kind: str   # _INPUT, _INTERMEDIATE or _OUTPUT


class _Edge(NamedTuple):
  src: str
  dst: str
  op: Optional[str]  # None for the unlabelled edges into the output node


class _Graph(NamedTuple):
  title: str
  nodes: Tuple[_Node, ...]
  edges: Tuple[_Edge, ...]


def _darts_graph(g: DartsGenotype, which: str) -> _Graph:
  if which not in ("normal", "reduce"):
    raise ValueError(f"which must be 'normal' or 'reduce' for a DARTS genotype, got {which!r}")
  edges = getattr(g, which)
  concat = getattr(g, which + "_concat")
  n = len(edges) // 2
  if len(edges) % 2 or n == 0:
    raise GenotypeError(f"{which}: expected two (op, source) pairs per node, got {len(edges)}")
  states = ["c_{k-2}", "c_{k-1}"] + [str(i + 2) for i in range(n)]
  out = []
  for i, (op, src) in enumerate(edges):
    node = i // 2
    if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node + 2:
      raise GenotypeError(f"{which}[{i}]: source {src!r} must be an int in [0, {node + 2})")
    out.append(_Edge(states[src], states[node + 2], str(op)))
  for c in concat:
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(states):
      raise GenotypeError(f"{which}_concat: {c!r} is not a state in [0, {len(states)})")
    out.append(_Edge(states[c], "c_{k}", None))
  nodes = ([_Node(s, _INPUT) for s in states[:2]] +
           [_Node(s, _INTERMEDIATE) for s in states[2:]] + [_Node("c_{k}", _OUTPUT)])
  return _Graph(which, tuple(nodes), tuple(out))


def _nb201_graph(g: NB201Genotype, which: str) -> _Graph:
  if which not in ("normal", "cell"):
    raise ValueError(f"an NB201 genotype has one cell; which must be 'cell' or 'normal', "
                     f"got {which!r}")
  if not g.nodes:
    raise GenotypeError("an NB201 cell needs at least one node")
  n = len(g.nodes) + 1
  out = []
  for i, node in enumerate(g.nodes):
    for op, src in node:
      if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src <= i:
        raise GenotypeError(f"node {i + 1}: source {src!r} must be an int in [0, {i + 1})")
      out.append(_Edge(str(src), str(i + 1), str(op)))
  kinds = [_INPUT] + [_INTERMEDIATE] * (n - 2) + [_OUTPUT]
  return _Graph("cell", tuple(_Node(str(i), kinds[i]) for i in range(n)), tuple(out))


def _graph(genotype: Genotype, which: str) -> _Graph:
  if isinstance(genotype, DartsGenotype):
    return _darts_graph(genotype, which)
  if isinstance(genotype, NB201Genotype):
    return _nb201_graph(genotype, which)
  raise TypeError(f"expected a DartsGenotype or NB201Genotype, got {type(genotype).__name__}")


def _quote(s: str) -> str:
  return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cell_dot(genotype: Genotype, which: str = "normal") -> str:
  """Returns a cell as graphviz DOT text (``dot -Tpdf cell.dot -o cell.pdf`` renders it).

  Args:
    genotype: a DARTS or NB201 genotype.
    which: ``"normal"`` or ``"reduce"`` for DARTS; ``"cell"`` (or ``"normal"``) for NB201.

  Returns:
    A ``digraph`` with one node per state and one edge per ``(op, source)`` pair, labelled with
    the op; DARTS cells add unlabelled edges from the concatenated states to ``c_{k}``.
  """
  graph = _graph(genotype, which)
  lines = [f"digraph {_quote(graph.title)} {{",
           "  rankdir=LR;",
           '  node [shape=box, style="rounded,filled", fontname=helvetica];',
           "  edge [fontname=helvetica, fontsize=10];"]
  for node in graph.nodes:
    lines.append(f"  {_quote(node.name)} [fillcolor={_DOT_FILL[node.kind]}];")
  for e in graph.edges:
    if e.op is None:
      attrs = "color=gray"
    elif e.op == "none":
      attrs = f"label={_quote(e.op)}, style=dashed, color=gray"
    else:
      attrs = f"label={_quote(e.op)}"
    lines.append(f"  {_quote(e.src)} -> {_quote(e.dst)} [{attrs}];")
  lines.append("}")
  return "\n".join(lines) + "\n"


def _layout(graph: _Graph) -> Dict[str, Tuple[float, float]]:
  """Layered positions: inputs in column 0, each node one column right of its deepest source."""
  preds: Dict[str, List[str]] = {n.name: [] for n in graph.nodes}
  for e in graph.edges:
    preds[e.dst].append(e.src)
  layer: Dict[str, int] = {}
  for node in graph.nodes:
    if node.kind == _INPUT:
      layer[node.name] = 0
  for node in graph.nodes:  # sources precede their nodes, so one pass in order suffices
    if node.kind == _INTERMEDIATE:
      layer[node.name] = 1 + max((layer[p] for p in preds[node.name]), default=0)
  last = max(layer.values(), default=0)
  for node in graph.nodes:
    if node.kind == _OUTPUT:
      layer[node.name] = last + 1
  columns: Dict[int, List[str]] = {}
  for node in graph.nodes:
    columns.setdefault(layer[node.name], []).append(node.name)
  pos = {}
  for col, names in columns.items():
    for row, name in enumerate(names):
      pos[name] = (_COLUMN * col, _ROW * ((len(names) - 1) / 2 - row))
  return pos


def _render(fig, fmt: str) -> bytes:
  buf = _io.BytesIO()
  fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=150)
  return buf.getvalue()


def _format(path: str) -> str:
  fmt = os.path.splitext(path)[1].lower().lstrip(".")
  if fmt not in _FORMATS:
    raise ValueError(f"{path}: cannot tell the format; use one of the extensions "
                     f"{', '.join('.' + f for f in _FORMATS)}")
  return fmt


def _new_figure(width: float, height: float):
  # A bare Figure with an Agg canvas: no pyplot, so no global figure list and no GUI backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _control(p1: np.ndarray, p2: np.ndarray, rad: float) -> np.ndarray:
  # matplotlib's "arc3" connection: a quadratic Bezier whose control point is the chord's
  # midpoint moved by rad * (dy, -dx).
  d = p2 - p1
  return (p1 + p2) / 2 + rad * np.array([d[1], -d[0]])


def _arc(p1, p2, rad: float, t) -> np.ndarray:
  """Points at parameters ``t`` on the arc3 curve from p1 to p2."""
  p1, p2 = np.asarray(p1, float), np.asarray(p2, float)
  c = _control(p1, p2, rad)
  t = np.asarray(t, float)[..., None]
  return (1 - t) ** 2 * p1 + 2 * t * (1 - t) * c + t ** 2 * p2


def _min_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """For each point of ``a``, the distance to the nearest point of ``b`` (inf if b is empty)."""
  if not len(b):
    return np.full(len(a), np.inf)
  return np.min(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1), axis=1)


def _route(p1, p2, others: np.ndarray, drawn: np.ndarray, taken: Sequence[float]) -> float:
  """Picks an arc's bend: clear of the other nodes first, then apart from the arcs already
  drawn, then as straight as possible."""
  scores = []
  for rad in _RADS:
    pts = _arc(p1, p2, rad, np.linspace(0.2, 0.8, 13))
    blocked = np.min(_min_distance(pts, others)) < _RADIUS + 0.2
    crowded = np.mean(_min_distance(pts, drawn) < 0.3)
    scores.append(10.0 * (rad in taken) + 5.0 * blocked + 2.0 * crowded + abs(rad))
  return _RADS[int(np.argmin(scores))]


def _tangent(p1, p2, rad: float, t: float) -> np.ndarray:
  """The unit tangent at ``t`` of the arc3 curve from p1 to p2."""
  p1, p2 = np.asarray(p1, float), np.asarray(p2, float)
  c = _control(p1, p2, rad)
  v = 2 * (1 - t) * (c - p1) + 2 * t * (p2 - c)
  return v / max(float(np.linalg.norm(v)), 1e-9)


class _Label(NamedTuple):
  x: float
  y: float
  angle: float       # degrees, kept upright
  points: np.ndarray  # samples along the label's long axis, for collision tests


def _label_at(p1, p2, rad: float, t: float, text: str) -> _Label:
  centre = _arc(p1, p2, rad, t)
  u = _tangent(p1, p2, rad, t)
  if u[0] < 0 or (u[0] == 0 and u[1] < 0):
    u = -u
  half = (_CHAR_WIDTH * len(text) + 0.1) / 2
  points = centre + np.linspace(-half, half, max(3, int(2 * half / 0.1) + 1))[:, None] * u
  angle = float(np.degrees(np.arctan2(u[1], u[0])))
  return _Label(float(centre[0]), float(centre[1]), angle, points)


class _Geometry(NamedTuple):
  pos: Dict[str, Tuple[float, float]]
  rads: Tuple[float, ...]                  # one arc bend per edge
  labels: Tuple[Optional[_Label], ...]     # one per edge; None for unlabelled edges
  x_lim: Tuple[float, float]
  y_lim: Tuple[float, float]


def _geometry(graph: _Graph) -> _Geometry:
  """Positions, arc bends and label places for a cell, all in data units (pure)."""
  pos = _layout(graph)
  centers = np.array([pos[n.name] for n in graph.nodes], float)
  names = [n.name for n in graph.nodes]
  rads, taken, drawn = [], {}, [np.zeros((0, 2))]
  for e in graph.edges:
    others = centers[[i for i, n in enumerate(names) if n not in (e.src, e.dst)]]
    # A second edge between the same pair of nodes must bend differently to stay visible.
    rad = _route(pos[e.src], pos[e.dst], others, np.concatenate(drawn),
                 taken.get((e.src, e.dst), ()))
    taken.setdefault((e.src, e.dst), []).append(rad)
    drawn.append(_arc(pos[e.src], pos[e.dst], rad, np.linspace(0.2, 0.8, 13)))
    rads.append(rad)
  curves = [_arc(pos[e.src], pos[e.dst], rad, np.linspace(0, 1, 61))
            for e, rad in zip(graph.edges, rads)]
  labels: List[Optional[_Label]] = []
  placed = np.zeros((0, 2))
  for i, (e, rad) in enumerate(zip(graph.edges, rads)):
    if e.op is None:
      labels.append(None)
      continue
    candidates = [_label_at(pos[e.src], pos[e.dst], rad, t, e.op) for t in _LABEL_TS]
    other_curves = np.concatenate([c for j, c in enumerate(curves) if j != i] or
                                  [np.zeros((0, 2))])
    # The place nearest the middle that covers no node, no other label and no other edge
    # (a label on a crossing hides which edge it names), else the least bad.
    scores = [10.0 * np.any(_min_distance(c.points, centers) < _RADIUS + 0.1) +
              3.0 * np.mean(_min_distance(c.points, placed) < _LABEL_HEIGHT) +
              np.mean(_min_distance(c.points, other_curves) < 0.12) for c in candidates]
    label = candidates[int(np.argmin(scores))]
    labels.append(label)
    placed = np.concatenate([placed, label.points])
  pts = np.concatenate([centers - _RADIUS, centers + _RADIUS, placed - _LABEL_HEIGHT,
                        placed + _LABEL_HEIGHT] +
                       [_arc(pos[e.src], pos[e.dst], rad, np.linspace(0, 1, 21))
                        for e, rad in zip(graph.edges, rads)])
  lo, hi = pts.min(0) - 0.2, pts.max(0) + 0.2
  return _Geometry(pos, tuple(rads), tuple(labels), (float(lo[0]), float(hi[0])),
                   (float(lo[1]), float(hi[1])))


def _cell_figure(graph: _Graph, title: Optional[str] = None):
  from matplotlib.patches import Circle, FancyArrowPatch  # pylint: disable=g-import-not-at-top
  geo = _geometry(graph)
  width = geo.x_lim[1] - geo.x_lim[0]
  height = geo.y_lim[1] - geo.y_lim[0]
  fig = _new_figure(_INCHES_PER_UNIT * width, _INCHES_PER_UNIT * height + 0.4)
  ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + 0.4 / _INCHES_PER_UNIT)))
  ax.set_aspect("equal")  # arcs and label places are computed in data units
  ax.axis("off")
  circles = {}
  for node in graph.nodes:
    x, y = geo.pos[node.name]
    circle = Circle((x, y), _RADIUS, facecolor=_FILL[node.kind], edgecolor="black", zorder=3)
    ax.add_patch(circle)
    circles[node.name] = circle
    text = f"${node.name}$" if node.name.startswith("c_") else node.name
    ax.text(x, y, text, ha="center", va="center", fontsize=10, zorder=4)
  for e, rad, label in zip(graph.edges, geo.rads, geo.labels):
    faint = e.op is None or e.op == "none"
    ax.add_patch(FancyArrowPatch(
        geo.pos[e.src], geo.pos[e.dst], patchA=circles[e.src], patchB=circles[e.dst],
        connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>", mutation_scale=12,
        color="gray" if faint else "black", linestyle="--" if e.op == "none" else "-",
        linewidth=1.0, zorder=2))
    if label is not None:
      ax.text(label.x, label.y, e.op, ha="center", va="center", rotation=label.angle,
              rotation_mode="anchor", fontsize=_LABEL_FONTSIZE, zorder=5,
              bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none",
                        alpha=0.85))
  ax.set_xlim(*geo.x_lim)
  ax.set_ylim(*geo.y_lim)
  fig.suptitle(title or graph.title, y=1.0, va="top")
  return fig


def draw_cell(genotype: Genotype, which: str, path: str, name: Optional[str] = None) -> str:
  """Draws a cell to ``path`` as PNG or PDF (by extension), written atomically.

  Inputs sit on the left, each intermediate node one column right of its deepest source, the
  output on the right; arrows carry their op names. ``none`` edges (NB201) are dashed.

  Args:
    genotype: a DARTS or NB201 genotype.
    which: ``"normal"`` or ``"reduce"`` for DARTS; ``"cell"`` (or ``"normal"``) for NB201.
    path: the file to write, ending in ``.png`` or ``.pdf``.
    name: the genotype's or run's name, shown in the title (``"DARTS_V2: normal cell"``).

  Returns:
    ``path``.
  """
  fmt = _format(path)
  graph = _graph(genotype, which)
  fig = _cell_figure(graph, f"{name}: {graph.title} cell" if name else None)
  data = _render(fig, fmt)
  io.atomic_write_bytes(path, data)
  return path


def draw_genotype(genotype: Genotype, out_dir: str, stem: str = "genotype",
                  name: Optional[str] = None) -> List[str]:
  """Draws every cell of ``genotype`` into ``out_dir`` as ``.png``, ``.pdf`` and ``.dot``.

  Args:
    genotype: a DARTS or NB201 genotype.
    out_dir: the folder to write to (created if missing).
    stem: file name prefix. DARTS writes ``{stem}_normal.*`` and ``{stem}_reduce.*``; NB201
      writes ``{stem}.*``.
    name: the genotype's or run's name, shown in the drawings' titles.

  Returns:
    The paths written, in order.
  """
  if isinstance(genotype, DartsGenotype):
    cells = [("normal", f"{stem}_normal"), ("reduce", f"{stem}_reduce")]
  elif isinstance(genotype, NB201Genotype):
    cells = [("cell", stem)]
  else:
    raise TypeError(f"expected a DartsGenotype or NB201Genotype, got {type(genotype).__name__}")
  written = []
  for which, name in cells:
    base = os.path.join(out_dir, name)
    for fmt in _FORMATS:
      written.append(draw_cell(genotype, which, f"{base}.{fmt}", name=name))
    io.atomic_write_text(f"{base}.dot", cell_dot(genotype, which))
    written.append(f"{base}.dot")
  return written


def _span(values: np.ndarray) -> Tuple[float, float]:
  """The colour scale of a heatmap: its values' range (widened when they are all equal)."""
  lo, hi = float(np.min(values)), float(np.max(values))
  if hi - lo < 1e-6:
    lo, hi = lo - 0.005, hi + 0.005
  return lo, hi


def _check_history(name: str, h, n_ops: int) -> np.ndarray:
  h = np.asarray(h, dtype=np.float64)
  if h.ndim != 3 or h.shape[0] < 1 or h.shape[1] < 1:
    raise ValueError(f"alpha history {name!r}: expected shape [epochs, edges, ops] with at "
                     f"least one epoch and edge, got {h.shape}")
  if h.shape[2] != n_ops:
    raise ValueError(f"alpha history {name!r}: has {h.shape[2]} ops on its last axis but "
                     f"op_names lists {n_ops}")
  return h


def draw_alpha_history(history: Union[np.ndarray, Mapping[str, np.ndarray]],
                       op_names: Sequence[str], path: str,
                       edge_labels: Optional[Sequence[str]] = None,
                       none_competes: bool = False, name: Optional[str] = None) -> str:
  """Draws op weights during search to ``path`` (PNG or PDF by extension), written atomically.

  One row per cell type, two heatmaps per row: on the left the final epoch's weights (edges x
  ops); on the right, for each edge, the weight over epochs of the op that wins the edge at the
  final epoch, ``argmax_{o != none} w[-1, e, o]`` (the op DARTS' discretization keeps; all ops
  compete if there is no ``none`` or ``none_competes``).

  Args:
    history: op weights (e.g. the softmax of alpha) of shape ``[epochs, edges, ops]``, or a
      mapping from cell type (``"normal"``, ``"reduce"``) to such arrays.
    op_names: names of the ops along the last axis, e.g. ``dnas.ops.DARTS.ops``.
    path: the file to write, ending in ``.png`` or ``.pdf``.
    edge_labels: optional names of the edges (same count for every cell type);
      ``"edge i"`` by default.
    none_competes: ``none`` can win an edge (NAS-Bench-201's discretization keeps the argmax
      over every op).
    name: the run's name, shown in the titles.

  The colour scale of each heatmap spans the weights it shows (a smoke run's 0.12-0.14 shows
  as much contrast as a finished search's 0-1); the colour bars give the values. Epoch ticks
  are whole epochs.

  Returns:
    ``path``.
  """
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fmt = _format(path)
  op_names = [str(o) for o in op_names]
  items = history.items() if isinstance(history, Mapping) else [("alpha", history)]
  cells = [(str(k), _check_history(str(k), v, len(op_names))) for k, v in items]
  if not cells:
    raise ValueError("alpha history: no cell types to draw")
  candidates = [i for i, o in enumerate(op_names) if o != "none" or none_competes]
  candidates = candidates or list(range(len(op_names)))
  max_edges = max(h.shape[1] for _, h in cells)
  height = max(2.8, 0.32 * max_edges + 1.6)
  fig = _new_figure(13.0, height * len(cells))
  axes = fig.subplots(len(cells), 2, squeeze=False)
  for (cell, h), (ax_final, ax_time) in zip(cells, axes):
    epochs, edges, _ = h.shape
    if edge_labels is not None and len(edge_labels) != edges:
      raise ValueError(f"alpha history {cell!r}: {edges} edges but {len(edge_labels)} "
                       "edge_labels")
    labels = list(edge_labels) if edge_labels is not None else [f"edge {e}" for e in range(edges)]
    final = h[-1]
    prefix = f"{name}, {cell}" if name else cell
    lo, hi = _span(final)
    im = ax_final.imshow(final, aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                         interpolation="nearest")
    ax_final.set_xticks(range(len(op_names)), op_names, rotation=45, ha="right", fontsize=8)
    ax_final.set_yticks(range(edges), labels, fontsize=8)
    ax_final.set_title(f"{prefix}: op weights at epoch {epochs}")
    # Enough decimals to tell the values apart: 2 for a spread of 0.1 or more, 4 for 0.001.
    digits = int(min(6, max(2, np.ceil(-np.log10(max(hi - lo, 1e-6))) + 1)))
    if edges * len(op_names) <= 200:
      for e in range(edges):
        for o in range(len(op_names)):
          ax_final.text(o, e, f"{final[e, o]:.{digits}f}", ha="center", va="center", fontsize=6,
                        color="white" if final[e, o] < (lo + hi) / 2 else "black")
    fig.colorbar(im, ax=ax_final, fraction=0.04)
    best = [candidates[int(np.argmax(final[e, candidates]))] for e in range(edges)]
    track = h[:, np.arange(edges), best].T  # [edges, epochs]
    lo, hi = _span(track)
    im = ax_time.imshow(track, aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                        interpolation="nearest", extent=(0.5, epochs + 0.5, edges - 0.5, -0.5))
    ax_time.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_time.set_yticks(range(edges), [f"{lab}: {op_names[b]}" for lab, b in zip(labels, best)],
                       fontsize=8)
    ax_time.set_xlabel("epoch")
    ax_time.set_title(f"{prefix}: weight of each edge's final strongest op")
    fig.colorbar(im, ax=ax_time, fraction=0.04)
  fig.tight_layout()
  data = _render(fig, fmt)
  io.atomic_write_bytes(path, data)
  return path
