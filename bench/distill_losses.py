"""Distillation and imbalanced-data losses on the embedded (long-tailed) dataset: yolo11n, same epochs, several seeds.

Runs, each as ``python -m kdprune`` (or ultralytics' trainer for the anchor) and reads mAP50-95 and the mean AP50-95 of
the rarest classes (fewest training instances):
  none            no distillation, ultralytics' loss
  cls / ld / cwd  one KD term alone (distill=kd with the other two weights at 0)
  kd              the combination yolo11n_mcu uses (distill=kd as configured)
  ultralytics     ultralytics' built-in distillation (``distill_model=`` the same teacher .pt), the anchor
  focal           loss=focal, no KD
  class_weighted  loss=class_weighted, no KD
The teacher is obtained the way kdprune obtains it (trained once on the same data and cached), so every run shares it.

    .venv/bin/python -m bench.distill_losses --imgsz 160 --epochs 10 --teacher-epochs 20 --seeds 0 1 --out r.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kdprune  # noqa: F401  (sets YOLO_OFFLINE before ultralytics is imported)
from bench.common import ROOT, default_data_yaml, default_hyp, git_rev, machine, run_env

CONFIGS = {
    "none": ["distill=none"],
    "cls": ["distill=kd", "distill.ld=0", "distill.cwd=0"],
    "ld": ["distill=kd", "distill.cls=0", "distill.cwd=0"],
    "cwd": ["distill=kd", "distill.cls=0", "distill.ld=0"],
    "kd": ["distill=kd"],
    "focal": ["distill=none", "loss=focal"],
    "class_weighted": ["distill=none", "loss=class_weighted"],
}


def _common(a) -> list[str]:
    return ["prune=none", "quant=none", "export=none", "teacher=yolo11s", f"teacher.epochs={a.teacher_epochs}",
            f"data.imgsz={a.imgsz}", f"trainer.max_epochs={a.epochs}", "val.plot_every=0", *a.extra]


def teacher_weights(a) -> tuple[str, dict]:
    """The cached teacher for these settings, trained now if missing (kdprune's own teacher stage)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from kdprune.build import hyp_from_cfg
    from kdprune.data import resolve_data
    from kdprune.teacher_stage import obtain_teacher
    from kdprune.train import run
    from kdprune.yolo import build_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*_common(a), "distill=kd"])
    with open_dict(cfg):
        cfg.run_dir = str(a.workdir / "teacher-stage")
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, OmegaConf.to_container(cfg.data.embedded), False)
    student = build_model(cfg.model.cfg, None, data["names"], hyp_from_cfg(cfg, data))
    t = obtain_teacher(cfg, data, student, Path(cfg.run_dir), train_fn=run)
    return t.info["weights"], t.info


def rare_classes(k: int = 3) -> list[str]:
    import yaml

    data = yaml.safe_load(Path(default_data_yaml()).read_text())
    names = data["names"]
    counts = {n: 0 for n in names.values()} if isinstance(names, dict) else {n: 0 for n in names}
    labels = Path(default_data_yaml()).parent / "labels" / "train"
    lookup = names if isinstance(names, dict) else dict(enumerate(names))
    for f in labels.glob("*.txt"):
        for line in f.read_text().splitlines():
            if line.strip():
                counts[lookup[int(line.split()[0])]] += 1
    return sorted(counts, key=counts.get)[:k]


def run_kdprune(name: str, seed: int, a) -> dict:
    out = a.workdir / f"{name}-s{seed}"
    cmd = [sys.executable, "-m", "kdprune", *_common(a), *CONFIGS[name], f"seed={seed}", f"hydra.run.dir={out}"]
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, env=run_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    return {"mAP50-95": s["mAP50-95"], "mAP50": s["mAP50"], "wall_s": round(time.time() - t0, 1),
            "per_class": {k: v["AP50-95"] for k, v in s["per_class"].items()},
            "kd_ms_per_step": s.get("distill", {}).get("kd_ms_per_step")}


def run_ultralytics(seed: int, teacher: str, a) -> dict:
    from ultralytics import YOLO

    hyp = {**default_hyp(), "epochs": a.epochs, "imgsz": a.imgsz}
    data = str(default_data_yaml())
    with tempfile.TemporaryDirectory() as project:
        t0 = time.time()
        YOLO("yolo11n.yaml").train(data=data, seed=seed, device="cpu", project=project, name="run", plots=False,
                                   amp=False, verbose=False, distill_model=teacher, **hyp)
        wall = time.time() - t0
        best = Path(project) / "run" / "weights" / "best.pt"
        m = YOLO(str(best)).val(data=data, imgsz=a.imgsz, batch=16, device="cpu", plots=False, verbose=False)
    names = m.names
    return {"mAP50-95": round(float(m.box.map), 4), "mAP50": round(float(m.box.map50), 4), "wall_s": round(wall, 1),
            "per_class": {names[int(c)]: float(m.box.maps[int(c)]) for c in m.box.ap_class_index}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--configs", nargs="+", default=[*CONFIGS, "ultralytics"])
    ap.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench-distill")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more kdprune overrides for every run")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    teacher, tinfo = teacher_weights(a)
    rare = rare_classes()
    print(f"teacher {teacher}: mAP50-95 {tinfo['mAP50-95']}; rare classes {rare}", flush=True)
    results = {"machine": machine(), "commit": git_rev(), "imgsz": a.imgsz, "epochs": a.epochs,
               "teacher": tinfo, "rare_classes": rare, "runs": {}}
    for seed in a.seeds:
        for name in a.configs:
            r = run_ultralytics(seed, teacher, a) if name == "ultralytics" else run_kdprune(name, seed, a)
            r["rare_AP50-95"] = round(sum(r["per_class"].get(c, 0.0) for c in rare) / len(rare), 4)
            results["runs"].setdefault(name, {})[seed] = r
            print(f"{name:15s} seed {seed}: mAP50-95 {r['mAP50-95']:.4f}  rare {r['rare_AP50-95']:.4f}  "
                  f"({r['wall_s']:.0f}s)", flush=True)
            if a.out:
                a.out.write_text(json.dumps(results, indent=2))
    print("\nconfig           mAP50-95 (mean over seeds)   rare-class AP50-95")
    for name, runs in results["runs"].items():
        m = sum(r["mAP50-95"] for r in runs.values()) / len(runs)
        rr = sum(r["rare_AP50-95"] for r in runs.values()) / len(runs)
        each = ", ".join(f"{r['mAP50-95']:.4f}" for r in runs.values())
        print(f"{name:15s}  {m:.4f}  ({each})   {rr:.4f}")


if __name__ == "__main__":
    main()
