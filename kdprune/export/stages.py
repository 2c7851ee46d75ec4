"""After training: the report's stages (teacher → student → pruned → QAT → exports → PTQ), each measured the same way.

Every row is evaluated by ``evaluate_runner`` on the same loader (val split letterboxed to ``data.imgsz``, batch 1,
decoded on the host by ``kdprune.export.decode``), so the rows differ only in the model. Exports are verified
(onnx.checker, the TFLite file read back for float ops and checked against the byte budget); an export that fails
is a row with its error, the others still run, and ``ExportFailed`` is raised once everything is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from kdprune.data import prepare_batch
from kdprune.errors import UserError
from kdprune.export.formats import FORMATS, Exported
from kdprune.export.runtime import MIN_LATENCY_RUNS, OnnxRunner, TorchRunner, latency_ms
from kdprune.export.scoring import evaluate_runner, square_val_loader
from kdprune.stage_rows import (
    BEFORE_PRUNING,
    DENSE_REFERENCE,
    PRUNED_FP32,
    PTQ,
    QAT,
    STAGES,
    STUDENT_FP32,
    TEACHER,
    Row,
)
from kdprune.yolo.metrics import val_settings
from kdprune.yolo.rawhead import HeadSpec, RawHeadModel, head_spec

log = logging.getLogger("kdprune")


@dataclass
class RunRecord:
    """What the stages need from a finished run, and nothing of the training machinery: checkpoint paths, whether
    pruning removed anything, the teacher, and the QAT graph (in eval mode: BN from running statistics, ranges as
    frozen) with its description."""

    best: Path
    last: Path
    pre_prune: Path
    pruned: bool = False
    teacher: torch.nn.Module | None = None
    teacher_info: dict | None = None
    qat_graph: torch.nn.Module | None = None
    qat_note: str = ""


class ExportFailed(UserError):
    """An export failed verification; the run dir keeps what passed, report.md says what failed."""


def check_exports(cfg: DictConfig) -> list[str]:
    """The configured formats, validated before any training (unknown names, missing packages)."""
    from kdprune.quant import per_channel

    per_channel(cfg.quant.granularity)  # a typo is an error before any work, whatever the quant option
    if cfg.get("target") is not None:
        from kdprune.export.target import check_target

        check_target(cfg.target)
    formats = [str(f) for f in cfg.export.formats or []]
    for f in formats:
        FORMATS.lookup(f, "export.formats")
    runs = cfg.export.get("latency_runs")
    if formats and runs is not None and int(runs) < MIN_LATENCY_RUNS:
        raise UserError(f"export.latency_runs={runs}: the latency median needs at least {MIN_LATENCY_RUNS} timed runs")
    for f in formats:
        FORMATS[f].check(cfg)
    if "tflite_int8" in formats and (deploy := cfg.export.get("deploy")) is not None:
        from kdprune.deploy.kit import check_settings

        check_settings(deploy.conf, deploy.iou, deploy.max_det, key="export.deploy.")
    return formats


def calibration_images(data: dict, hyp, imgsz: int, n: int) -> np.ndarray:
    """``n`` training images spread evenly over the split, letterboxed like the val images: (n, 3, H, W) in [0, 1]."""
    loader = square_val_loader({**data, "val": data["train"]}, hyp, imgsz)
    ds = loader.dataset
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    imgs = [ds.collate_fn([ds[int(i)]])["img"] for i in idx]
    return torch.cat([prepare_batch({"img": im})["img"] for im in imgs]).numpy()


class _Outputs(torch.nn.Module):
    """The first ``n`` outputs of a graph, with RawHeadModel's output names."""

    def __init__(self, graph: torch.nn.Module, names: list[str]):
        super().__init__()
        self.graph, self.names = graph, list(names)

    def output_names(self) -> list[str]:
        return list(self.names)

    def forward(self, x):
        return tuple(self.graph(x)[: len(self.names)])

    def train(self, mode: bool = True):
        """A captured graph ignores (and torchao refuses) ``.train()``/``.eval()``: its BN mode was set on it."""
        self.training = mode
        return self


def _bytes(path) -> int | None:
    return Path(path).stat().st_size if path and Path(path).is_file() else None


class StageRunner:
    """Builds the rows of the report for one finished run (rank 0, CPU)."""

    def __init__(self, cfg: DictConfig, data: dict, hyp, run_dir: Path, *, model_stats):
        self.cfg, self.data, self.hyp, self.run_dir = cfg, data, hyp, Path(run_dir)
        self.imgsz = int(cfg.data.imgsz)
        self.model_stats = model_stats
        self.loader = square_val_loader(data, hyp, self.imgsz)
        self.export_dir = self.run_dir / "export"
        self.rows: list[dict] = []
        self.failed: list[str] = []
        # (export=none has no exports, so no latency or threads to set)
        self.latency_runs = int(cfg.export.latency_runs) if "latency_runs" in cfg.export else None
        self.threads = int(cfg.export.threads) if "threads" in cfg.export else None
        self.val = val_settings(cfg.val)
        self.bug: Exception | None = None  # our own error in an export, raised once every row is written

    # ---- one row ---------------------------------------------------------------------------------------------
    def evaluate(self, name: str, runner, head: HeadSpec, *, stats: dict | None = None, artifact=None,
                 latency: bool = False, latency_runner=None, channels_last: bool = False, note: str = "") -> Row:
        """One row: ``runner``'s mAP on the val loader, and with ``latency`` the median latency of ``runner`` (or of
        ``latency_runner``, the same artifact on faster kernels)."""
        t0 = time.perf_counter()
        m = evaluate_runner(runner, self.loader, self.data, strides=head.strides, nc=head.nc, reg_max=head.reg_max,
                            names=self.data["names"], channels_last=channels_last, end2end=head.end2end,
                            **self.val)
        row = {"stage": name, "params": (stats or {}).get("params"), "gflops": (stats or {}).get("gflops"),
               "bytes": _bytes(artifact), "mAP50": round(m["mAP50"], 4), "mAP50-95": round(m["mAP50-95"], 4),
               "latency_ms": None, "artifact": str(artifact) if artifact else None, "status": "ok", "note": note}
        if latency:
            row["latency_ms"] = round(latency_ms(latency_runner or runner, self.imgsz,
                                                 runs=self.latency_runs)["median"], 2)
        self.rows.append(row)
        log.info(f"kdprune: stage {name}: mAP50-95 {row['mAP50-95']:.4f} mAP50 {row['mAP50']:.4f}"
                 + (f", {row['bytes']:,} B" if row["bytes"] else "")
                 + (f", {row['latency_ms']} ms" if row["latency_ms"] else "")
                 + f" ({time.perf_counter() - t0:.0f}s)")
        return row

    def val_images(self, n: int) -> np.ndarray:
        """The first ``n`` val images as the exports see them: (n, 3, H, W) float32 in [0, 1]."""
        imgs, got = [], 0
        for batch in self.loader:
            imgs.append(prepare_batch(batch)["img"][: n - got])
            got += len(imgs[-1])
            if got >= n:
                break
        return torch.cat(imgs).numpy()

    def fail(self, name: str, error: str, artifact=None, **extra) -> None:
        self.rows.append({"stage": name, "params": None, "gflops": None, "bytes": _bytes(artifact), "mAP50": None,
                          "mAP50-95": None, "latency_ms": None, "artifact": str(artifact) if artifact else None,
                          "status": "failed", "note": error, **extra})
        self.failed.append(f"{name}: {error}")
        log.error(f"kdprune: stage {name} failed: {error}")

    def torch_row(self, name: str, model: torch.nn.Module, *, artifact=None, note: str = "") -> dict:
        model = model.float().cpu().eval()
        return self.evaluate(name, TorchRunner(RawHeadModel(model)), head_spec(model),
                             stats=self.model_stats(model, self.imgsz), artifact=artifact, note=note)

    def export_row(self, name: str, build, evaluate) -> None:
        """``build()`` writes and verifies an artifact and returns its path (``UserError`` = failed verification);
        ``evaluate(path)`` adds the row. Anything else is our bug: the row is marked and the error re-raised later."""
        path = None
        try:
            path = build()
            evaluate(path)
        except UserError as e:
            self.fail(name, str(e), artifact=path)
        except Exception as e:
            self.fail(name, f"{type(e).__name__}: {e}", artifact=path)
            self.bug = self.bug or e


def _context_rows(sr: StageRunner, cfg: DictConfig, rec: RunRecord) -> None:
    """The rows the run's models are read against: the dense reference (``reference=``), the teacher, the student
    before its first pruning step."""
    from kdprune.yolo import load_ultralytics_checkpoint

    if cfg.reference:
        path = Path(cfg.reference).expanduser()
        sr.torch_row(DENSE_REFERENCE, load_ultralytics_checkpoint(path)[0], artifact=path,
                     note="reference=: the dense model compression is measured against")
    if rec.teacher is not None:
        info = rec.teacher_info or {}
        sr.torch_row(TEACHER, rec.teacher, artifact=info.get("weights"), note=str(info.get("model", "")))
    if rec.pre_prune.is_file():
        model, pre = load_ultralytics_checkpoint(rec.pre_prune)
        sr.torch_row(BEFORE_PRUNING, model, artifact=rec.pre_prune,
                     note=f"dense, after {pre.get('epoch', '?')} epochs: what the first pruning step started from "
                          "(before its fade)")


def run_stages(cfg: DictConfig, data: dict, hyp, run_dir: Path, rec: RunRecord, *, model_stats) -> tuple[list, list]:
    """Rows for report.md / summary.json. Returns ``(rows, failures)``; raises our own bugs after the rows exist."""
    from kdprune.quant import backend
    from kdprune.quant import per_channel as quant_per_channel
    from kdprune.yolo import load_ultralytics_checkpoint

    formats = check_exports(cfg)
    sr = StageRunner(cfg, data, hyp, run_dir, model_stats=model_stats)
    sr.export_dir.mkdir(parents=True, exist_ok=True)
    per_channel = quant_per_channel(cfg.quant.granularity)
    pruned = rec.pruned

    def load(path):
        return load_ultralytics_checkpoint(path)[0]

    _context_rows(sr, cfg, rec)
    weights = rec.best if rec.best.is_file() else rec.last  # last.pt: a run resumed during QAT, in a new dir
    if not weights.is_file():
        return sr.rows, sr.failed
    best = load(weights)
    head = head_spec(best)
    stats = model_stats(best, sr.imgsz)
    names = RawHeadModel(best).output_names()
    sr.torch_row(PRUNED_FP32 if pruned else STUDENT_FP32, best, artifact=weights,
                 note=f"{weights.name} (fp16 on disk)")

    qat = rec.qat_graph
    if qat is not None:
        sr.evaluate(QAT, TorchRunner(_Outputs(qat, names)), head, stats=stats,
                    note=f"PyTorch fake-quant, {rec.qat_note}")

    if not formats and qat is None:
        return sr.rows, sr.failed
    # PTQ baseline: the float model above, calibrated on training images, no QAT
    calib = calibration_images(data, hyp, sr.imgsz, int(cfg.quant.ptq_images))
    batches = [torch.from_numpy(calib[i:i + 16]) for i in range(0, len(calib), 16)]
    ptq_observed = backend.calibrate_ptq(RawHeadModel(best), batches, int(max(head.strides)),
                                         per_channel=per_channel)
    ptq = backend.convert(ptq_observed)
    ptq_path = sr.export_dir / "model_ptq_int8.onnx"
    if "onnx_int8" in formats:
        sr.export_row(PTQ, lambda: backend.export_qdq_onnx(ptq, ptq_path, sr.imgsz, names),
                      lambda p: sr.evaluate(PTQ, OnnxRunner(p, sr.threads), head, stats=stats, artifact=p,
                                            latency=True, note=f"ONNX QDQ, {len(calib)} calibration images"))
    else:
        sr.evaluate(PTQ, TorchRunner(_Outputs(ptq, names)), head, stats=stats,
                    note=f"PyTorch, {len(calib)} calibration images")

    exported = Exported(sr, best, head, stats, names, qat, ptq_observed, ptq, len(calib))
    for fmt in (f for f in FORMATS if f in formats):
        FORMATS[fmt].write(exported)
    sr.failed += check_fidelity(sr.rows)
    if sr.bug is not None:
        raise sr.bug
    return sr.rows, sr.failed


def check_fidelity(rows: list[dict]) -> list[str]:
    """Adds ``check`` to each export row: its mAP50-95 minus its reference's (``STAGES``: the first reference row
    present), and whether that is within the expected tolerance. Outside it, the export is not the model it came
    from: the row fails (its artifact stays, the report says why) and the message is returned, so the run ends with
    one line and exit code 2."""
    by = {r["stage"]: r for r in rows}
    failed = []
    for name, stage in STAGES.items():
        refs, tol = stage.references, stage.tolerance
        if tol is None:
            continue
        row, ref = by.get(name), next((by[n] for n in refs if n in by), None)
        if not row or not ref or row.get("mAP50-95") is None or ref.get("mAP50-95") is None:
            continue
        d = row["mAP50-95"] - ref["mAP50-95"]
        ok = abs(d) <= tol
        row["check"] = {"reference": ref["stage"], "delta": round(d, 4), "tolerance": tol, "ok": ok}
        if not ok:
            msg = f"mAP50-95 {d:+.4f} vs {ref['stage']}, outside the expected ±{tol}"
            row["status"], row["note"] = "failed", "; ".join(x for x in (row.get("note"), msg) if x)
            failed.append(f"{name}: {msg}")
            log.error(f"kdprune: {name} {msg}")
    return failed
