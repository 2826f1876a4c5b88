#!/usr/bin/env bash
# GPU check for anndata-rnn: run it whenever a machine with a CUDA GPU is available.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default OUT_DIR: gpu_check_results)
#   bash benchmarks/gpu_check.sh --cpu [OUT_DIR]    every step on the CPU, GPU parts skipped
#
# 1. the tests marked `gpu` (CPU vs CUDA predictions within tolerance, training on CUDA, the
#    benchmark's tiny mode on CUDA);
# 2. the benchmark, --quick --device cuda (100k cells for prediction): train_ratio, predict_ratio;
# 3. the same with --amp (mixed precision in the package and autocast in the bare loops).
# Takes a few minutes. Exits non-zero when CUDA is missing or any step fails; prints where the
# results are and the ratios of steps 2 and 3. Environment: PYTHON (default python), PYTEST_ARGS
# (extra pytest arguments), BENCH_ARGS (extra benchmark arguments, e.g. "--threads 8").
# --cpu (tests/test_benchmarks.py runs it): no CUDA check, no gpu tests, steps 2 and 3 as
# --tiny --device cpu, so every command of the script is exercised without a GPU.
set -uo pipefail

cpu_mode=0
if [ "${1:-}" = "--cpu" ]; then
    cpu_mode=1
    shift
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$(realpath -m "${1:-gpu_check_results}")"
py="${PYTHON:-python}"
mkdir -p "$out"
cd "$root" || exit 1

if [ $cpu_mode -eq 1 ]; then
    echo "gpu_check: --cpu: GPU parts skipped (CUDA check, gpu tests); benchmarks --tiny on the CPU" | tee "$out/device.txt"
    device=cpu
    size=--tiny
elif ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA GPU (torch $("$py" -c 'import torch; print(torch.__version__)' 2>&1)); install a CUDA build of torch" >&2
    exit 2
else
    device=cuda
    size=--quick
    "$py" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())' | tee "$out/device.txt"
    command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/device.txt" 2>&1
fi

status=0
start=$SECONDS
if [ $cpu_mode -eq 1 ]; then
    echo "gpu_check: [1/3] python -m pytest -m gpu: skipped (--cpu)"
else
    echo "gpu_check: [1/3] python -m pytest -m gpu"
    # shellcheck disable=SC2086
    "$py" -m pytest -m gpu -ra -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$out/pytest_gpu.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "gpu_check: gpu tests FAILED (exit $rc)" >&2
        status=1
    elif grep -qE '[0-9]+ skipped' "$out/pytest_gpu.log" && ! grep -qE '[0-9]+ passed' "$out/pytest_gpu.log"; then
        echo "gpu_check: every gpu test was skipped: is CUDA visible to the tests?" >&2
        status=1
    fi
fi

bench() {  # bench STEP NAME [EXTRA ARGS]: one benchmark run into $out/NAME
    local step=$1 name=$2
    shift 2
    echo "gpu_check: [$step/3] python benchmarks/run.py $size --device $device $* --out $out/$name"
    # shellcheck disable=SC2086
    "$py" benchmarks/run.py $size --device "$device" "$@" --out "$out/$name" ${BENCH_ARGS:-} 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "gpu_check: benchmark $name FAILED (exit $rc)" >&2
        status=1
    fi
}
bench 2 benchmark
bench 3 benchmark_amp --amp

for name in benchmark benchmark_amp; do
    "$py" -c 'import json, sys
s = json.load(open(sys.argv[1]))["summary"]
print("gpu_check: %s: train_ratio %s, predict_ratio %s" % (sys.argv[2], s.get("train_ratio"), s.get("predict_ratio")))' \
        "$out/$name/benchmark.json" "$name" || status=1
done

echo
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
echo "gpu_check: results in $out: pytest_gpu.log, benchmark[_amp]/benchmark.json, benchmark[_amp]/benchmark.md, benchmark[_amp].log, device.txt"
exit $status
