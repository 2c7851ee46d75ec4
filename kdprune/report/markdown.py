"""report.md and the console table: one row per stage (teacher → exports), what each step cost."""

from __future__ import annotations

from pathlib import Path

from kdprune.data.stats import small_objects_line
from kdprune.part import verdict_line
from kdprune.stage_rows import DENSE_REFERENCE, PRUNED_FP32, STUDENT_FP32, TEACHER

COLUMNS = [("stage", "stage"), ("params", "params"), ("gflops", "GFLOPs"), ("bytes", "file bytes (flash)"),
           ("arena_bytes", "TFLM arena (RAM)"), ("mAP50", "mAP50"), ("mAP50-95", "mAP50-95"),
           ("latency_ms", "CPU ms (b1)"), ("status", "status")]


def _cell(key: str, v) -> str:
    if v is None:
        return "—"
    if key in ("params", "bytes", "arena_bytes"):
        return f"{int(v):,}"
    if key in ("mAP50", "mAP50-95"):
        return f"{v:.4f}"
    return str(v)


def stage_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (also what the console prints)."""
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def teacher_margin(rows: list[dict]) -> dict | None:
    """Teacher minus student in mAP50-95, both rows scored by the one evaluator: against the dense reference row
    (``reference=``: the dense student of the same recipe) when there is one, else against the student this run
    trained (its fp32 best.pt). None without a scored teacher row. A teacher that is not stronger than the student
    has little to teach: the run says so in its log and report."""
    by = {r["stage"]: r for r in rows if r.get("mAP50-95") is not None}
    other = next((by[s] for s in (DENSE_REFERENCE, STUDENT_FP32, PRUNED_FP32) if s in by), None)
    if TEACHER not in by or other is None:
        return None
    t, o = by[TEACHER]["mAP50-95"], other["mAP50-95"]
    return {"vs": other["stage"], "teacher": round(t, 4), "other": round(o, 4), "delta": round(t - o, 4)}


def margin_line(m: dict) -> str:
    """The report's and the log's sentence on the teacher's margin."""
    line = f"teacher mAP50-95 {m['teacher']:.4f} vs {m['vs']} {m['other']:.4f}: {m['delta']:+.4f}"
    if m["delta"] <= 0:
        line += (" -- the teacher is not stronger than the student, so distillation has little to teach; train it "
                 "longer (teacher.epochs), start it from a checkpoint (teacher.init) or give teacher.weights")
    return line


def head_line(head: dict) -> str:
    """What the exported file's outputs are and what decodes them (summary.json's ``head``)."""
    box = "4 box distances per anchor" if head["box"] == "ltrb" else f"4 x {head['reg_max']} DFL box logits per anchor"
    which = (f"the {'one-to-one' if head['branch'] == 'one2one' else 'one-to-many'} branch "
             f"({'the other is a training-only head, not in the file' if head['two_branches'] else 'the only one'})")
    post = ("top-k, no NMS (NMS-free head)" if head["postprocess"] == "top-k" else "class-wise NMS")
    return (f"per level, {box} and {head['nc']} class logits, from {which}; the host (and the deploy kit's C "
            f"library) decodes them with {post}")


def write_report(path: str | Path, rows: list[dict], summary: dict) -> Path:
    """``report.md``: the stage table, notes per row (where each number comes from), failures."""
    path = Path(path)
    val = summary.get("val") or {}
    lines = [f"# kdprune run: {summary.get('model')} on {Path(str(summary.get('data'))).name}", "",
             f"imgsz {summary.get('imgsz')}, {summary.get('epochs')} epochs, device {summary.get('device')}, "
             f"wall time {summary.get('wall_time_s')} s.", "",
             "Every row is evaluated the same way: the val split letterboxed to imgsz, batch 1, raw outputs decoded on "
             "the host (kdprune.export.decode) and scored by ultralytics' validator "
             f"(conf {val.get('conf')}, IoU {val.get('iou')}, max_det {val.get('max_det')}). Latency: "
             "batch 1, median after warm-up, onnxruntime / LiteRT (optimized kernels) on this machine's CPU. TFLite "
             "rows are scored on LiteRT's reference kernels, bit-exact with TensorFlow Lite Micro (the MCU runtime; "
             "checked per file), and the arena is the RAM TFLite Micro needs for the file.", "",
             stage_table(rows), "", "## Notes", ""]
    if part := summary.get("part"):
        lines.append(f"- **on the device**: the device file {verdict_line(part)}")
    if head := summary.get("head"):
        lines.append(f"- **outputs**: {head_line(head)}")
    if small := summary.get("small_objects"):
        lines.append(f"- **small objects**: {small_objects_line(small)}")
    if m := (summary.get("teacher") or {}).get("margin"):
        lines.append(f"- **teacher margin**: {margin_line(m)}")
    for r in rows:
        if r.get("note") or r.get("artifact"):
            lines.append(f"- **{r['stage']}**: {r.get('note') or ''}"
                         + (f" (`{r['artifact']}`)" if r.get("artifact") else ""))
        if t := r.get("tflm"):
            lines.append(f"  - TensorFlow Lite Micro: runs with a {t['arena_bytes']:,}-byte tensor arena; on "
                         f"{t['images']} val images {100 * t['exact']:.2f} % of output elements equal to LiteRT's "
                         f"reference kernels ({100 * t['within_1_lsb']:.2f} % within 1 LSB, max {t['max_lsb']} LSB)")
        if c := r.get("check"):
            lines.append(f"  - mAP50-95 {c['delta']:+.4f} vs {c['reference']} (expected within ±{c['tolerance']}): "
                         + ("ok" if c["ok"] else "**outside**"))
    lines += _npu_lines(rows) + _target_lines(rows) + _pruning_lines(summary)
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Failed", ""] + [f"- {r['stage']}: {r['note']}" for r in failed]
    path.write_text("\n".join(lines) + "\n")
    return path


def _npu_lines(rows: list[dict]) -> list[str]:
    """The Vela compiles of the device file, as a section (none: no lines)."""
    lines: list[str] = []
    npu = [(r["stage"], n) for r in rows for n in r.get("npu") or []]
    if npu:
        lines += ["", "## On an MCU NPU (Vela)", "",
                  "The device file compiled by Arm's Vela for Ethos-U NPUs (weights in flash, arena in SRAM shared "
                  "with the CPU): operators the NPU runs and those left to the CPU, and Vela's estimate of one "
                  "inference.", "", "| file | target | NPU ops | CPU ops | SRAM bytes | flash bytes | est. ms |",
                  "|---|---|---|---|---|---|---|"]
        for stage, n in npu:
            lines.append(f"| {stage} | {n['target']} | {n['npu_ops']} | {n['cpu_ops']} | {n['sram_bytes']:,} | "
                         f"{n['flash_bytes']:,} | {n['inference_ms']} |")
        lines += [f"- CPU operator on {n['target']}: {op}" for _, n in npu for op in n["cpu_operators"]]
    return lines


def _target_lines(rows: list[dict]) -> list[str]:
    """The target's operator rules on the device file, as a section."""
    lines: list[str] = []
    for r in rows:
        if t := r.get("target"):
            found = [(rule, x) for rule, xs in t["findings"].items() for x in xs]
            lines += ["", f"## Target: {t['name']}", "",
                      f"The device file against {t['name']}'s operator rules ({', '.join(t['findings']) or 'none'}; "
                      "sources in docs/npu_targets.md). A finding is an operator the NPU compiler would leave to the "
                      "CPU as it is; the file still runs.", ""]
            lines += [f"- {rule}: {x}" for rule, x in found] or ["- no findings: every rule holds"]
    return lines


def _pruning_lines(summary: dict) -> list[str]:
    """The pruning steps and their cliffs, as a section."""
    lines: list[str] = []
    if steps := (summary.get("pruning") or {}).get("steps"):
        lines += ["", "## Pruning steps", "", "The cliff is val mAP50-95 of the EMA model just before a removal minus "
                  "just after it (0: the removal lost nothing).", "",
                  "| step | epoch | channels removed | ratio so far | params | INT8 bytes (est.) | mAP50-95 before | "
                  "after | cliff |", "|---|---|---|---|---|---|---|---|---|"]
        for s in steps:
            def f(x):
                return "—" if x is None else f"{x:.4f}"
            lines.append(f"| {s['step']} | {s['epoch']} | {s.get('channels_removed', '—')} | {s['ratio']} | "
                         f"{s['params']:,} | {s['int8_bytes']:,} | "
                         f"{f(s.get('mAP50-95_before'))} | {f(s.get('mAP50-95_after'))} | {f(s.get('cliff'))} |")
    return lines
