#!/usr/bin/env bash
# Every benchmark configuration in one go, one JSON line each (progress lines start with #).
# Usage: bash benchmarks/run_all.sh [cpu|gpu [PART ...]] > results.jsonl
# `cpu` (default) sizes the runs for a small CPU box: paper-size searches compile only.
# `gpu` runs parts 1 to 5 (each meant to fit 10 minutes on one H100); name parts to run only
# those. H100 (2026-11-24): a cold paper-size search step took over 4 minutes to initialise,
# trace and compile with XLA's autotuner (benchmarks/RESULTS.md).
# $PYTHON (default .venv/bin/python), $DNAS_CIFAR10 (the CIFAR-10 archive), $BENCH_TIMEOUT (s,
# per run, default 900) and $BENCH_LOGS (a folder for each run's stderr) are read.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODE=${1:-cpu}
CACHE=$(mktemp -d)
S="$PY benchmarks/search_step.py"
LOGS=${BENCH_LOGS:-}
N=0
run() {
  N=$((N + 1)); echo "# $(date -u +%T) $*" >&2
  local err=/dev/null
  [ -n "$LOGS" ] && err=$LOGS/run$N.err
  timeout "${BENCH_TIMEOUT:-900}" "$@" 2>"$err" | grep '^{'
}
if [ "$MODE" = cpu ]; then
  for dw in conv shift; do
    DNAS_DEPTHWISE=$dw run $S --channels 8 --layers 5 --batch 8 --steps 5 --label cpu_target_$dw
  done
  run $S --channels 8 --layers 5 --batch 8 --steps 5 --cpu-preset default --label cpu_target_xla_default
  for h in exact finite_difference; do
    run $S --channels 8 --layers 5 --batch 8 --order 2 --hessian $h --steps 5 --label cpu_o2_$h
  done
  run $S --channels 16 --layers 8 --batch 64 --steps 0 --cache "$CACHE" --label paper_o1_cold
  run $S --channels 16 --layers 8 --batch 64 --steps 0 --cache "$CACHE" --label paper_o1_warm
  DNAS_DEPTHWISE=conv run $S --channels 16 --layers 8 --batch 64 --steps 0 --label paper_o1_conv_cold
  run $S --channels 16 --layers 8 --batch 64 --order 2 --steps 0 --label paper_o2_cold
  for p in default fast_compile; do
    run $S --space nb201 --channels 16 --layers 5 --batch 64 --steps 2 --cpu-preset $p --label nb201_o1_$p
    run $PY benchmarks/train_step.py --channels 16 --layers 8 --batch 16 --steps 3 --cpu-preset $p --label $p
  done
  run $PY benchmarks/train_step.py --batch 8 --steps 2 --label paper_network_b8
  run $PY benchmarks/data_pipeline.py --steps 50
  run $PY benchmarks/stream_pipeline.py --workers 1,2,4
  run $PY benchmarks/warm_start.py --channels 8 --layers 5 --batch 8
else
  shift
  PARTS=${*:-1 2 3 4 5}
  P=$(mktemp -d)
  for part in $PARTS; do
    case $part in
      1)  # the target step, cold then warm, with a kernel profile (H100: ~4 min cold)
        run $S --batch 64 --order 1 --steps 50 --cache "$CACHE" --profile "$P/o1" \
            --label paper_o1_b64
        run $S --batch 64 --order 1 --steps 50 --cache "$CACHE" --label paper_o1_b64_warm
        ;;
      2)  # variants of the same step: the layout before packing (unmeasured on a GPU),
          # shifted-sum depthwise convolution, no autotuning
        run $S --batch 64 --order 1 --steps 50 --no-scan-inputs --no-pack \
            --label paper_o1_b64_unpacked
        DNAS_DEPTHWISE=shift run $S --batch 64 --order 1 --steps 50 --profile "$P/shift" \
            --label paper_o1_b64_shift
        XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
            run $S --batch 64 --order 1 --steps 20 --label paper_o1_b64_autotune0
        ;;
      3)
        run $S --batch 64 --order 2 --steps 50 --label paper_o2_b64
        run $S --batch 64 --order 2 --hessian finite_difference --steps 50 --label paper_o2_fd_b64
        ;;
      4)
        run $S --batch 256 --order 1 --steps 50 --label paper_o1_b256
        run $S --space nb201 --channels 16 --layers 5 --batch 64 --steps 50 --label nb201_o1_b64
        run $PY benchmarks/train_step.py --batch 96 --steps 50
        run $S --batch 256 --order 2 --steps 20 --label paper_o2_b256
        ;;
      5)
        run $PY benchmarks/warm_start.py --channels 16 --layers 8 --batch 64
        run $PY benchmarks/data_pipeline.py
        run $PY benchmarks/stream_pipeline.py --workers 4,8,16
        ;;
      *) echo "unknown part $part (1 to 5)" >&2; exit 2 ;;
    esac
  done
fi
rm -rf "$CACHE" "${P:-}"
