"""Latency measured on the local device: timing, resumable CSVs, the additive model's
predictions, joining a measured column to the benchmark and searching on it."""

import json
import os
import time

import jax
import numpy as np
import pytest

from dnas import benchmarks, blackbox, cli, latency

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def _arch(codes):
  o = [OPS[c] for c in codes]
  return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


def _all_archs():
  return [_arch(c) for c in blackbox.nb201_space().all_codes()]


def test_time_fn_reports_milliseconds_of_each_call():
  calls = []

  def fn():
    calls.append(1)
    time.sleep(0.004)
    return np.zeros(())

  out = latency.time_fn(fn, repeats=5, warmup=2)
  assert len(calls) == 7
  assert 4.0 <= out["p10_ms"] <= out["median_ms"] <= out["p90_ms"] < 100.0
  with pytest.raises(ValueError, match="repeats must be a positive int"):
    latency.time_fn(fn, repeats=0)


@pytest.mark.usefixtures("fast_compile")
def test_measure_times_a_compiled_network():
  arch = _arch([3, 1, 2, 4, 0, 3])
  out = latency.measure(arch, batch_size=2, channels=4, cells_per_stage=1, repeats=3, warmup=1)
  assert out["arch"] == arch and out["batch_size"] == 2 and out["device"] == str(jax.devices()[0])
  assert 0 < out["p10_ms"] <= out["median_ms"] <= out["p90_ms"] and out["compile_s"] > 0


def test_measure_csv_resumes_after_a_crash(tmp_path):
  path = str(tmp_path / "lat.csv")
  archs = [_arch([i % 5, (i + 1) % 5, 2, 3, 4, i % 5]) for i in range(5)]
  calls = []

  def crashing(arch):
    if len(calls) == 3:
      raise KeyboardInterrupt  # killed while measuring the fourth cell
    calls.append(arch)
    return 10.0 + len(calls)

  with pytest.raises(KeyboardInterrupt):
    latency.measure_csv(archs, path, column="local_ms", measure_fn=crashing)
  kept = benchmarks.load_csv(path)  # a complete file of the three measured cells
  assert list(kept.archs) == archs[:3] and kept.column("local_ms").tolist() == [11, 12, 13]
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
  calls.clear()
  calls.extend(["x"] * 10)  # offsets the values so the second run's are told apart
  table = latency.measure_csv(archs, path, column="local_ms",
                              measure_fn=lambda a: calls.append(a) or 20.0 + len(calls))
  assert calls[10:] == archs[3:]  # only the two missing cells were measured
  assert table.column("local_ms").tolist() == [11, 12, 13, 31, 32]
  with pytest.raises(benchmarks.TableError, match=r"lat.csv: holds columns \['local_ms'\], "
                                                  r"not 'other_ms'"):
    latency.measure_csv(archs, path, column="other_ms", measure_fn=lambda a: 1.0)


def test_predict_table_recovers_an_additive_latency_exactly(tmp_path):
  rng = np.random.default_rng(0)
  per = rng.uniform(0.0, 3.0, size=(6, 5))
  per[:, 0] = 0.0
  codes = blackbox.nb201_space().all_codes()
  truth = 2.5 + per[np.arange(6)[None], codes].sum(axis=1)
  sample = rng.choice(len(codes), 60, replace=False)
  measured = benchmarks.Table("measured", [_arch(codes[i]) for i in sample], range(60),
                              {"local_ms": truth[sample]}, benchmarks.canonical_nb201)
  archs = [_arch(c) for c in codes]
  table, report = latency.predict_table(measured, "local_ms", archs)
  assert len(table) == 15625 and report["r2"] == pytest.approx(1.0)
  np.testing.assert_allclose(table.column("local_ms"), truth, rtol=1e-5)
  np.testing.assert_allclose(report["costs"], per, atol=1e-5)
  assert report["intercept"] == pytest.approx(2.5)
  # Written and read back as a user's table.
  benchmarks.write_csv(table, str(tmp_path / "pred.csv"))
  back = benchmarks.load_csv(str(tmp_path / "pred.csv"))
  assert back.archs == table.archs
  np.testing.assert_array_equal(back.column("local_ms"), table.column("local_ms"))


def test_join_adds_columns_by_arch_and_refuses_gaps_and_clashes():
  archs = [_arch([i, 0, 1, 2, 3, 4]) for i in range(5)]
  a = benchmarks.Table("a", archs, range(5), {"acc": np.arange(5.0)}, benchmarks.canonical_nb201)
  order = [3, 1, 4, 0, 2]
  b = benchmarks.Table("b", [archs[i] for i in order] + [_arch([0] * 6)], range(6),
                       {"ms": [10.0 * i for i in order] + [99.0]}, benchmarks.canonical_nb201)
  j = benchmarks.join(a, b)
  assert j.column("ms").tolist() == [0, 10, 20, 30, 40] and j.column("acc").tolist() == [0, 1, 2,
                                                                                          3, 4]
  with pytest.raises(benchmarks.TableError, match="both have column"):
    benchmarks.join(a, a)
  short = benchmarks.Table("short", archs[:3], range(3), {"ms": [1.0, 2.0, 3.0]})
  with pytest.raises(benchmarks.TableError, match="short lacks 2 of the 5 archs"):
    benchmarks.join(a, short)


def test_latency_evaluator_measures_each_cell_once(monkeypatch):
  calls = []

  def fake(arch, **kw):
    calls.append((arch, kw["batch_size"]))
    return {"median_ms": 7.0}

  monkeypatch.setattr(latency, "measure", fake)
  evaluate = blackbox.get_evaluator("latency", batch_size=4)
  space = blackbox.nb201_space()
  c = np.array([3, 1, 2, 4, 0, 3], np.int32)
  assert evaluate(c) == -7.0 and evaluate(c) == -7.0
  assert calls == [(space.decode(c), 4)]


def test_explore_searches_on_a_joined_local_column(tmp_path, capsys):
  nb = benchmarks.load_nb201(NB201_DIR, latency=False)
  codes = np.array([blackbox.nb201_space().encode(a) for a in nb.archs])
  ms = 1.0 + (codes == 3).sum(axis=1) * 2.0 + (codes == 2).sum(axis=1)
  local = benchmarks.Table("local", nb.archs, nb.index, {"local_cpu_b1_ms": ms})
  path = str(tmp_path / "local.csv")
  benchmarks.write_csv(local, path)
  code = cli.run(["dnas", "explore", "--strategy", "random_search", "--benchmark", NB201_DIR,
                  "--table", path, "--objective", "latency:local_cpu_b1_ms",
                  "--constraint", "local_cpu_b1_ms<=3", "--runs", "2", "--budget", "30",
                  "--json"])
  assert code == 0
  r = json.loads(capsys.readouterr().out)
  assert all(run["local_cpu_b1_ms"] <= 3 for run in r["runs"] if run["arch"])
  assert r["objectives"][0]["column"] == "local_cpu_b1_ms"
  with pytest.raises(benchmarks.TableError, match="lacks"):
    benchmarks.write_csv(benchmarks.Table("few", nb.archs[:10], range(10),
                                          {"x_ms": np.ones(10)}), path)
    cli.run(["dnas", "explore", "--strategy", "random_search", "--benchmark", NB201_DIR,
             "--table", path, "--runs", "1", "--budget", "5"])
