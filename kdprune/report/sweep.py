"""One row per job of a sweep (or any set of run dirs), read back from what each job left in its run dir.

Everything comes from files (``summary.json``, ``failed.json``, ``config.yaml``, ``.hydra/overrides.yaml``), never
from the launcher's memory, so the summary of a finished sweep, of an interrupted one, and of run dirs gathered by hand
are built the same way, and rebuilding gives the same bytes.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import yaml

from kdprune.stage_rows import DEPLOY_ORDER, TFLITE_INT8

FAILED, INCOMPLETE, OK, OVER = "failed", "incomplete", "ok", "over budget"
HEAD = ["job", "status", "score", "pareto", "int8_mAP50-95", "int8_mAP50", "int8_bytes", "budget_bytes", "arena_bytes",
        "int8_source", "params", "gflops", "int8_bytes_est", "fp32_mAP50-95", "fp32_mAP50"]
TAIL = ["wall_time_s", "overrides", "error"]


def is_run_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("summary.json", "failed.json", ".hydra"))


def run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself if it is a run dir, else its run-dir children in job order (0, 1, 2, ..., 10)."""
    p = Path(path)
    if is_run_dir(p):
        return [p]
    kids = [d for d in p.iterdir() if d.is_dir() and is_run_dir(d)] if p.is_dir() else []
    return sorted(kids, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def _read(path: Path, loader=json.loads):
    try:
        return loader(path.read_text()) if path.is_file() else None
    except (ValueError, yaml.YAMLError):
        return None  # a file cut short by an interrupted job: the job reads as incomplete


def _slug(stage: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", stage.lower()).strip("_")


def deployed(summary: dict) -> dict:
    """The deployable INT8 result of one run: which stage, its mAPs, and its bytes (the TFLite file's size when
    there is one; else the INT8 size estimate, which tracks the TFLite file within 1 %)."""
    rows = {r["stage"]: r for r in summary.get("stages") or []}
    src = next((n for n in DEPLOY_ORDER if rows.get(n, {}).get("mAP50-95") is not None), None)
    row = rows.get(src, {})
    tfl = rows.get(TFLITE_INT8, {})
    return {"int8_source": src or ("fp32 (no INT8 stage)" if summary.get("mAP50-95") is not None else None),
            "int8_mAP50-95": row.get("mAP50-95", summary.get("mAP50-95")),
            "int8_mAP50": row.get("mAP50", summary.get("mAP50")),
            "int8_bytes": tfl.get("bytes") or summary.get("int8_bytes_est"),
            "arena_bytes": tfl.get("arena_bytes")}  # RAM: TFLite Micro's tensor arena for the file


def budget_of(config: dict | None) -> int | None:
    """The job's byte budget: ``export.max_bytes`` (what the TFLite file is checked against), else the pruning
    budget ``prune.target.int8_bytes``."""
    config = config or {}
    b = (config.get("export") or {}).get("max_bytes") or ((config.get("prune") or {}).get("target") or {}).get(
        "int8_bytes")
    return int(b) if b else None


def score(row: dict) -> float | None:
    """What a search maximises: the INT8 mAP50-95 of a job under its budget. A job over its budget is infeasible and
    scores ``-bytes/budget`` (below every feasible job, and less so the closer it came); a failed job scores None."""
    if row["status"] == OVER and row.get("int8_bytes") and row.get("budget_bytes"):
        return round(-row["int8_bytes"] / row["budget_bytes"], 4)
    return row.get("int8_mAP50-95") if row["status"] == OK else None


def job_row(run_dir: Path, base: Path) -> dict:
    """One CSV row (as a dict) for one run dir; the job is named by its path under ``base``."""
    overrides = _read(run_dir / ".hydra" / "overrides.yaml", yaml.safe_load) or []
    row = {"job": os.path.relpath(run_dir, base), "overrides": " ".join(overrides), "error": ""}
    failed, summary = _read(run_dir / "failed.json"), _read(run_dir / "summary.json")
    if failed is not None:
        row.update(status=FAILED, error=failed.get("error", ""), wall_time_s=failed.get("wall_time_s"))
    elif summary is None:
        row.update(status=INCOMPLETE, error="no summary.json: the job was interrupted, or is still running")
    else:
        row.update(deployed(summary), status=OK, wall_time_s=summary.get("wall_time_s"),
                   params=summary.get("params"), gflops=summary.get("gflops"),
                   int8_bytes_est=summary.get("int8_bytes_est"), **{"fp32_mAP50-95": summary.get("mAP50-95"),
                                                                  "fp32_mAP50": summary.get("mAP50")})
        row["budget_bytes"] = budget_of(_read(run_dir / "config.yaml", yaml.safe_load))
        bad = [r for r in summary.get("stages") or [] if r.get("status") == "failed"]
        over = row["budget_bytes"] and row.get("int8_bytes") and row["int8_bytes"] >= row["budget_bytes"]
        if over or any(x in (r.get("note") or "") for r in bad for x in ("over the budget", "does NOT fit")):
            row["status"] = OVER
        elif bad:
            row["status"] = FAILED
        row["error"] = "; ".join(f"{r['stage']}: {r.get('note')}" for r in bad)
        for r in summary.get("stages") or []:
            s = _slug(r["stage"])
            row.update({f"{s}_bytes": r.get("bytes"), f"{s}_mAP50": r.get("mAP50"), f"{s}_mAP50-95": r.get("mAP50-95")})
    row["score"] = score(row)
    return row


def pareto_front(rows: list[dict]) -> list[dict]:
    """Jobs no other job beats on both INT8 bytes (fewer) and INT8 mAP50-95 (higher), smallest first."""
    pts = sorted((r for r in rows if r.get("int8_bytes") and r.get("int8_mAP50-95") is not None
                  and r["status"] in (OK, OVER)), key=lambda r: (r["int8_bytes"], -r["int8_mAP50-95"]))
    front, best = [], float("-inf")
    for r in pts:
        if r["int8_mAP50-95"] > best:
            front.append(r)
            best = r["int8_mAP50-95"]
    return front


def collect(paths: list[str | Path]) -> list[dict]:
    """Rows for every run dir under ``paths`` (sweep dirs or run dirs), with the Pareto front marked. Jobs are named
    by their path under the run dirs' common parent (a sweep's job numbers), wherever the summary is written."""
    dirs = [d for p in paths for d in run_dirs(p)]
    base = Path(os.path.commonpath([str(d.resolve().parent) for d in dirs])) if dirs else Path()
    rows = [job_row(d, base) for d in dirs]
    front = {id(r) for r in pareto_front(rows)}
    for r in rows:
        r["pareto"] = id(r) in front
    return rows


def columns(rows: list[dict]) -> list[str]:
    """The fixed columns, then each stage's bytes/mAP columns in the order the runs wrote their stages."""
    stage_cols = []
    for r in rows:
        stage_cols += [k for k in r if k not in HEAD and k not in TAIL and k not in stage_cols]
    return HEAD + stage_cols + TAIL


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns(rows), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


def best(rows: list[dict]) -> dict | None:
    """The feasible job with the highest INT8 mAP50-95 (ties: the smaller model)."""
    ok = [r for r in rows if r["status"] == OK and r.get("score") is not None]
    return max(ok, key=lambda r: (r["score"], -(r.get("int8_bytes") or 0)), default=None)
