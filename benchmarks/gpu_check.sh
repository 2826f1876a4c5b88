#!/usr/bin/env bash
# GPU check for anndata-rnn: run it whenever a machine with a CUDA GPU is available.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (default OUT_DIR: gpu_check_results)
#
# 1. the tests marked `gpu` (CPU vs CUDA predictions within tolerance, training on CUDA, the
#    benchmark's tiny mode on CUDA);
# 2. the benchmark, --quick --device cuda (100k cells for prediction).
# Takes a few minutes. Exits non-zero when CUDA is missing or any step fails; prints where the
# results are. Environment: PYTHON (default python), PYTEST_ARGS (extra pytest arguments),
# BENCH_ARGS (extra benchmark arguments, e.g. "--threads 8").
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$(realpath -m "${1:-gpu_check_results}")"
py="${PYTHON:-python}"
mkdir -p "$out"
cd "$root" || exit 1

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA GPU (torch $("$py" -c 'import torch; print(torch.__version__)' 2>&1)); install a CUDA build of torch" >&2
    exit 2
fi
"$py" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())' | tee "$out/device.txt"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/device.txt" 2>&1

status=0
start=$SECONDS
echo "gpu_check: [1/2] python -m pytest -m gpu"
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

echo "gpu_check: [2/2] python benchmarks/run.py --quick --device cuda --out $out/benchmark"
# shellcheck disable=SC2086
"$py" benchmarks/run.py --quick --device cuda --out "$out/benchmark" ${BENCH_ARGS:-} 2>&1 | tee "$out/benchmark.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo "gpu_check: benchmark FAILED (exit $rc)" >&2
    status=1
fi

echo
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
echo "gpu_check: results in $out: pytest_gpu.log, benchmark/benchmark.json, benchmark/benchmark.md, benchmark.log, device.txt"
exit $status
