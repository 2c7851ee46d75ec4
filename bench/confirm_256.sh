#!/usr/bin/env bash
# Issue 13's default-scale (256 px) confirmation, one seed per arm, all arms at once on one GPU machine with many cores
# (trainer=gpu, 16-mixed): the embedded dataset without and with KD (the teacher is trained once on the GPU and cached;
# the KD arms wait on its lock), glyphs without KD, and one short full pipeline (pruning, QAT, ONNX exports) as the
# trainer=gpu smoke check.
#
#     [PARTS="shapes shapes_kd glyphs smoke"] bench/confirm_256.sh LOG_DIR [PYTHON]
#
# Results: bench/results/gradual_vs_oneshot/{shapes-256-kd0,shapes-256-kd1,glyphs-256-kd0}-gpu-s0.json (rewritten after
# every finished run), logs in LOG_DIR.
set -u
LOG=${1:?usage: bench/confirm_256.sh LOG_DIR [PYTHON]}
PY=${2:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
ARMS="dense today late oneshot"
B="$PY -m bench.gradual_vs_oneshot --imgsz 256 --seeds 0 --arms $ARMS --set trainer=gpu --jobs 4 --tag gpu \
   --out bench/runs/gpu256"
PARTS=${PARTS:-shapes shapes_kd glyphs smoke}
on() { [[ " $PARTS " == *" $1 "* ]]; }
on shapes && $B >"$LOG/shapes.log" 2>&1 &
on shapes_kd && $B --kd >"$LOG/shapes_kd.log" 2>&1 &
on glyphs && $B --data glyphs >"$LOG/glyphs.log" 2>&1 &
on smoke && $PY -m kdprune +experiment=yolo11n_mcu distill=none trainer=gpu trainer.max_epochs=9 prune.start_epoch=1 \
    prune.end_epoch=4 "export.formats=[onnx,onnx_int8]" val.plot_every=0 hydra.run.dir=bench/runs/gpu256/smoke-qat \
    >"$LOG/smoke.log" 2>&1 && cat bench/runs/gpu256/smoke-qat/summary.json >>"$LOG/smoke.log" &
wait
