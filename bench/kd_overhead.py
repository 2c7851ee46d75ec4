"""Extra cost of distillation per training step: yolo11n student step alone vs with a yolo11s teacher forward and the
KD terms (cls + LD + CWD), batch 8 at the default image size, on this machine. Weights are random (timing does not
depend on them); the data is a fixed random batch with three boxes per image.

    .venv/bin/python -m bench.kd_overhead [--imgsz 256] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time

import kdprune  # noqa: F401  (sets YOLO_OFFLINE before ultralytics is imported)
from bench.common import default_cfg, git_rev, machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--teacher", default="yolo11s.yaml")
    a = ap.parse_args()

    import torch

    from kdprune.distill import Distiller, Teacher
    from kdprune.yolo import DetectionCriterion, build_model, head_input_channels, hyp_namespace, raw_head

    names = {i: f"c{i}" for i in range(8)}
    hyp = hyp_namespace(imgsz=a.imgsz)
    student = build_model("yolo11n.yaml", None, names, hyp)
    teacher = Teacher(build_model(a.teacher, None, names, hyp))
    crit = DetectionCriterion(student)
    d = default_cfg().distill
    kd = Distiller(cls=1, ld=1, cwd=1, t_cls=d.t_cls, t_ld=d.t_ld, t_cwd=d.t_cwd, anchors=d.anchors,
                   student_channels=head_input_channels(student), teacher_channels=head_input_channels(teacher.model))
    b = a.batch
    batch = {"img": torch.rand(b, 3, a.imgsz, a.imgsz), "batch_idx": torch.arange(b).repeat_interleave(3).float(),
             "cls": torch.randint(0, 8, (3 * b, 1)).float(), "bboxes": torch.rand(3 * b, 4) * 0.4 + 0.3}

    def step(distil: bool) -> float:
        t0 = time.perf_counter()
        t = raw_head(teacher(batch["img"])) if distil else None
        preds = student(batch["img"])
        loss = crit(preds, batch)[0].sum()
        if distil:
            loss = loss + kd(raw_head(preds), t)[0] * b
        loss.backward()
        student.zero_grad(set_to_none=True)
        kd.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    out = {}
    for distil in (False, True, False, True):  # interleaved, first pass is warm-up
        times = sorted(step(distil) for _ in range(a.steps))
        out["kd" if distil else "plain"] = 1000 * times[len(times) // 2]
    res = {"imgsz": a.imgsz, "batch": b, "teacher": a.teacher, "plain_ms": round(out["plain"], 1),
           "kd_ms": round(out["kd"], 1), "extra_ms": round(out["kd"] - out["plain"], 1),
           "ratio": round(out["kd"] / out["plain"], 3), "machine": machine(), "commit": git_rev()}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
