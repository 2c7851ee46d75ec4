"""A sweep's summary in its dir: ``sweep_summary.csv`` (``sweep.py``'s rows), ``pareto.png`` (``pareto.py``) and
``best.yaml``, and the lines the console prints about it. Above both, so neither imports the other."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdprune.report.pareto import plot_pareto
from kdprune.report.sweep import FAILED, best, collect, write_csv


def summarize(paths: list[str | Path], out_dir: str | Path) -> tuple[list[dict], dict | None]:
    """Writes ``sweep_summary.csv``, ``pareto.png`` and ``best.yaml`` (the best feasible job's overrides and the
    command that reruns it) into ``out_dir``; returns the rows and the best row."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect(paths)
    write_csv(rows, out_dir / "sweep_summary.csv")
    plot_pareto(rows, out_dir / "pareto.png")
    top = best(rows)
    if top is not None:
        doc = {"job": top["job"], "int8_mAP50-95": top["int8_mAP50-95"], "int8_bytes": top["int8_bytes"],
               "int8_source": top["int8_source"], "budget_bytes": top.get("budget_bytes"),
               "overrides": top["overrides"].split(), "command": f"python -m kdprune {top['overrides']}".strip()}
        (out_dir / "best.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=1000))
    else:
        (out_dir / "best.yaml").unlink(missing_ok=True)
    return rows, top


def summary_lines(rows: list[dict], top: dict | None, out_dir: str | Path) -> list[str]:
    """What the console says when a sweep's summary is written."""
    out_dir = Path(out_dir)
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    lines = [f"{len(rows)} jobs ({', '.join(f'{n} {s}' for s, n in counts.items())}) -> "
             f"{out_dir / 'sweep_summary.csv'}, {out_dir / 'pareto.png'}"]
    lines += [f"job {r['job']} {r['status']}: {r['error']}" for r in rows if r["status"] == FAILED]
    if top is not None:
        lines.append(f"best within budget: job {top['job']}: INT8 mAP50-95 {top['int8_mAP50-95']:.4f}, "
                     f"{top['int8_bytes']:,} B ({top['int8_source']}); rerun it with: "
                     f"python -m kdprune {top['overrides']} (also in {out_dir / 'best.yaml'})")
    return lines
