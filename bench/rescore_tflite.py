"""Re-score the TFLite INT8 file of finished runs on LiteRT's reference kernels (= TensorFlow Lite Micro, the MCU) and
on its optimized ones, beside the graph it came from (QAT fake-quant, else the PTQ baseline).

    .venv/bin/python -m bench.rescore_tflite [--fc-as-bmm] [--untie] RUN_DIR [RUN_DIR ...]

``--fc-as-bmm``: score a copy of each file (INT8 and PTQ) with its activation x activation FULLY_CONNECTED rewritten
as BATCH_MATMUL (``kdprune.export.tflite_fixes.activation_fc_to_batch_matmul``, the exporter does since c7e9a88), on
the reference kernels, with its TFLite Micro parity (8 val images): files exported before that fix, scored as the
device runs them. ``--untie``: the same with the LOGISTIC tables moved off rounding ties
(``kdprune.export.tflite_fixes.untie_logistic_tables``, what the exporter does since issue 13's glyphs runs); both flags
apply both fixes.
"""

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from kdprune.build import hyp_from_cfg
from kdprune.data import prepare_batch, resolve_data
from kdprune.export.scoring import evaluate_runner, square_val_loader
from kdprune.export.tflite_runner import TFLiteRunner
from kdprune.yolo import load_ultralytics_checkpoint, val_settings
from kdprune.yolo.rawhead import head_spec

FC_AS_BMM = "--fc-as-bmm" in sys.argv
UNTIE = "--untie" in sys.argv


def refixed(run: Path, data, head, loader, cfg) -> None:
    import shutil
    import tempfile

    from kdprune.export.tflite_fixes import activation_fc_to_batch_matmul, untie_logistic_tables
    from kdprune.export.tflm import tflm_parity

    for name in ("model_int8.tflite", "model_ptq_int8.tflite"):
        tmp = Path(tempfile.mkdtemp()) / name
        shutil.copy(run / "export" / name, tmp)
        n = activation_fc_to_batch_matmul(tmp) if FC_AS_BMM else 0
        untied = untie_logistic_tables(tmp) if UNTIE else []
        r = TFLiteRunner(tmp, 1, kernels="reference")
        m = evaluate_runner(r, loader, data, strides=head.strides, nc=head.nc, reg_max=head.reg_max,
                            names=data["names"], **val_settings(cfg.val))
        images = prepare_batch(next(iter(loader)))["img"][:8].numpy()
        print(run.name, name, f"{n} FC rewritten, {len(untied)} LOGISTIC untied",
              "reference mAP50-95", round(m["mAP50-95"], 4), "TFLM parity",
              tflm_parity(tmp, images, reference=r), flush=True)


def main() -> None:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    for run in (Path(a) for a in sys.argv[1:] if not a.startswith("--")):
        cfg = OmegaConf.load(run / "config.yaml")
        data = resolve_data(cfg.data.yaml, cfg.cache_dir, dict(cfg.data.embedded), False)
        hyp = hyp_from_cfg(cfg, data)
        imgsz = int(cfg.data.imgsz)
        head = head_spec(load_ultralytics_checkpoint(run / "weights" / "best.pt")[0])
        loader = square_val_loader(data, hyp, imgsz)
        if FC_AS_BMM or UNTIE:
            refixed(run, data, head, loader, cfg)
            continue
        rows = {r["stage"]: r for r in json.loads((run / "summary.json").read_text())["stages"]}
        out = {}
        for k in ("reference", "optimized"):
            r = TFLiteRunner(run / "export" / "model_int8.tflite", 1, kernels=k)
            m = evaluate_runner(r, loader, data, strides=head.strides, nc=head.nc, reg_max=head.reg_max,
                                names=data["names"], **val_settings(cfg.val))
            out[k] = round(m["mAP50-95"], 4)
        fq = rows.get("QAT fake-quant", rows.get("PTQ baseline"))["mAP50-95"]
        print(run.name, "graph", fq, out, "ref-graph", round(out["reference"] - fq, 4))


if __name__ == "__main__":
    main()
