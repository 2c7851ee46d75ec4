"""``pareto.png``: INT8 mAP50-95 against INT8 bytes (flash) and TFLite Micro's arena (RAM) for every job of a sweep,
the Pareto front marked."""

from __future__ import annotations

from pathlib import Path

from kdprune.report.sweep import OK, OVER, best


def labels(rows: list[dict]) -> dict[str, str]:
    """Per job, only the overrides that differ between jobs (``int8_bytes=1600000 distill=none``): what the sweep
    varied. Keys are shortened to their last component, paths to their file name."""
    parsed = {r["job"]: dict(o.split("=", 1) if "=" in o else (o, "") for o in r["overrides"].split()) for r in rows}
    keys = sorted({k for d in parsed.values() for k in d})
    varied = [k for k in keys if len({d.get(k) for d in parsed.values()}) > 1]
    def short(k: str, v: str) -> str:  # a path by its file name; the whole label kept to one readable line
        return f"{k.lstrip('+~').split('.')[-1]}={v.rstrip('/').rsplit('/', 1)[-1]}"

    out = {}
    for job, d in parsed.items():
        text = " ".join(short(k, d[k]) for k in varied if k in d) or f"job {job}"
        out[job] = text if len(text) <= 48 else text[:47] + "…"
    return out


def plot_pareto(rows: list[dict], path: str | Path) -> Path:
    """mAP against flash (the file's bytes), and against RAM (TFLite Micro's arena) where the jobs measured one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    pts = [r for r in rows if r["status"] in (OK, OVER) and r.get("int8_bytes") and r.get("int8_mAP50-95") is not None]
    arena = [r for r in pts if r.get("arena_bytes")]
    fig, axes = plt.subplots(1, 2 if arena else 1, figsize=(14 if arena else 8, 5.5), dpi=110, squeeze=False)
    _panel(axes[0][0], rows, pts, "int8_bytes", "INT8 model size, MB (TFLite file; the INT8 estimate where no TFLite "
           "was exported)", sorted({r["budget_bytes"] for r in rows if r.get("budget_bytes")}))
    if arena:
        _panel(axes[0][1], rows, arena, "arena_bytes", "RAM, MB (TFLite Micro's tensor arena for the file)", [])
    n_failed = sum(r["status"] not in (OK, OVER) for r in rows)
    fig.suptitle(f"{len(rows)} jobs: {len(pts)} measured" + (f", {n_failed} failed or incomplete" if n_failed else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _panel(ax, rows: list[dict], pts: list[dict], key: str, xlabel: str, budgets: list[int]) -> None:
    """One scatter of INT8 mAP50-95 against ``key`` (bytes), feasible and over-budget jobs, the best one starred; the
    Pareto front on the flash panel."""
    text = labels(rows)
    for status, style in ((OK, dict(marker="o", color="#3b7dd8", label="within budget")),
                          (OVER, dict(marker="x", color="#d62728", label="over budget"))):
        sel = [r for r in pts if r["status"] == status]
        if sel:
            ax.scatter([r[key] / 1e6 for r in sel], [r["int8_mAP50-95"] for r in sel], s=36, zorder=3, **style)
    front = [r for r in pts if r.get("pareto")] if key == "int8_bytes" else []
    if front:
        ax.step([r[key] / 1e6 for r in front], [r["int8_mAP50-95"] for r in front], where="post",
                color="#ff7f0e", lw=1.5, zorder=2, label="Pareto front")
        ax.scatter([r[key] / 1e6 for r in front], [r["int8_mAP50-95"] for r in front], s=110,
                   facecolors="none", edgecolors="#ff7f0e", lw=1.5, zorder=4)
    if (top := best(rows)) is not None and top.get(key):
        ax.scatter([top[key] / 1e6], [top["int8_mAP50-95"]], marker="*", s=260, color="#2ca02c", zorder=5,
                   label=f"best within budget (job {top['job']})")
    for b in budgets:
        ax.axvline(b / 1e6, color="#888", ls="--", lw=0.8, zorder=1)
        ax.text(b / 1e6, 1.0, f" budget {b / 1e6:g} MB", transform=ax.get_xaxis_transform(), fontsize=7,
                color="#555", va="top", rotation=90)
    for r in pts:
        ax.annotate(text[r["job"]], (r[key] / 1e6, r["int8_mAP50-95"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("INT8 mAP50-95 (val)")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no job has finished yet", ha="center", transform=ax.transAxes)
