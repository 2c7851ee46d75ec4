"""What a sensitivity run writes: ``sensitivity.csv``, the ``sensitivity.png`` heat-map and ``prune_ratios.yaml``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLUMNS = ("layer", "branch", "module", "ratio", "channels_before", "channels_after", "params", "int8_bytes",
           "mAP50", "mAP50-95", "drop_mAP50", "drop_mAP50-95")


def _label(row: dict) -> str:
    return f"{row['layer']} {row['module']}" + (f" {row['branch']}" if row["branch"] else "")


def write_csv(path: Path, rows: list[dict]) -> None:
    """One row per group x ratio, in ``COLUMNS`` order."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_heatmap(path: Path, rows: list[dict], ratios: list[float], title: str) -> None:
    """Groups (rows, labelled ``'i Type'``) x ratios (columns), coloured and annotated with the mAP50-95 drop."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(_label(r) for r in rows))
    grid = np.full((len(labels), len(ratios)), np.nan)
    for r in rows:
        grid[labels.index(_label(r)), ratios.index(r["ratio"])] = r["drop_mAP50-95"]
    span = max(float(np.nanmax(np.abs(grid))) if grid.size else 0.0, 1e-3)
    fig, ax = plt.subplots(figsize=(max(1.2 * len(ratios) + 3.2, 6.5), 0.32 * len(labels) + 1.8), dpi=110)
    # Diverging around 0: red costs mAP, blue is a (noise-sized) gain.
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("pruning ratio (share of the layer's output channels removed)")
    ax.set_title(title, fontsize=9)
    for y in range(len(labels)):
        for x in range(len(ratios)):
            if not np.isnan(grid[y, x]):
                ax.text(x, y, f"{grid[y, x]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(grid[y, x]) > 0.6 * span else "black")
    fig.colorbar(im, ax=ax, label="mAP50-95 drop vs dense")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def layer_notes(groups, before_after: dict, drops: dict) -> dict[int, str]:
    """Per layer, the comment its YAML line gets: type, widths before -> after, predicted drop (Detect: per branch)."""
    parts: dict[int, list[str]] = {}
    types: dict[int, str] = {}
    for g in groups:
        before, after = before_after[g.key]
        tag = f"{g.branch} " if g.branch else ""
        parts.setdefault(g.layer, []).append(f"{tag}{before}->{after} ch, drop ~{drops[g.key]:.4f}")
        types[g.layer] = g.module
    return {i: f"{types[i]}: {'; '.join(p)}" for i, p in parts.items()}


def write_ratios_yaml(path: Path, layer_ratios: dict, header: list[str], notes: dict[int, str]) -> None:
    """``layer_ratios`` under ``prune_ratios:`` (what ``load_layer_ratios`` reads), ``header`` lines as comments on
    top and ``notes[layer]`` as a comment after each layer's line."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines.append("prune_ratios:")
    for layer, r in sorted(layer_ratios.items()):
        value = f"[{r[0]:g}, {r[1]:g}]" if isinstance(r, list) else f"{r:g}"
        note = f"  # {notes[layer]}" if notes.get(layer) else ""
        lines.append(f"  {layer}: {value}{note}")
    path.write_text("\n".join(lines) + "\n")
