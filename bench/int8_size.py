"""How big is the full-INT8 TFLite file really, and how well does ``kdprune.pruning.budget.int8_bytes`` predict it?

For yolo11n and yolov8n (nc=3) at 256 px, unpruned and pruned by ``YoloPruner`` to several ratios (SplitC2f blocks,
exported as-is, the way the pruning callback leaves the model), this calibrates ``RawHeadModel(model, one2one=False)``
on 8 smooth random images (PTQ graph) and converts it with ``model_to_tflite_int8`` (litert-torch; per-channel,
per-tensor for a few), and compares the file size with the estimate. It also breaks the flatbuffer down (constant
buffers, quantization parameters, tensor names, operators, the rest) so the estimator's constants can be checked.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.int8_size            # table + bench/results/estimators/int8_bytes.json
    YOLO_OFFLINE=1 .venv/bin/python -m bench.int8_size --quick    # yolo11n ratio 0 only, no JSON

Takes ~7 min on 2 CPU cores (20 conversions of 10-25 s each, three pruning budget solves).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import RESULTS  # noqa: E402

OLD_BYTES_PER_CHANNEL = 28  # the estimator before this bench: weights + 28 B per output channel


def old_estimate(model: nn.Module) -> int:
    return sum(m.weight.numel() + OLD_BYTES_PER_CHANNEL * m.weight.shape[0]
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Image-like calibration inputs in [0, 1]: blocky low-frequency colour fields plus a little noise."""
    rng = np.random.default_rng(seed)
    lo = rng.random((n, 3, size // 8, size // 8), dtype=np.float32)
    noise = rng.random((n, 3, size, size), dtype=np.float32)
    return np.clip(0.75 * np.kron(lo, np.ones((1, 1, 8, 8), np.float32)) + 0.25 * noise, 0, 1).astype(np.float32)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm non-trivial statistics and affine parameters, as after training: at ultralytics' init every
    folded bias is zero (and equal tensors could be shared by the converter), which no trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


def build(cfg: str, ratio: float, seed: int = 0, budget: int | None = None) -> nn.Module:
    """``cfg`` (nc=3) with SplitC2f blocks, pruned by ``YoloPruner`` (l2, round_to 8) to ``ratio`` or, with
    ``budget``, to the ratio ``YoloPruner.solve`` finds for that ``int8_bytes`` budget; eval mode."""
    from ultralytics.nn.tasks import DetectionModel

    from kdprune.pruning import YoloPruner
    from kdprune.yolo import hyp_namespace, split_blocks

    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=3, verbose=False)
    model.args = hyp_namespace()
    split_blocks(model)
    trained_like(model, seed)
    if budget is not None:
        pruner = YoloPruner(model)
        ratio, _ = pruner.solve(model, "int8_bytes", budget, 64)
        pruner.apply(model, pruner.plan(model, ratio))
        model.solved_ratio = ratio
    elif ratio > 0:
        pruner = YoloPruner(model)
        pruner.apply(model, pruner.plan(model, ratio))
    return model.eval()


def to_tflite(model: nn.Module, imgsz: int, out: Path, *, per_channel: bool = True, n_calib: int = 8) -> Path:
    """The device artifact: ``model_to_tflite_int8(RawHeadModel(model, one2one=False))`` (PTQ graph -> litert-torch)."""
    from kdprune.export.tflite import model_to_tflite_int8
    from kdprune.yolo.rawhead import RawHeadModel

    return model_to_tflite_int8(RawHeadModel(model, one2one=False), out, smooth_images(n_calib, imgsz),
                                per_channel=per_channel)


def breakdown(path: str | Path) -> dict:
    """Where the bytes of a TFLite flatbuffer go (payload sizes; flatbuffer tables, vtables and padding are in
    ``other``)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    out = dict(file=len(buf), buffers=0, n_buffers=model.BuffersLength(), weights_int8=0, bias_int32=0,
               other_const=0, quant_params=0, weight_quant=0, bias_quant=0, act_quant=0, names=0, shapes=0,
               n_tensors=0, n_const=0, n_act=0, n_ops=0, op_io=0, metadata=0, sig=0)
    weight_ops = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
                  schema.BuiltinOperator.FULLY_CONNECTED}
    for b in range(model.BuffersLength()):
        out["buffers"] += model.Buffers(b).DataLength()
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        role = {}
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            out["n_ops"] += 1
            out["op_io"] += 4 * (op.InputsLength() + op.OutputsLength())
            code = model.OperatorCodes(op.OpcodeIndex())
            bc = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if bc in weight_ops:
                out["n_layers"] = out.get("n_layers", 0) + 1
                role[op.Inputs(1)] = "weight"
                if op.InputsLength() > 2 and op.Inputs(2) >= 0:
                    role[op.Inputs(2)] = "bias"
        for t in range(g.TensorsLength()):
            ten = g.Tensors(t)
            out["n_tensors"] += 1
            out["names"] += len(ten.Name() or b"")
            out["shapes"] += 4 * ten.ShapeLength()
            q = ten.Quantization()
            nq = 0 if q is None else 4 * q.ScaleLength() + 8 * q.ZeroPointLength()
            out["quant_params"] += nq
            n = model.Buffers(ten.Buffer()).DataLength() if ten.Buffer() < model.BuffersLength() else 0
            r = role.get(t)
            if r == "weight":
                out["weights_int8"] += n
                out["weight_quant"] += nq
            elif r == "bias":
                out["bias_int32"] += n
                out["bias_quant"] += nq
            elif n:
                out["other_const"] += n
            else:
                out["act_quant"] += nq
            out["n_const" if n else "n_act"] += 1
    for m in range(model.MetadataLength()):
        md = model.Metadata(m)
        out["metadata"] += model.Buffers(md.Buffer()).DataLength()
    # everything but the layers' weights, biases and their quantization parameters, per conv layer
    out["structure"] = out["file"] - out["weights_int8"] - out["bias_int32"] - out["weight_quant"] - out["bias_quant"]
    out["structure_per_layer"] = round(out["structure"] / max(out.get("n_layers", 0), 1), 1)
    out["other"] = out["file"] - out["buffers"] - out["quant_params"] - out["names"] - out["shapes"] - out["op_io"]
    return out


VARIANTS = [  # (cfg, ratio or "budget=N", per_channel, merged, imgsz or None for --imgsz)
    *[("yolo11n.yaml", r, True, False, None) for r in (0.0, 0.15, 0.3, 0.45, 0.6)],
    *[("yolov8n.yaml", r, True, False, None) for r in (0.0, 0.15, 0.3, 0.45, 0.6)],
    ("yolo11n.yaml", 0.3, True, True, None),  # C2f/C3k2 merged back (as a saved checkpoint exports)
    ("yolo11n.yaml", 0.3, True, False, 128),  # the image size only changes shapes, not sizes
    ("yolo11n.yaml", 0.0, False, False, None),
    ("yolo11n.yaml", 0.45, False, False, None),
    ("yolov8n.yaml", 0.3, False, False, None),
    # the product's case: the pruner solves for prune.target.int8_bytes (estimate within 3 % under the budget)
    ("yolo11n.yaml", "budget=2000000", True, False, None),
    ("yolo11n.yaml", "budget=1500000", True, False, None),
    ("yolov8n.yaml", "budget=2000000", True, False, None),
    # a third family (end-to-end head: the one-to-one branch is not exported, nor counted)
    ("yolo26n.yaml", 0.0, True, False, None),
    ("yolo26n.yaml", 0.3, True, False, None),
]


def run_variant(cfg: str, ratio, per_channel: bool, merged: bool, imgsz: int, work: Path) -> dict:
    from kdprune.pruning import int8_bytes
    from kdprune.yolo import merge_split_blocks

    budget = int(ratio.split("=")[1]) if isinstance(ratio, str) else None
    model = build(cfg, 0.0 if budget else ratio, budget=budget)
    ratio = round(getattr(model, "solved_ratio", ratio), 4)
    est_split = int8_bytes(model)
    if merged:
        merge_split_blocks(model)
    t0 = time.perf_counter()
    path = to_tflite(model, imgsz, work / "m.tflite", per_channel=per_channel)
    secs = time.perf_counter() - t0
    real = path.stat().st_size
    row = dict(model=cfg.removesuffix(".yaml"), ratio=ratio, budget=budget, per_channel=per_channel, merged=merged,
               imgsz=imgsz,
               est_old=old_estimate(model), est_new=est_split, est_new_merged_model=int8_bytes(model), real=real,
               convert_s=round(secs, 1), breakdown=breakdown(path))
    row["err_old_pct"] = round(100 * (row["est_old"] - real) / real, 2)
    row["err_new_pct"] = round(100 * (row["est_new"] - real) / real, 2)
    path.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="yolo11n unpruned only")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--out", default=None,
                    help="JSON path (default: bench/results/estimators/int8_bytes.json; --quick writes none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = VARIANTS[:1] if args.quick else VARIANTS
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8size-") as d:
        for cfg, ratio, pc, merged, imgsz in variants:
            try:
                rows.append(run_variant(cfg, ratio, pc, merged, imgsz or args.imgsz, Path(d)))
            except Exception as e:  # noqa: BLE001 - a family the converter refuses is reported, not fatal
                print(f"{cfg} {ratio}: {type(e).__name__}: {e}", flush=True)
                continue
            r = rows[-1]
            print(f"{r['model']:8s} r={r['ratio']:.3f} {'pc' if pc else 'pt'}{' merged' if merged else ''} "
                  f"{r['imgsz']}px real={r['real']:,} old={r['est_old']:,} ({r['err_old_pct']:+.2f} %) "
                  f"new={r['est_new']:,} ({r['err_new_pct']:+.2f} %) [{r['convert_s']} s]", flush=True)
    head = ("| model | ratio | weights | blocks | px | est old | est new | real TFLite bytes | err old | err new |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['model']} | {r['ratio']:.3f}{' (solved for ' + format(r['budget'], ',') + ')' if r['budget'] else ''}"
        f" | {'per-channel' if r['per_channel'] else 'per-tensor'} | "
        f"{'merged' if r['merged'] else 'split'} | {r['imgsz']} | {r['est_old']:,} | {r['est_new']:,} | "
        f"{r['real']:,} | {r['err_old_pct']:+.2f} % | {r['err_new_pct']:+.2f} % |" for r in rows]
    print("\n".join(lines))
    out = args.out or (None if args.quick else str(RESULTS / "estimators" / "int8_bytes.json"))
    if out:
        from kdprune.pruning import budget

        meta = {k: getattr(budget, k) for k in dir(budget) if k.startswith("INT8_")}
        Path(out).write_text(json.dumps({"constants": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
