#!/usr/bin/env bash
# Issue 40's GPU arms in one device call (bench/gpu_gap.py). The GPU image has torch, Lightning, ONNX and OpenCV but
# not ultralytics, Hydra or torch-pruning, and reaches no registry: their wheels travel in .whl/ (carried).
#
# Here, once (ignored by git, carried by the call):
#     bench/gpu_gap.sh fetch
# The device call (carry [".whl"], timeout_s 600):
#     bench/gpu_gap.sh run        # installs the wheels and kdprune (no deps), then every arm at once into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
# polars (ultralytics imports it lazily, in plots a run does not draw) stays behind: its 50 MB would not fit the call.
WHEELS="ultralytics==8.4.190 ultralytics-thop hydra-core==1.3.2 omegaconf==2.3.0 torch-pruning==1.6.1 torchao==0.18.0"
case "${1:-}" in
  fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl $WHEELS
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # Hydra's parser: an sdist only
    du -sh .whl ;;
  run)
    python3 -m pip install -q --no-deps --no-index .whl/*.whl
    python3 -m pip install -q --no-deps --no-build-isolation -e .
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -m bench.gpu_gap --out "${OUT:-/tmp/gpu_gap}" ;;
  *) echo "usage: bench/gpu_gap.sh fetch|run" >&2; exit 2 ;;
esac
