"""Benchmark tables: NAS-Bench-201 loaded as data, user CSVs, the table registry.

Every value is checked against the CSV files read with the ``csv`` module directly.
"""

import csv
import os

import numpy as np
import pytest

from dnas import benchmarks, genotypes
from dnas.benchmarks import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))
# From the data folder's README.md.
README_BEST_VALID = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                     "|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
README_BEST_TEST = 89.16


def _csv_rows(name):
  path = os.path.join(NB201_DIR, name)
  assert os.path.exists(path), f"NAS-Bench-201 data missing at {path} (set DNAS_NB201_DIR)"
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def table():
  return benchmarks.load_nb201(NB201_DIR)


@pytest.fixture(scope="module")
def raw():
  return _csv_rows("nb201_hp12.csv"), _csv_rows("nb201_latency.csv")


def test_nb201_columns_equal_the_csv_files(table, raw):
  acc, lat = raw
  assert len(table) == len(acc) == 15625
  names = [c for c in acc[0] if c not in ("index", "arch")]
  names += [c for c in lat[0] if c not in ("index", "arch")]
  assert table.column_names == tuple(names)
  assert all(c.endswith("_ms") for c in names[6:])
  assert table.archs == tuple(r["arch"] for r in acc)
  np.testing.assert_array_equal(table.index, [int(r["index"]) for r in acc])
  lat_by_arch = {r["arch"]: r for r in lat}
  for name in names:
    rows = acc if name in acc[0] else [lat_by_arch[r["arch"]] for r in acc]
    np.testing.assert_array_equal(table.column(name), [float(r[name]) for r in rows],
                                  err_msg=name)
    assert table.column(name).dtype == np.float64


def test_best_valid_arch_is_the_one_in_the_readme(table):
  valid = table.column("cifar10_valid")
  assert table.archs[int(np.argmax(valid))] == README_BEST_VALID
  assert table.column("cifar10_test").max() == README_BEST_TEST


def test_query_by_index_arch_and_genotype_agree_with_csv(table, raw):
  acc, lat = raw
  for i in (0, 1, 4321, 9999, 15624):
    arch = acc[i]["arch"]
    g = genotypes.NB201Genotype.from_arch(arch)
    idx = int(acc[i]["index"])
    assert table.index_of(arch) == idx
    for col in ("cifar10_valid", "cifar100_test", "imagenet16_valid"):
      want = float(acc[i][col])
      assert table.query(idx, col) == table.query(arch, col) == table.query(g, col) == want
    assert lat[i]["arch"] == arch
    assert table.query(arch, "pixel3_ms") == float(lat[i]["pixel3_ms"])
  rows = np.array([3, 17, 15000])
  np.testing.assert_array_equal(table.column("cifar10_test")[rows],
                                [float(acc[r]["cifar10_test"]) for r in rows])


def test_query_accepts_other_edge_orders(table):
  swapped = ("|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+"
             "|nor_conv_3x3~2|skip_connect~0|nor_conv_1x1~1|")
  assert table.index_of(swapped) == table.index_of(README_BEST_VALID)


def test_table_is_immutable(table):
  with pytest.raises(ValueError):
    table.column("cifar10_valid")[0] = 0.0
  with pytest.raises(TypeError):
    table.columns["x"] = np.zeros(3)
  with pytest.raises(AttributeError):
    table.archs = ()


def test_table_errors_name_the_bad_thing(table, tmp_path, monkeypatch):
  with pytest.raises(benchmarks.TableError, match="cifar10_valid, cifar10_test"):
    table.column("cifar10_vaild")
  with pytest.raises(benchmarks.TableError, match="no row has index 15625"):
    table.query(15625, "cifar10_valid")
  with pytest.raises(benchmarks.TableError, match="sep_conv_3x3"):
    table.query("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "cifar10_valid")
  with pytest.raises(benchmarks.TableError, match="not a valid NAS-Bench-201 cell"):
    table.index_of("|nor_conv_3x3~0|+|nor_conv_3x3~0|")  # node 2 lacks its edge from 1
  missing = os.path.join(str(tmp_path), "nb201_hp12.csv")
  with pytest.raises(benchmarks.TableError, match=f"{missing}.*DNAS_NB201_DIR"):
    benchmarks.load_nb201(str(tmp_path))
  monkeypatch.setenv("DNAS_NB201_DIR", str(tmp_path))
  with pytest.raises(benchmarks.TableError, match=missing):
    benchmarks.load_nb201()
  monkeypatch.delenv("DNAS_NB201_DIR")
  with pytest.raises(benchmarks.TableError, match="DNAS_NB201_DIR"):
    benchmarks.load_nb201()


# --- User tables -----------------------------------------------------------------------------

A0 = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
A1 = "|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def _write(tmp_path, text, name="user.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_load_csv_reads_a_user_latency_table(tmp_path):
  path = _write(tmp_path, f"arch,my_phone_ms,energy_mj\n{A0},1.5,3\n\n{A1},2.25,4e-1\n")
  t = benchmarks.load_csv(path)
  assert t.archs == (A0, A1)
  np.testing.assert_array_equal(t.index, [0, 1])
  assert t.column_names == ("my_phone_ms", "energy_mj")
  assert t.query(A1, "energy_mj") == 0.4 and t.query(1, "my_phone_ms") == 2.25
  t2 = benchmarks.load_csv(_write(tmp_path, f"index,arch,ms\n7,{A1},2\n3,{A0},1\n", "i.csv"))
  assert t2.query(3, "ms") == 1.0 and t2.index_of(A1) == 7


@pytest.mark.parametrize("text,pattern", [
    (f"arch,ms\n{A0},1\n{A1},fast\n", r"user.csv: line 3: column 'ms': 'fast' is not a number"),
    (f"arch,ms\n{A0},1\n{A1},2\n{A0},3\n", r"user.csv: arch .* listed twice, on lines 2 and 4"),
    ("arch,ms\n|conv~0|+|none~0|,1\n", r"user.csv: line 2: column 'arch': '\|conv~0\|\+\|none~0"
                                       r"\|' is not a valid NAS-Bench-201 cell"),
    (f"name,ms\n{A0},1\n", r"user.csv: line 1: no 'arch' column"),
    (f"arch,ms\n{A0},1,2\n", r"user.csv: line 2: 3 fields, the header has 2"),
    ("", r"user.csv: the file is empty"),
    ("arch,ms\n", r"user.csv: no data rows"),
    (f"index,arch,ms\n1,{A0},1\n1,{A1},2\n", r"user.csv: index 1 is listed twice"),
])
def test_load_csv_errors_name_file_line_and_column(tmp_path, text, pattern):
  with pytest.raises(benchmarks.TableError, match=pattern):
    benchmarks.load_csv(_write(tmp_path, text))


def test_load_csv_missing_file_and_free_keys(tmp_path):
  with pytest.raises(benchmarks.TableError, match="table file not found: .*nope.csv"):
    benchmarks.load_csv(str(tmp_path / "nope.csv"))
  t = benchmarks.load_csv(_write(tmp_path, "model,acc\nresnet,0.9\nvgg,0.8\n"), key="model",
                          nb201=False)
  assert t.query("vgg", "acc") == 0.8


def test_table_registry(tmp_path):
  path = _write(tmp_path, f"arch,ms\n{A0},1\n")
  benchmarks.register_table("my_device", lambda path: benchmarks.load_csv(path, name="mine"))
  try:
    assert benchmarks.get_table("my_device", path=path).query(A0, "ms") == 1.0
    assert "nb201" in benchmarks.table_names() and "my_device" in benchmarks.table_names()
    with pytest.raises(ValueError, match="already registered"):
      benchmarks.register_table("my_device", benchmarks.load_csv)
  finally:
    benchmarks.unregister_table("my_device")
  with pytest.raises(benchmarks.UnknownTableError, match="unknown table 'my_device'.*nb201"):
    benchmarks.get_table("my_device")
  assert len(benchmarks.get_table("nb201", folder=NB201_DIR, latency=False)) == 15625
  assert tables.load_nb201 is tables._TABLES["nb201"]


def test_nb201_joins_latency_by_arch_not_by_line(tmp_path, raw):
  acc, lat = raw
  def write(name, rows):
    with open(tmp_path / name, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
  write("nb201_hp12.csv", acc[:3])
  write("nb201_latency.csv", lat[:3][::-1])
  t = benchmarks.load_nb201(str(tmp_path))
  for i in range(3):
    assert t.query(acc[i]["arch"], "fpga_ms") == float(lat[i]["fpga_ms"])
  write("nb201_latency.csv", lat[1:4])
  with pytest.raises(benchmarks.TableError, match="list different cells: 1 only in the first"):
    benchmarks.load_nb201(str(tmp_path))


class _StandInNatsAPI:
  """Objects shaped as nats_bench's topology API returns them (``api_topology.py``:
  ``get_more_info`` keys per dataset, ``get_cost_info``), over a few cells of the real table."""

  def __init__(self, table, rows):
    self.table, self.rows, self.calls = table, rows, []

  def __len__(self):
    return len(self.rows)

  def arch(self, i):
    return self.table.archs[self.rows[i]]

  def get_more_info(self, i, dataset, iepoch=None, hp="12", is_random=True):
    self.calls.append((i, dataset, hp, is_random))
    col = lambda c: self.table.column(c)[self.rows[i]]
    info = {"train-loss": 1.0, "train-accuracy": 50.0}
    if dataset == "cifar10-valid":
      info.update({"valid-accuracy": col("cifar10_valid"), "test-accuracy": -1.0})
    elif dataset == "cifar10":
      info.update({"test-accuracy": col("cifar10_test")})
    else:
      prefix = {"cifar100": "cifar100", "ImageNet16-120": "imagenet16"}[dataset]
      info.update({"valid-accuracy": col(prefix + "_valid"),
                   "test-accuracy": col(prefix + "_test"), "valtest-accuracy": -1.0})
    return info

  def get_cost_info(self, i, dataset, hp="12"):
    return {"flops": 10.0 + i, "params": 0.5 * i, "latency": 0.01, "T-train@epoch": None}


def test_from_nats_bench_reads_the_apis_entries_into_the_shared_columns(table):
  nb201 = table
  rows = [0, 7, 13714, 15624]
  api = _StandInNatsAPI(nb201, rows)
  t = tables.from_nats_bench(api, hp="200", costs=True)
  assert t.name == "nats_hp200" and len(t) == 4
  assert list(t.archs) == [nb201.archs[r] for r in rows]
  for c in tables.NATS_COLUMNS:
    np.testing.assert_array_equal(t.column(c), nb201.column(c)[rows])
  np.testing.assert_array_equal(t.column("cifar10_flops"), [10.0, 11.0, 12.0, 13.0])
  assert "cifar10_T-train@epoch" not in t.column_names   # not a number: left out
  assert all(hp == "200" and is_random is False for _, _, hp, is_random in api.calls)
  assert t.query(nb201.archs[13714], "cifar10_test") == nb201.column("cifar10_test")[13714]
  with pytest.raises(tables.TableError, match=r"unknown column\(s\) \['cifar10_train'\]"):
    tables.from_nats_bench(api, columns=["cifar10_train"])
  broken = _StandInNatsAPI(nb201, rows)
  broken.get_more_info = lambda i, d, **k: {"train-loss": 1.0}
  with pytest.raises(tables.TableError, match="index 0: .*'cifar10-valid'.*'valid-accuracy'"):
    tables.from_nats_bench(broken, columns=["cifar10_valid"])
