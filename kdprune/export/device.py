"""The device file's own checks, after its mAP: TensorFlow Lite Micro (bit-exact with the kernels that scored it,
and the tensor arena it needs), the byte and arena budgets, the Vela compiles for MCU NPUs and the target's operator
rules (``kdprune.export.target``)."""

from __future__ import annotations

import logging
from pathlib import Path

from kdprune.errors import UserError
from kdprune.part import verdict, verdict_line
from kdprune.yolo.rawhead import HeadSpec

log = logging.getLogger("kdprune")


def tflite_eval(sr, name: str, path: Path, head: HeadSpec, stats: dict, names: list[str], what: str,
                 *, device: bool) -> None:
    """Scored with LiteRT's reference kernels, which TensorFlow Lite Micro (the MCU runtime) matches bit for bit
    (checked here on ``export.tflm_images`` val images, with the arena TFLM needs); latency on LiteRT's optimized
    kernels. Evaluated even when over a budget (the user sees what the bytes bought), then failed on it. The budgets
    (``export.max_bytes``, ``export.max_arena_bytes``) apply to the device file (``device``)."""
    from kdprune.export.tflite import TFLiteRunner
    from kdprune.export.tflm import tflm_parity

    cfg = sr.cfg.export
    reference = TFLiteRunner(path, 1, output_names=names, kernels="reference")
    row = sr.evaluate(name, reference, head, stats=stats,
                      artifact=path, latency=True, latency_runner=TFLiteRunner(path, sr.threads, output_names=names),
                      note=f"full-integer, {what}; mAP on LiteRT reference kernels (= TFLite Micro), latency on "
                           "its optimized ones")
    n = int(cfg.get("tflm_images", 8))
    row["tflm"] = tflm_parity(path, sr.val_images(n), output_names=names, reference=reference)
    row["arena_bytes"] = row["tflm"]["arena_bytes"]
    t = row["tflm"]
    log.info(f"kdprune: {name} in TFLite Micro: tensor arena {row['arena_bytes']:,} B; outputs on {n} val images "
             f"{100 * t['exact']:.2f} % equal to LiteRT's reference kernels, max {t['max_lsb']} LSB")
    problems = _parity_and_budgets(cfg, row, path, device=device)
    if device and cfg.get("npu"):  # the device file compiled for each MCU NPU target (Vela, Ethos-U)
        from kdprune.export.npu import vela_compile

        row["npu"] = []
        for target in cfg.npu:
            try:
                r = vela_compile(path, str(target), sr.export_dir / "npu")
            except UserError as e:
                problems.append(str(e))
                continue
            row["npu"].append(r)
            log.info(f"kdprune: {name} on {target} (Vela): {r['npu_ops']} NPU / {r['cpu_ops']} CPU operators, SRAM "
                     f"{r['sram_bytes']:,} B, flash {r['flash_bytes']:,} B, est. {r['inference_ms']} ms")
    if device and (v := verdict(sr.cfg.get("device"), row["bytes"], row["arena_bytes"],
                                next((n["sram_bytes"] for n in row.get("npu", [])), None))) is not None:
        row["part"] = v  # the part's flash and SRAM against the file and its TFLM arena
        (log.info if v["fits"] else log.warning)(f"kdprune: {name} {verdict_line(v)}")
        if not v["fits"]:
            problems.append(f"{path.name} {verdict_line(v)} (prune to the part: prune.target.arena_bytes="
                            "${device.model_sram}; or lower data.imgsz, or device.reserve.*)")
    target = sr.cfg.get("target")
    if device and target is not None:  # the target's operator rules, on the file (and Vela's CPU operators)
        from kdprune.export.target import target_findings

        found = target_findings(path, target.get("rules") or {}, row.get("npu", []))
        row["target"] = {"name": str(target.name), "findings": found}
        for rule, lines in found.items():
            for line in lines:
                log.warning(f"kdprune: {name} on {target.name} ({rule}): {line}")
    if problems:
        row["status"], row["note"] = "failed", "; ".join(problems)
        sr.failed += [f"{name}: {m}" for m in problems]


def _parity_and_budgets(cfg, row: dict, path: Path, *, device: bool) -> list[str]:
    """TFLite Micro's parity with the scoring kernels, and for the device file the byte and arena budgets."""
    t, problems = row["tflm"], []
    if t["within_1_lsb"] < 0.999:
        problems.append(f"TFLite Micro's outputs differ from LiteRT's reference kernels beyond 1 LSB on "
                        f"{100 * (1 - t['within_1_lsb']):.2f} % of elements (max {t['max_lsb']})")
    if device and cfg.get("max_bytes") is not None and row["bytes"] >= int(cfg.max_bytes):
        problems.append(f"{path.name} is {row['bytes']:,} bytes, over the budget export.max_bytes="
                        f"{int(cfg.max_bytes):,} (lower prune.target.int8_bytes)")
    if device and cfg.get("max_arena_bytes") is not None and row["arena_bytes"] >= int(cfg.max_arena_bytes):
        problems.append(f"{path.name} needs a {row['arena_bytes']:,}-byte tensor arena (RAM) in TFLite Micro, over "
                        f"the budget export.max_arena_bytes={int(cfg.max_arena_bytes):,} (set "
                        "prune.target.arena_bytes, or lower data.imgsz)")
    return problems
