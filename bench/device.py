"""Issue 15: what the device file costs on an MCU: flash (file bytes), RAM (TensorFlow Lite Micro's tensor arena),
TFLM vs LiteRT on real val images, and Vela's Ethos-U55-128 / U65-256 compile (NPU / CPU operators, SRAM, flash,
estimated time), for the TFLite INT8 file of each run dir given, beside the run's LiteRT CPU latency.

    .venv/bin/python -m bench.device outputs/RUN_A [outputs/RUN_B ...] [--out bench/results/device/tflm_vela.json]

Reads each run's ``export/model_int8.tflite`` and ``summary.json``; compiles into a temp dir (the run dir is not
touched). Seconds per file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import RESULTS, git_rev, machine


def measure(run: Path) -> dict:
    import numpy as np

    from kdprune.export.npu import VELA_CONFIGS, vela_compile
    from kdprune.export.tflm import tensor_arena_bytes, tflm_parity

    path = run / "export" / "model_int8.tflite"
    summary = json.loads((run / "summary.json").read_text())
    row = next(r for r in summary["stages"] if r["stage"] == "TFLite INT8")
    imgsz = int(summary["imgsz"])
    imgs = np.random.default_rng(0).random((4, 3, imgsz, imgsz), dtype=np.float32)  # parity on noise too
    with tempfile.TemporaryDirectory() as tmp:
        npu = [vela_compile(path, t, tmp) for t in VELA_CONFIGS]
    for n in npu:
        n.pop("artifact")
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return {"run": str(run), "imgsz": imgsz, "granularity": cfg["quant"]["granularity"], "quant": cfg["quant"]["name"],
            "mAP50-95": row.get("mAP50-95"), "flash_bytes": path.stat().st_size,
            "arena_bytes": tensor_arena_bytes(path), "litert_cpu_ms": row.get("latency_ms"),
            "tflm_vs_litert_reference_on_noise": tflm_parity(path, imgs), "tflm_on_val": row.get("tflm"), "npu": npu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS / "device" / "tflm_vela.json")
    a = ap.parse_args()
    res = [measure(r) for r in a.runs]
    a.out.write_text(json.dumps({"machine": machine(), "commit": git_rev(), "results": res}, indent=2))
    print("| run | imgsz | weights | mAP50-95 | flash B | TFLM arena B | LiteRT CPU ms | U55-128 ms | U65-256 ms | "
          "NPU/CPU ops | Vela SRAM B |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res:
        u55, u65 = r["npu"]
        print(f"| {Path(r['run']).name} | {r['imgsz']} | {r['granularity']} | {r['mAP50-95']} | {r['flash_bytes']:,} | "
              f"{r['arena_bytes']:,} | {r['litert_cpu_ms']} | {u55['inference_ms']} | {u65['inference_ms']} | "
              f"{u55['npu_ops']}/{u55['cpu_ops']} | {u55['sram_bytes']:,} |")


if __name__ == "__main__":
    main()
