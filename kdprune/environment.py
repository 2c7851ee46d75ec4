"""The packages a run's numbers depend on: their versions in ``summary.json``, and a check against the lock file.

Absolute accuracy moves with the environment (the generated datasets are drawn with OpenCV; ultralytics' augmentation
runs in OpenCV and NumPy; training in torch), so every run records what it ran with, and a run in an environment that
differs from ``requirements.lock`` (what ``make install`` installs) says so in its log: its absolute mAP is not
comparable with the recorded values of ``bench/canary.py``.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from pathlib import Path

log = logging.getLogger("kdprune")

# What touches training numerics, data, export or the device check (the lock pins everything; these are reported).
KEY_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python", "pillow", "ultralytics", "lightning", "torchao",
                "torch-pruning", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert", "tflite-micro",
                "ethos-u-vela", "hydra-core")
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_versions(names=KEY_PACKAGES) -> dict[str, str | None]:
    """``{package: version}`` as installed (None: not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """``{canonical package name: version}`` of a pip-freeze style lock file (``name==version`` lines)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[_canonical(name.split("[", 1)[0].strip())] = version.strip()
    return pins


def lock_mismatches(installed: dict[str, str | None], lock: dict[str, str]) -> dict[str, dict]:
    """The key packages whose installed version is not the locked one: ``{name: {installed, locked}}``."""
    out = {}
    for name, version in installed.items():
        locked = lock.get(_canonical(name))
        if locked is not None and version != locked:
            out[name] = {"installed": version, "locked": locked}
    return out


def cpu_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX), None where the OS does not say (no
    /proc/cpuinfo). Without it, oneDNN emulates bf16 and ``trainer.precision=bf16-mixed`` trains slower than fp32."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.read_text().splitlines()
                      if ln.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def warn_if_emulated_bf16(trainer_cfg) -> None:
    """One log line when a CPU run asks for bf16 the CPU does not have (it would train slower, not faster)."""
    on_cpu = str(trainer_cfg.get("accelerator", "cpu")) == "cpu"
    if on_cpu and str(trainer_cfg.get("precision", "")).startswith("bf16") and cpu_native_bf16() is False:
        log.warning("kdprune: trainer.precision=bf16-mixed on a CPU without native bfloat16 (no AVX512_BF16 or AMX): "
                    "it is emulated and trains slower than fp32 here; trainer.precision=32-true is faster.")


def environment(lock_path: Path = LOCK_FILE) -> dict:
    """What ``summary.json`` records: Python, the key packages' versions and how they compare with the lock, and
    whether the CPU has native bfloat16 (``cpu_bf16``)."""
    versions = installed_versions()
    env = {"python": platform.python_version(), "packages": versions, "cpu_bf16": cpu_native_bf16()}
    if lock_path.is_file():  # a checkout; an installed wheel has no lock file beside it
        env["lock"] = {"file": lock_path.name, "differs": lock_mismatches(versions, read_lock(lock_path))}
    return env


def warn_if_unlocked(env: dict) -> None:
    """One log line when the key packages differ from the lock (absolute numbers then drift with them)."""
    differs = (env.get("lock") or {}).get("differs")
    if differs:
        what = ", ".join(f"{k} {v['installed']} (locked {v['locked']})" for k, v in differs.items())
        log.warning(f"kdprune: this environment differs from {env['lock']['file']}: {what}. Absolute mAP is not "
                    "comparable with recorded values (bench/canary.py); `make install` installs the locked versions.")
