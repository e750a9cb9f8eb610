"""Benchmark tables: architectures with their measured metrics, as immutable numpy data.

A ``Table`` holds one row per architecture: its key string (an NB201 arch string for
NAS-Bench-201), its index in the benchmark, and named float64 metric columns. Built in:

- ``load_nb201(folder)``: NAS-Bench-201 (Dong & Yang, "NAS-Bench-201: Extending the Scope of
  Reproducible Neural Architecture Search", ICLR 2020), the 12-epoch (``hp=12``) accuracies of
  all 15,625 cells joined with their measured latencies on real devices (Lee et al., "HELP",
  NeurIPS 2021; Li et al., "HW-NAS-Bench", ICLR 2021).
- ``load_csv(path)``: a user's table of the same shape (a key column plus numeric columns).

Example::

    table = load_nb201("/data/nasbench")       # or set DNAS_NB201_DIR
    table.query("|nor_conv_3x3~0|+|...|", "cifar10_valid")
    table.column("cifar10_test")[rows]         # vectorised, rows are row positions
"""

from __future__ import annotations

import csv
import io as io_lib
import os
import types
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from dnas import genotypes
from dnas.ops import sets

ENV_VAR = "DNAS_NB201_DIR"
NB201_ACCURACY_FILE = "nb201_hp12.csv"
NB201_LATENCY_FILE = "nb201_latency.csv"


class TableError(ValueError):
  """A missing or malformed table, or a bad query; the message names the file or the key."""


# Canonical form of each node string seen, by (node position, text): a table has few distinct
# nodes (5, 25 and 125 for NB201), so parsing them once makes reading 15,625 rows fast.
_NODE_CACHE: Dict[Tuple[int, str], str] = {}


def canonical_nb201(arch: str, where: str = "arch") -> str:
  """``arch`` as NB201 writes it (edges of a node ordered by source).

  Raises:
    TableError: ``arch`` is not a valid NB201 cell (malformed, or an op outside NB201's op set);
      the message names it and ``where``.
  """
  if isinstance(arch, str):
    parts = arch.split("+")
    done = [_NODE_CACHE.get((i, part)) for i, part in enumerate(parts)]
    if all(d is not None for d in done):
      return "+".join(done)
  try:
    g = genotypes.NB201Genotype.from_arch(arch, where)
  except genotypes.GenotypeError as e:
    raise TableError(f"{where}: {arch!r} is not a valid NAS-Bench-201 cell ({e})") from None
  valid_ops = sets.get("nb201").ops
  bad = [op for op in g.ops if op not in valid_ops]
  if bad:
    raise TableError(f"{where}: {arch!r} is not a valid NAS-Bench-201 cell: op {bad[0]!r} is "
                     f"not one of NB201's ops {list(valid_ops)}")
  nodes = tuple(tuple(sorted(node, key=lambda edge: edge[1])) for node in g.nodes)
  out = genotypes.NB201Genotype(nodes).arch
  for i, (part, node) in enumerate(zip(arch.split("+"), out.split("+"))):
    _NODE_CACHE[(i, part)] = node
  return out


def _frozen(a: np.ndarray) -> np.ndarray:
  a = np.array(a)
  a.flags.writeable = False
  return a


class Table:
  """An immutable benchmark table.

  Attributes:
    name: a short name for messages (``"nb201"``, a file path).
    archs: the key of every row, in file order.
    index: ``[rows]`` int64, the benchmark's index of every row (NB201's ``index`` column; the
      row position when the file has none).
    columns: metric name -> ``[rows]`` float64 array (read-only).
  """

  def __init__(self, name: str, archs: Sequence[str], index: Sequence[int],
               columns: Mapping[str, Sequence[float]], canonical: Optional[Callable] = None):
    """Builds a table; ``canonical`` maps a query key to the stored form (None: identity)."""
    self._name = name
    self._archs = tuple(archs)
    self._index = _frozen(np.asarray(index, np.int64))
    cols = {k: _frozen(np.asarray(v, np.float64)) for k, v in columns.items()}
    n = len(self._archs)
    if self._index.shape != (n,):
      raise TableError(f"{name}: {n} archs but {self._index.shape[0]} index values")
    for k, v in cols.items():
      if v.shape != (n,):
        raise TableError(f"{name}: column {k!r} has {v.shape[0]} values for {n} archs")
    self._columns = types.MappingProxyType(cols)
    self._row_of_arch = {a: i for i, a in enumerate(self._archs)}
    if len(self._row_of_arch) != n:
      raise TableError(f"{name}: an arch is listed twice")
    self._row_of_index = {int(v): i for i, v in enumerate(self._index)}
    if len(self._row_of_index) != n:
      raise TableError(f"{name}: an index value is listed twice")
    self._canonical = canonical

  name = property(lambda self: self._name)
  archs = property(lambda self: self._archs)
  index = property(lambda self: self._index)
  columns = property(lambda self: self._columns)

  def __len__(self) -> int:
    return len(self._archs)

  def __repr__(self) -> str:
    return f"Table({self._name!r}, rows={len(self)}, columns={list(self._columns)})"

  @property
  def column_names(self) -> Tuple[str, ...]:
    return tuple(self._columns)

  def column(self, name: str) -> np.ndarray:
    """The ``[rows]`` float64 column ``name``; index it by row positions (``row_of``)."""
    try:
      return self._columns[name]
    except (KeyError, TypeError):
      raise TableError(f"{self._name}: unknown column {name!r}; columns: "
                       f"{', '.join(self._columns)}") from None

  def index_of(self, arch: str) -> int:
    """The benchmark index of ``arch`` (any edge order within a node for NB201)."""
    return int(self._index[self.row_of(arch)])

  def row_of(self, key: Union[str, int, Any]) -> int:
    """The row position of ``key``: an arch string, a benchmark index or a genotype."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
      try:
        return self._row_of_index[int(key)]
      except KeyError:
        raise TableError(f"{self._name}: no row has index {int(key)} (indices "
                         f"{int(self._index.min())}..{int(self._index.max())})") from None
    if hasattr(key, "arch") and not isinstance(key, str):
      key = key.arch
    if not isinstance(key, str):
      raise TableError(f"{self._name}: a query key must be an arch string, an index or a "
                       f"genotype, got {type(key).__name__}")
    row = self._row_of_arch.get(key)
    if row is None and self._canonical is not None:
      row = self._row_of_arch.get(self._canonical(key, f"{self._name}: query"))
    if row is None:
      raise TableError(f"{self._name}: arch {key!r} is not in the table")
    return row

  def query(self, key: Union[str, int, Any], column: str) -> float:
    """The value of ``column`` for ``key`` (an arch string, a benchmark index or a genotype)."""
    values = self.column(column)
    return float(values[self.row_of(key)])


# --- CSV reading -----------------------------------------------------------------------------


def _read_csv(path: str, key: str, canonical: Optional[Callable]
              ) -> Tuple[list, Optional[list], Dict[str, list], list]:
  """Reads ``path``: (keys, index or None, columns, line numbers), every error naming the file."""
  try:
    f = open(path, newline="", encoding="utf-8")
  except FileNotFoundError:
    raise TableError(f"table file not found: {path}") from None
  except OSError as e:
    raise TableError(f"{path}: cannot be read ({e.strerror or e})") from None
  with f:
    reader = csv.reader(f)
    try:
      header = next(reader, None)
      if header is None:
        raise TableError(f"{path}: the file is empty; expected a header with a {key!r} column")
      header = [h.strip() for h in header]
      if key not in header:
        raise TableError(f"{path}: line 1: no {key!r} column; columns: {header}")
      dup = sorted({h for h in header if header.count(h) > 1})
      if dup:
        raise TableError(f"{path}: line 1: column(s) {dup} appear twice")
      k_col = header.index(key)
      i_col = header.index("index") if "index" in header and key != "index" else None
      metrics = [(j, h) for j, h in enumerate(header) if j not in (k_col, i_col)]
      keys, index, lines = [], [] if i_col is not None else None, []
      cols = {h: [] for _, h in metrics}
      seen: Dict[str, int] = {}
      for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
          continue
        if len(row) != len(header):
          raise TableError(f"{path}: line {line}: {len(row)} fields, the header has "
                           f"{len(header)}")
        k = row[k_col].strip()
        if canonical is not None:
          k = canonical(k, f"{path}: line {line}: column {key!r}")
        if k in seen:
          raise TableError(f"{path}: arch {k} is listed twice, on lines {seen[k]} and {line}")
        seen[k] = line
        keys.append(k)
        lines.append(line)
        if i_col is not None:
          try:
            index.append(int(row[i_col]))
          except ValueError:
            raise TableError(f"{path}: line {line}: column 'index': {row[i_col]!r} is not an "
                             f"integer") from None
        for j, h in metrics:
          try:
            cols[h].append(float(row[j]))
          except ValueError:
            raise TableError(f"{path}: line {line}: column {h!r}: {row[j]!r} is not a "
                             f"number") from None
    except csv.Error as e:
      raise TableError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    except UnicodeDecodeError as e:
      raise TableError(f"{path}: not UTF-8 text ({e})") from None
  if not keys:
    raise TableError(f"{path}: no data rows")
  return keys, index, cols, lines


def load_csv(path: str, key: str = "arch", nb201: bool = True, name: Optional[str] = None
             ) -> Table:
  """Reads a user's table: a ``key`` column, an optional ``index`` column, numeric columns.

  Args:
    path: the CSV file (a header line, then one row per architecture).
    key: the column holding each row's architecture.
    nb201: the keys are NAS-Bench-201 arch strings; each is checked and stored in NB201's form.
    name: the table's name in messages (default: ``path``).

  Returns:
    A ``Table`` whose rows follow the file; without an ``index`` column, index = row position.

  Raises:
    TableError: a missing file; a missing key column; a row with a non-numeric value (naming the
      file, line and column); an arch listed twice (naming both lines); an invalid NB201 arch.
  """
  canonical = canonical_nb201 if nb201 else None
  keys, index, cols, _ = _read_csv(path, key, canonical)
  if index is not None:
    seen: Dict[int, int] = {}
    for row, v in enumerate(index):
      if v in seen:
        raise TableError(f"{path}: index {v} is listed twice, for {keys[seen[v]]} and "
                         f"{keys[row]}")
      seen[v] = row
  return Table(name or path, keys, index if index is not None else range(len(keys)), cols,
               canonical)


def _nb201_folder(folder: Optional[str]) -> str:
  folder = folder if folder is not None else os.environ.get(ENV_VAR)
  if not folder:
    raise TableError(f"NAS-Bench-201 tables: no folder given; pass folder= or set {ENV_VAR} to "
                     f"the folder holding {NB201_ACCURACY_FILE} and {NB201_LATENCY_FILE}")
  return folder


def load_nb201(folder: Optional[str] = None, latency: bool = True) -> Table:
  """NAS-Bench-201's 15,625 cells: 12-epoch accuracies joined with device latencies.

  The accuracies are NAS-Bench-201's ``hp=12`` schedule (Dong & Yang, ICLR 2020, section 5:
  searches use the 12-epoch ``cifar10_valid`` and report the final test accuracy); latencies in
  ms per device (``<device>_ms`` columns) are from HELP (Lee et al., NeurIPS 2021) and
  HW-NAS-Bench (Li et al., ICLR 2021). Rows are in NAS-Bench-201's index order.

  Args:
    folder: the folder holding ``nb201_hp12.csv`` and ``nb201_latency.csv``; default: the
      ``DNAS_NB201_DIR`` environment variable.
    latency: join the latency columns too.

  Returns:
    A ``Table`` named ``"nb201"``.

  Raises:
    TableError: a file is missing (naming its path and ``DNAS_NB201_DIR``), malformed, or the
      two files do not list the same cells.
  """
  folder = _nb201_folder(folder)
  paths = [os.path.join(folder, NB201_ACCURACY_FILE)]
  if latency:
    paths.append(os.path.join(folder, NB201_LATENCY_FILE))
  for p in paths:
    if not os.path.isfile(p):
      raise TableError(f"NAS-Bench-201 table not found: {p} (pass folder= or set {ENV_VAR})")
  keys, index, cols, _ = _read_csv(paths[0], "arch", canonical_nb201)
  if index is None:
    raise TableError(f"{paths[0]}: line 1: no 'index' column")
  if latency:
    lat_keys, lat_index, lat_cols, lat_lines = _read_csv(paths[1], "arch", canonical_nb201)
    clash = sorted(set(cols) & set(lat_cols))
    if clash:
      raise TableError(f"{paths[1]}: column(s) {clash} are in {paths[0]} too")
    where = {k: i for i, k in enumerate(lat_keys)}
    missing = [k for k in keys if k not in where]
    if missing or len(lat_keys) != len(keys):
      extra = sorted(set(lat_keys) - set(keys))
      raise TableError(f"{paths[0]} and {paths[1]} list different cells: {len(missing)} only "
                       f"in the first (e.g. {missing[:1]}), {len(extra)} only in the second "
                       f"(e.g. {extra[:1]})")
    order = np.array([where[k] for k in keys])
    if lat_index is not None:
      bad = np.flatnonzero(np.asarray(lat_index)[order] != np.asarray(index))
      if bad.size:
        i = int(bad[0])
        raise TableError(f"{paths[1]}: line {lat_lines[order[i]]}: index {lat_index[order[i]]} "
                         f"of {keys[i]} differs from its index {index[i]} in {paths[0]}")
    for k, v in lat_cols.items():
      cols[k] = np.asarray(v, np.float64)[order]
  return Table("nb201", keys, index, cols, canonical_nb201)


def write_csv(table: Table, path: str, key: str = "arch") -> None:
  """Writes ``table`` as ``load_csv`` reads it (``index``, ``key``, its columns), atomically."""
  from dnas import io  # pylint: disable=g-import-not-at-top
  buf = io_lib.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  names = list(table.column_names)
  w.writerow(["index", key] + names)
  cols = [table.column(n) for n in names]
  for r, arch in enumerate(table.archs):
    w.writerow([int(table.index[r]), arch] + [repr(float(c[r])) for c in cols])
  io.atomic_write_text(path, buf.getvalue())


def join(table: Table, other: Table, name: Optional[str] = None) -> Table:
  """``table`` with ``other``'s columns added, matched by arch (both keyed the same way).

  ``other`` must list every arch of ``table`` (extra rows are ignored) and share no column
  with it, so nothing is silently filled or overwritten.

  Raises:
    TableError: a shared column, or archs of ``table`` that ``other`` lacks (naming how many
      and one of them).
  """
  clash = sorted(set(table.column_names) & set(other.column_names))
  if clash:
    raise TableError(f"join: {other.name} and {table.name} both have column(s) {clash}")
  listed = set(other.archs)
  missing = [a for a in table.archs if a not in listed]
  if missing:
    raise TableError(f"join: {other.name} lacks {len(missing)} of the {len(table)} archs of "
                     f"{table.name} (e.g. {missing[0]}); it must list every one (predict the "
                     f"rest, e.g. dnas.latency.predict_table)")
  rows = np.array([other.row_of(a) for a in table.archs])
  cols = dict(table.columns)
  cols.update({k: np.asarray(v)[rows] for k, v in other.columns.items()})
  return Table(name or table.name, table.archs, table.index, cols, table._canonical)  # pylint: disable=protected-access


# --- NATS-Bench / NAS-Bench-201 API -----------------------------------------------------------

# The shared table's columns, as NATS-Bench's topology API names them: (dataset, key of
# ``get_more_info``). ``cifar10-valid`` trains on the train split and evaluates on x-valid;
# ``cifar10`` trains on train + valid and tests on the original test set; CIFAR-100 and
# ImageNet16-120 report their test set's x-valid and x-test halves (nats_bench
# ``api_topology.py``, ``get_more_info``).
NATS_COLUMNS = {
    "cifar10_valid": ("cifar10-valid", "valid-accuracy"),
    "cifar10_test": ("cifar10", "test-accuracy"),
    "cifar100_valid": ("cifar100", "valid-accuracy"),
    "cifar100_test": ("cifar100", "test-accuracy"),
    "imagenet16_valid": ("ImageNet16-120", "valid-accuracy"),
    "imagenet16_test": ("ImageNet16-120", "test-accuracy"),
}


def from_nats_bench(api: Any, hp: str = "12", columns: Optional[Sequence[str]] = None,
                    costs: bool = False, name: Optional[str] = None) -> Table:
  """A ``Table`` converted from the official NAS-Bench-201 / NATS-Bench (topology) API.

  For users who have the benchmark files: ``api = nats_bench.create(path, "tss",
  fast_mode=True)`` (or ``nas_201_api.NASBench201API(path)``), then ``from_nats_bench(api,
  hp="200")`` gives the 200-epoch accuracies the shared 12-epoch table lacks, with the same
  column names (``NATS_COLUMNS``), averaged over the training seeds (``is_random=False``).

  Args:
    api: the API object: ``len(api)``, ``api.arch(i)`` (arch string), ``api.get_more_info(i,
      dataset, hp=..., is_random=False)`` and, for ``costs``, ``api.get_cost_info(i, dataset,
      hp=...)``.
    hp: the training schedule, ``"12"`` or ``"200"``.
    columns: which of ``NATS_COLUMNS`` to read (default all).
    costs: also read CIFAR-10's ``get_cost_info`` entries, as ``cifar10_<key>`` columns (the
      API's units: FLOPs and parameters in millions, latency in seconds).
    name: the table's name (default ``nats_hp<hp>``).

  Returns:
    A ``Table`` in the API's index order, keyed by NB201 arch strings.

  Raises:
    TableError: an unknown column, or an entry the API does not return (naming the index,
      dataset and key).
  """
  columns = list(NATS_COLUMNS) if columns is None else list(columns)
  unknown = [c for c in columns if c not in NATS_COLUMNS]
  if unknown:
    raise TableError(f"from_nats_bench: unknown column(s) {unknown}; columns: "
                     f"{', '.join(NATS_COLUMNS)}")
  n = len(api)
  archs = [canonical_nb201(api.arch(i), where=f"api.arch({i})") for i in range(n)]
  out: Dict[str, list] = {c: [] for c in columns}
  cost_keys: Optional[list] = None
  for i in range(n):
    infos: Dict[str, Any] = {}
    for c in columns:
      dataset, key = NATS_COLUMNS[c]
      if dataset not in infos:
        infos[dataset] = api.get_more_info(i, dataset, hp=hp, is_random=False)
      if key not in infos[dataset] or infos[dataset][key] is None:
        raise TableError(f"from_nats_bench: index {i}: get_more_info(dataset={dataset!r}, "
                         f"hp={hp!r}) has no {key!r} (keys: {sorted(infos[dataset])})")
      out[c].append(float(infos[dataset][key]))
    if costs:
      info = api.get_cost_info(i, "cifar10", hp=hp)
      keys = sorted(k for k, v in info.items() if isinstance(v, (int, float)))
      if cost_keys is None:
        cost_keys = keys
        out.update({f"cifar10_{k}": [] for k in keys})
      elif keys != cost_keys:
        raise TableError(f"from_nats_bench: index {i}: get_cost_info gives {keys}, index 0 "
                         f"gave {cost_keys}")
      for k in keys:
        out[f"cifar10_{k}"].append(float(info[k]))
  return Table(name or f"nats_hp{hp}", archs, range(n), out, canonical_nb201)


# --- Registry --------------------------------------------------------------------------------

_TABLES: Dict[str, Callable[..., Table]] = {"nb201": load_nb201}


class UnknownTableError(KeyError):
  """A table name that is not registered."""

  def __str__(self):
    return str(self.args[0])


def register_table(name: str, loader: Callable[..., Table], *, overwrite: bool = False
                   ) -> Callable[..., Table]:
  """Registers ``loader(**kw) -> Table`` under ``name``; returns ``loader``.

  Example::

      register_table("my_phone", lambda path: load_csv(path, name="my_phone"))
      get_table("my_phone", path="latency.csv")

  Raises:
    ValueError: ``name`` is taken and ``overwrite`` is False.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"a table name must be a non-empty string, got {name!r}")
  if not callable(loader):
    raise TypeError(f"table {name!r}: the loader must be callable, got {type(loader).__name__}")
  if name in _TABLES and not overwrite:
    raise ValueError(f"table {name!r} is already registered; registered tables: "
                     f"{sorted(_TABLES)}. Pass overwrite=True to replace it.")
  _TABLES[name] = loader
  return loader


def unregister_table(name: str) -> None:
  """Removes a registered table (mainly for tests)."""
  _entry(name)
  del _TABLES[name]


def _entry(name: str) -> Callable[..., Table]:
  try:
    return _TABLES[name]
  except (KeyError, TypeError):
    raise UnknownTableError(f"unknown table {name!r}; registered tables: "
                            f"{', '.join(sorted(_TABLES))}") from None


def get_table(name: str, **kwargs: Any) -> Table:
  """Loads the table registered as ``name``, passing ``kwargs`` to its loader."""
  table = _entry(name)(**kwargs)
  if not isinstance(table, Table):
    raise TypeError(f"table {name!r}: its loader returned {type(table).__name__}, not a Table")
  return table


def table_names() -> Iterable[str]:
  """The registered table names, sorted."""
  return sorted(_TABLES)
