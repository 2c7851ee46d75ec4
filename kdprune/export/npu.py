"""The TFLite file compiled for an MCU NPU: Arm's Vela compiler for Ethos-U (the one MCU NPU compiler that installs
from the package registry; NXP's Neutron converter is not public). Vela takes the same fully-INT8 file, maps every
operator it supports onto the NPU and leaves the rest on the Cortex-M CPU (TFLite Micro runs them); its report gives
the NPU / CPU split, the SRAM and flash the compiled model uses, and an estimated inference time.

Vela is run as its command line (its Python API is internal); its summary CSV and console report are parsed here.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kdprune.errors import UserError
from kdprune.registry import Registry

# ``export.npu`` names -> (vela --accelerator-config, --system-config, --memory-mode): MCU-class systems from Vela's
# own Arm/vela.ini, weights in flash and the arena in SRAM shared with the Cortex-M (what a 2 MB-flash MCU has).
VELA_CONFIGS: Registry[tuple[str, str, str]] = Registry("NPU configuration")
VELA_CONFIGS.register("ethos-u55-128", ("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram"))
VELA_CONFIGS.register("ethos-u65-256", ("ethos-u65-256", "Ethos_U65_Embedded", "Shared_Sram"))
_INSTALL = "a kdprune dependency: reinstall it (make install, or pip install -e .)"


def check_npu_targets(targets) -> list[str]:
    """The configured targets, validated before training (unknown names, Vela missing)."""
    targets = [str(t) for t in (targets or [])]
    for t in targets:
        if (msg := VELA_CONFIGS.problem(t, "export.npu")) is not None:
            raise UserError(f"{msg} (or [] for none)")
    if targets and importlib.util.find_spec("ethosu") is None:
        raise UserError(f"export.npu={targets} needs Arm's Vela compiler (ethos-u-vela): {_INSTALL}")
    return targets


def _cpu_operators(text: str) -> list[str]:
    """'OP (tensor): reason' for every operator Vela's supported-operator check put on the CPU."""
    out = []
    for m in re.finditer(r"Warning \(supported operators\) operator: (\S+?), ofm: '([^']*)'\s*\nReason: ([^\n]*)",
                         text):
        out.append(f"{m.group(1)} ({m.group(2)}): {m.group(3).strip()}")
    return out


def vela_compile(path: str | Path, target: str, out_dir: str | Path) -> dict:
    """Compile ``path`` for ``target``; the NPU-ready file (``*_vela.tflite``) goes to ``out_dir``. Returns
    ``{"target", "npu_ops", "cpu_ops", "cpu_operators", "sram_bytes", "flash_bytes", "inference_ms", "cycles",
    "macs", "artifact"}``. A file Vela cannot compile is a ``UserError`` (the row fails, with Vela's last lines)."""
    path, out_dir = Path(path), Path(out_dir)
    accel, system, memory = VELA_CONFIGS[target]
    work = Path(tempfile.mkdtemp(prefix="kdprune-vela-"))
    try:
        cmd = [sys.executable, "-c", "from ethosu.vela.vela import main; main()", str(path),
               "--accelerator-config", accel, "--config", "Arm/vela.ini", "--system-config", system,
               "--memory-mode", memory, "--output-dir", str(work), "--show-cpu-operations"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        text = p.stdout + "\n" + p.stderr
        summary = next(work.glob("*_summary_*.csv"), None)
        if p.returncode != 0 or summary is None:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise UserError(f"Vela could not compile {path.name} for {target}: {tail}")
        with open(summary, newline="") as f:
            row = next(csv.DictReader(f))
        npu = re.search(r"NPU operators = (\d+)", text)
        cpu = re.search(r"CPU operators = (\d+)", text)
        out_dir.mkdir(parents=True, exist_ok=True)
        compiled = out_dir / f"{path.stem}_vela_{target}.tflite"
        shutil.move(str(next(work.glob("*_vela.tflite"))), compiled)
        return {"target": target, "system_config": system, "memory_mode": memory,
                "npu_ops": int(npu.group(1)) if npu else None, "cpu_ops": int(cpu.group(1)) if cpu else None,
                "cpu_operators": _cpu_operators(text),
                "sram_bytes": round(float(row["sram_memory_used"]) * 1024),
                "flash_bytes": round(float(row["off_chip_flash_memory_used"]) * 1024),
                "inference_ms": round(float(row["inference_time"]) * 1e3, 3), "cycles": int(float(row["cycles_total"])),
                "macs": int(float(row["nn_macs"])), "artifact": str(compiled)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
