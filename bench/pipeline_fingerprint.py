"""What the data side computes, as numbers two environments (or two commits) can be compared on, without training.

Two parts, each deterministic for a given environment:
- ``gen``: the embedded generator's images for a few indices (the pixels before JPEG and the JPEG bytes);
- ``pipe``: ultralytics' training pipeline (mosaic, random perspective, HSV, flips, letterbox: the run's own hyp) on a
  fixed set of files, for fixed seeds, one augmented sample per seed, plus the val pipeline's letterbox.

``--save out.npz`` writes the arrays; ``--against other.npz`` compares them with another environment's (mean and max
absolute pixel difference, share of identical samples, labels). The accuracy canary's environment half: a change in
a dependency that changes what the pipeline computes shows here in seconds.

    .venv/bin/python -m bench.pipeline_fingerprint --save /tmp/now.npz     # generates its files in --data-dir
    PYTHONPATH=/tmp/cv4 .venv/bin/python -m bench.pipeline_fingerprint \
        --data /tmp/kdprune_fingerprint_data/data.yaml --against /tmp/now.npz   # another OpenCV, the same files
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np

from bench import common  # noqa: F401  (the start environment, before ultralytics sets OMP_NUM_THREADS)


def versions() -> dict:
    import cv2
    import PIL
    import torch

    return {"cv2": cv2.__version__, "numpy": np.__version__, "torch": torch.__version__, "pillow": PIL.__version__}


def gen_part(kind: str, n: int) -> dict:
    import cv2

    from kdprune.data.scene import make_image

    out = {}
    for i in range(n):
        img, text = make_image(0, "train", i, 320, kind)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out[f"gen_{kind}_{i}"] = img
        out[f"gen_{kind}_{i}_jpg"] = np.frombuffer(buf.tobytes(), np.uint8)
        out[f"gen_{kind}_{i}_labels"] = np.frombuffer(text.encode(), np.uint8)
    return out


def pipe_part(data_yaml: str, seeds: int, imgsz: int, overrides: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from ultralytics.data.build import build_yolo_dataset

    from kdprune import CONF_DIR
    from kdprune.build import hyp_from_cfg
    from kdprune.data import resolve_data

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=yolo11n_mcu", f"data.yaml={data_yaml}", f"data.imgsz={imgsz}",
                                           *overrides])
    data = resolve_data(data_yaml, cfg.cache_dir, {}, check=False)
    hyp = hyp_from_cfg(cfg, data)
    train = build_yolo_dataset(hyp, data["train"], cfg.data.batch, data, mode="train", stride=32)
    val = build_yolo_dataset(hyp, data["val"], cfg.data.val_batch, data, mode="val", rect=True, stride=32)
    out = {}
    for s in range(seeds):
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        item = train[(s * 37) % len(train)]
        out[f"pipe_{s}"] = item["img"].numpy()
        out[f"pipe_{s}_labels"] = np.concatenate([item["cls"].numpy().reshape(-1, 1), item["bboxes"].numpy()], 1)
    for i in range(min(4, len(val))):
        out[f"val_{i}"] = val[i]["img"].numpy()
    return out


def compare(a: dict, b: dict) -> dict:
    rows = {}
    for group in ("gen", "pipe", "val"):
        keys = [k for k in a if k.startswith(group + "_") and k in b and not k.endswith(("_jpg", "_labels"))]
        if not keys:
            continue
        same, diffs, maxd, shape_diff = 0, [], 0, 0
        for k in keys:
            if a[k].shape != b[k].shape:
                shape_diff += 1
                continue
            d = np.abs(a[k].astype(np.int32) - b[k].astype(np.int32))
            same += int(d.max() == 0)
            diffs.append(float(d.mean()))
            maxd = max(maxd, int(d.max()))
        lab = [k for k in a if k.startswith(group + "_") and k.endswith("_labels") and k in b]
        lab_same = sum(a[k].shape == b[k].shape and np.allclose(a[k], b[k], atol=1e-6) for k in lab)
        jpg = [k for k in a if k.startswith(group + "_") and k.endswith("_jpg") and k in b]
        jpg_same = sum(a[k].shape == b[k].shape and bool((a[k] == b[k]).all()) for k in jpg)
        rows[group] = {"samples": len(keys), "identical": same, "shape_differs": shape_diff,
                       "mean_abs_diff": round(float(np.mean(diffs)) if diffs else 0.0, 4), "max_abs_diff": maxd,
                       "labels_identical": f"{lab_same}/{len(lab)}",
                       **({"jpeg_bytes_identical": f"{jpg_same}/{len(jpg)}"} if jpg else {})}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="data.yaml whose files the pipeline part reads (default: generate the embedded set "
                                  "into --data-dir, to be passed to the other environment)")
    p.add_argument("--data-dir", default="/tmp/kdprune_fingerprint_data")
    p.add_argument("--kinds", nargs="*", default=["shapes", "glyphs"])
    p.add_argument("--gen", type=int, default=8, help="generated images per kind")
    p.add_argument("--seeds", type=int, default=32, help="augmented training samples")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--set", nargs="*", default=[], help="config overrides for the pipeline part, e.g. "
                                                         "data.augment.hsv_h=0 (which transform differs?)")
    p.add_argument("--save")
    p.add_argument("--against")
    args = p.parse_args(argv)

    from kdprune.data.synth import generate

    data = args.data or str(generate(args.data_dir, n_train=64, n_val=8, kind="glyphs", workers=0))
    arrays = {}
    for kind in args.kinds:
        arrays.update(gen_part(kind, args.gen))
    arrays.update(pipe_part(data, args.seeds, args.imgsz, args.set))
    result = {"versions": versions(), "data": data}
    if args.save:
        np.savez_compressed(args.save, **arrays, __versions__=np.array(json.dumps(result["versions"])))
    if args.against:
        other = dict(np.load(args.against))
        result["against"] = json.loads(str(other.pop("__versions__")))
        result["compare"] = compare(arrays, other)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
