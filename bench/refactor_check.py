"""Does a change to the code leave the default run's result unchanged? A fingerprint of one small, fixed-seed run.

The whole ``+experiment=yolo11n_mcu`` pipeline (teacher stage, KD, gradual pruning with the fade, QAT, ONNX / TFLite
exports, the device verdict) at 64 px on a few generated images, seed 0, the CPU: the run is deterministic there, so
two commits that compute the same thing give the same numbers bit for bit. The fingerprint holds the pruned
architecture (out channels of every conv of the saved model), every number of summary.json except times and paths, and
the SHA-256 of each exported file (the TFLite file is the model on the device: same bytes, same model; an ONNX file
without the stack traces its exporter writes into it, which hold the checkout's path).

    .venv/bin/python -m bench.refactor_check --save /tmp/before.json          # at the old commit (a worktree)
    .venv/bin/python -m bench.refactor_check --against /tmp/before.json      # at the new one: exit 1 on a difference

~3 min on 2 cores. A refactor that should change nothing must print "identical"; one that changes a result on purpose
says which keys moved and why, in its commit message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from bench.common import run_env

SMALL = ["+experiment=yolo11n_mcu", "seed=0", "data.imgsz=64", "data.embedded.imgsz=64", "data.embedded.n_train=32",
         "data.embedded.n_val=16", "data.batch=8", "data.val_batch=8", "data.workers=0", "trainer.max_epochs=8",
         "prune.start_epoch=2", "prune.end_epoch=4", "prune.steps=2", "quant.start_epoch=-2", "quant.ptq_images=16",
         "teacher.epochs=1", "val.plot_every=0"]
VOLATILE = ("time", "wall", "latency", "version", "date", "host", "commit", "_s")  # keys that differ run to run


def _numbers(d, prefix=""):
    """Flattened ``{dotted key: value}`` of every number, string and bool in ``d`` except the volatile keys."""
    out = {}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        if any(w in str(k).lower() for w in VOLATILE):
            continue
        if isinstance(v, (dict, list)):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _onnx_content(path: Path) -> bytes:
    """An ONNX file without its metadata: torch's exporter writes the Python stack trace of every node into it, with
    the checkout's path and line numbers, so the same graph exported from another directory or after code moved
    between files has other bytes. The graph, its tensors and attributes are what is compared."""
    import onnx

    m = onnx.load(path)
    del m.metadata_props[:]
    for n in m.graph.node:
        del n.metadata_props[:]
    for v in (*m.graph.value_info, *m.graph.initializer, *m.graph.input, *m.graph.output):
        del v.metadata_props[:]
    return m.SerializeToString()


def fingerprint(run_dir: Path) -> dict:
    import torch

    summary = json.loads((run_dir / "summary.json").read_text().replace(str(run_dir.resolve()), "<run>"))
    for row in summary.get("stages", []):  # an ONNX file's size without the exporter's stack traces (_onnx_content)
        if str(row.get("artifact") or "").endswith(".onnx") and row.get("bytes") is not None:
            row["bytes"] = len(_onnx_content(Path(row["artifact"].replace("<run>", str(run_dir.resolve())))))
    ckpt = torch.load(run_dir / "weights" / "best.pt", map_location="cpu", weights_only=False)
    model = ckpt.get("model") or ckpt["ema"]  # ultralytics' convention: the EMA is the saved model, "model" None
    arch = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    files = {p.relative_to(run_dir).as_posix():
             hashlib.sha256(_onnx_content(p) if p.suffix == ".onnx" else p.read_bytes()).hexdigest()
             for ext in ("*.onnx", "*.tflite") for p in sorted(run_dir.rglob(ext))}
    train = _numbers(ckpt.get("train_metrics") or {})  # the last losses: at 64 px the mAPs are ~0, the losses are not
    summary = {**_numbers(summary), **{f"train.{k}": v for k, v in train.items()}}
    return {"arch": arch, "summary": summary, "files": files}


def run(out: Path) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "kdprune", *SMALL, f"hydra.run.dir={out}", f"cache_dir={out / 'cache'}"]
    p = subprocess.run(cmd, env=run_env(), capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"the run failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return fingerprint(out)


def diff(a: dict, b: dict) -> list[str]:
    lines = []
    for part in ("arch", "summary", "files"):
        for k in sorted(set(a[part]) | set(b[part])):
            if a[part].get(k) != b[part].get(k):
                lines.append(f"{part}[{k}]: {a[part].get(k)!r} -> {b[part].get(k)!r}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", type=Path, help="write the fingerprint here")
    ap.add_argument("--against", type=Path, help="compare with this saved fingerprint")
    ap.add_argument("--keep", type=Path, help="run dir to keep (default: a temporary one)")
    ap.add_argument("--read", type=Path, help="no run: the fingerprint of this finished run dir")
    a = ap.parse_args(argv)
    if a.read:
        fp = fingerprint(a.read)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp = run(a.keep or Path(tmp) / "run")
    if a.save:
        a.save.write_text(json.dumps(fp, indent=1, sort_keys=True))
    n = len(fp["arch"]), len(fp["summary"]), len(fp["files"])
    print(f"fingerprint: {n[0]} convs, {n[1]} summary values, {n[2]} files")
    if a.against:
        lines = diff(json.loads(a.against.read_text()), fp)
        print("\n".join(lines) if lines else "identical")
        return 1 if lines else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
