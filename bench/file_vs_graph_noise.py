"""How far is the TFLite INT8 file from the graph it came from, and how much of a measured gap is the val set's size?
(issue 14's "TFLite mAP50-95 within 0.002 of the fake-quant row".)

    .venv/bin/python -m bench.file_vs_graph_noise RUN_DIR [--n-val 960] [--subset 120] [--seed 1]

With ``weights/qat_graph.pt`` in the run (the run had ``+callbacks.qat_graph._target_=bench.qat_graph.SaveQATGraph``)
the pair is the one issue 14 names: the QAT fake-quant graph and the run's own ``export/model_int8.tflite``, both
first re-scored on the run's val split against its summary.json rows (they must agree: the same graph, the same file).
Without it, the PTQ graph stands in: rebuilt from best.pt as the run's stages build it (calibrated on the same
``quant.ptq_images`` training images), scored in PyTorch (``backend.convert``: quantize/dequantize in float, as the
fake-quant row is) and as the full-integer TFLite file the exporter writes from it (the same converter, scheme and
kernels carry both graphs to a file). Files are scored on LiteRT's reference kernels (= TensorFlow Lite Micro).

Both are scored on a **larger val split of the same generator** (``data.embedded`` with ``n_val`` images and another
``seed``), over all of it and over disjoint subsets the size of the run's val split. The all-image difference is the
file's real offset from its graph; the spread of the per-subset differences is the noise one val set of that size
carries. Writes bench/results/quant/file_vs_graph_noise-{qat,ptq}.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from bench.common import RESULTS, git_rev, machine
from bench.qat_graph import load_qat_graph
from kdprune.build import hyp_from_cfg
from kdprune.data import prepare_batch, resolve_data, square_val_loader
from kdprune.export.decode import decode
from kdprune.export.runtime import TorchRunner
from kdprune.export.scoring import evaluate_runner
from kdprune.export.stages import _Outputs, calibration_images
from kdprune.export.tflite import TFLiteRunner, graph_to_tflite_int8
from kdprune.quant import backend
from kdprune.quant import per_channel as quant_per_channel
from kdprune.yolo import load_ultralytics_checkpoint, val_settings
from kdprune.yolo.metrics import DetectionEvaluator
from kdprune.yolo.rawhead import RawHeadModel, head_spec


def evaluator(names: dict, data: dict, val: dict) -> DetectionEvaluator:
    ev = DetectionEvaluator(names, distributed=False, **val)
    ev.reset(SimpleNamespace(names=dict(names), end2end=False), torch.device("cpu"), data)
    return ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n-val", type=int, default=960, help="images in the larger val split")
    ap.add_argument("--subset", type=int, default=0, help="subset size (default: the run's own n_val)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed of the larger split (the run's is 0)")
    args = ap.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    embedded = dict(cfg.data.embedded)
    subset = args.subset or int(embedded["n_val"])
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, embedded, False)
    big = resolve_data(None, cfg.cache_dir, {**embedded, "n_val": args.n_val, "seed": args.seed}, False)
    hyp, imgsz = hyp_from_cfg(cfg, data), int(cfg.data.imgsz)
    best = load_ultralytics_checkpoint(args.run / "weights" / "best.pt")[0]
    head, names = head_spec(best), RawHeadModel(best, one2one=False).output_names()
    saved = args.run / "weights" / "qat_graph.pt"
    if saved.is_file():
        graph, tfl, pair = load_qat_graph(saved), args.run / "export" / "model_int8.tflite", "QAT"
    else:
        calib = torch.from_numpy(calibration_images(data, hyp, imgsz, int(cfg.quant.ptq_images)))
        graph = backend.calibrate_ptq(RawHeadModel(best, one2one=False), list(calib.split(16)),
                                      int(max(head.strides)), per_channel=quant_per_channel(cfg.quant.granularity))
        tfl, pair = Path(tempfile.mkdtemp()) / "ptq_int8.tflite", "PTQ"
        graph_to_tflite_int8(backend.convert_for_tflite(graph), tfl, imgsz, names)
        graph = backend.convert(graph)
    runners = {"graph": TorchRunner(_Outputs(graph, names)),
               "file": TFLiteRunner(tfl, 1, output_names=names, kernels="reference")}
    val = val_settings(cfg.val)
    own = {}  # the run's own val split: the QAT pair must score what the run's summary says
    if pair == "QAT":
        rows = {r["stage"]: r["mAP50-95"] for r in json.loads((args.run / "summary.json").read_text())["stages"]}
        for k, stage in (("graph", "QAT fake-quant"), ("file", "TFLite INT8")):
            m = evaluate_runner(runners[k], square_val_loader(data, hyp, imgsz), data, strides=head.strides,
                                nc=head.nc, reg_max=head.reg_max, names=data["names"], **val)["mAP50-95"]
            own[k] = {"rescored": round(m, 4), "summary": rows[stage]}
        print("the run's val split:", own, flush=True)
    loader = square_val_loader(big, hyp, imgsz)
    n_sub = len(loader) // subset
    evs = {k: [evaluator(big["names"], big, val) for _ in range(n_sub + 1)] for k in runners}  # [-1]: all images
    for i, batch in enumerate(loader):
        batch = prepare_batch(batch, "cpu")
        img = batch["img"].numpy()
        for k, run in runners.items():
            preds = decode(run(img), head.strides, nc=head.nc, reg_max=head.reg_max, max_det=val["max_det"])
            for ev in ([evs[k][i // subset]] if i // subset < n_sub else []) + [evs[k][-1]]:
                ev.update(preds, batch)
        if (i + 1) % 120 == 0:
            print(f"  {i + 1}/{len(loader)} images", flush=True)
    m = {k: [ev.compute()["mAP50-95"] for ev in e] for k, e in evs.items()}
    diffs = [f - g for f, g in zip(m["file"][:-1], m["graph"][:-1])]
    out = {"machine": machine(), "commit": git_rev(), "run": str(args.run), "pair": pair, "own_val": own,
           "n_val": len(loader), "seed": args.seed,
           "subset": subset, "graph_all": round(m["graph"][-1], 4), "file_all": round(m["file"][-1], 4),
           "diff_all": round(m["file"][-1] - m["graph"][-1], 4),
           "diff_subsets": [round(d, 4) for d in diffs], "diff_subsets_sd": round(statistics.stdev(diffs), 4),
           "diff_subsets_max_abs": round(max(map(abs, diffs)), 4),
           **{f"{k}_subsets": [round(x, 4) for x in m[k][:-1]] for k in runners}}
    (RESULTS / "quant" / f"file_vs_graph_noise-{pair.lower()}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
