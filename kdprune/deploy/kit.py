"""The deploy kit of a finished run: what the MCU engineer adds to their firmware project beside the C library.

``write_kit(run_dir)`` reads the run's device file (``export/model_int8.tflite``) and summary.json, and writes
``deploy/``:

- ``kdp_model_data.c`` / ``.h``: the file as a ``const``, 16-byte aligned C array in its own linker section
  (``.kdp_model``, so a linker script can place it in flash), and its length;
- ``kdp_model_io.h``: the I/O contract: input shape (NHWC int8), the pixel -> int8 mapping (RGB, letterbox gray 114,
  /255, the input's scale and zero point), per detection level the TFLM output indices of its box and class tensors
  with their shapes, scales, zero points and strides, ``nc``, ``reg_max``, the class names, the measured arena;
- ``kdp_postprocess.c`` / ``.h``: the C99 library (copied from the package);
- ``main.cc``: a TFLite Micro example with a ``MicroMutableOpResolver`` of exactly the file's operators, the arena from
  the measured one plus a margin, one frame, the detections printed;
- ``README.md``: which files go where.

Everything is written to a temporary sibling and renamed into place, so a failure leaves no half-written kit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdprune.deploy import C_DIR
from kdprune.errors import UserError
from kdprune.export.flatbuffer import TFLiteFile
from kdprune.stage_rows import TFLITE_INT8

ARENA_MARGIN = 1.10  # TFLM's arena can differ by build options (e.g. logging, alignment): 10 % above the measured one

# TFLite builtin -> TFLite Micro's MicroMutableOpResolver method (tensorflow/lite/micro/micro_mutable_op_resolver.h)
RESOLVER = {
    "ADD": "AddAdd", "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D",
    "DEQUANTIZE": "AddDequantize", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "HARD_SWISH": "AddHardSwish", "LEAKY_RELU": "AddLeakyRelu", "LOGISTIC": "AddLogistic",
    "MAX_POOL_2D": "AddMaxPool2D", "MAXIMUM": "AddMaximum", "MEAN": "AddMean", "MINIMUM": "AddMinimum",
    "MUL": "AddMul", "PAD": "AddPad", "QUANTIZE": "AddQuantize", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "STRIDED_SLICE": "AddStridedSlice",
    "SUB": "AddSub", "TANH": "AddTanh", "TRANSPOSE": "AddTranspose",
}


@dataclass
class Tensor:
    index: int  # TFLM's input/output index
    shape: list[int]
    scale: float
    zero_point: int


@dataclass
class IOContract:
    input: Tensor
    boxes: list[Tensor]
    classes: list[Tensor]
    strides: list[float]
    nc: int
    reg_max: int
    names: list[str]
    ops: list[str]  # the file's operator types, sorted
    arena_bytes: int | None
    end2end: bool = False  # a one-to-one (NMS-free, YOLO26) head: top-k, no NMS (summary.json's "head")


def _tensor(f: TFLiteFile, index: int, t: int) -> Tensor:
    q = f.g.tensors[t].quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise UserError(f"the TFLite file's tensor {t} is not per-tensor int8; not a kdprune device file")
    return Tensor(index, f.shape(t), float(np.float32(q.scale[0])), int(q.zeroPoint[0]))


def read_contract(run_dir: Path) -> IOContract:
    """The I/O contract of the run's device file, from the file itself (its signature names the outputs ``box<i>`` /
    ``cls<i>``, as ``kdprune.yolo.rawhead.RawHeadModel`` writes them) and summary.json (class names, imgsz, arena)."""
    path, summary_path = run_dir / "export" / "model_int8.tflite", run_dir / "summary.json"
    if not path.is_file() or not summary_path.is_file():
        raise UserError(f"{run_dir}: no export/model_int8.tflite (and summary.json) here; the kit is built from a "
                        "finished run with export.formats including tflite_int8")
    summary = json.loads(summary_path.read_text())
    f = TFLiteFile(path)
    sig = (f.model.signatureDefs or [None])[0]
    if sig is None or len(f.g.inputs) != 1:
        raise UserError(f"{path}: no signature or not one input; not a kdprune device file (unknown head layout)")
    outs = {o.name.decode() if isinstance(o.name, bytes) else o.name: int(o.tensorIndex) for o in sig.outputs}
    order = [int(t) for t in f.g.outputs]  # TFLM numbers outputs in the subgraph's order
    nl = sum(1 for n in outs if n.startswith("box"))
    if nl == 0 or any(f"{k}{i}" not in outs for i in range(nl) for k in ("box", "cls")):
        raise UserError(f"{path}: outputs {sorted(outs)}; expected box0, cls0, box1, ... (unknown head layout)")
    boxes = [_tensor(f, order.index(outs[f"box{i}"]), outs[f"box{i}"]) for i in range(nl)]
    classes = [_tensor(f, order.index(outs[f"cls{i}"]), outs[f"cls{i}"]) for i in range(nl)]
    inp = _tensor(f, 0, int(f.g.inputs[0]))
    if len(inp.shape) != 4 or inp.shape[3] != 3:
        raise UserError(f"{path}: input shape {inp.shape}; expected (1, H, W, 3)")
    strides = [inp.shape[1] / b.shape[1] for b in boxes]
    nc, reg_max = classes[0].shape[3], boxes[0].shape[3] // 4
    names = list(summary.get("per_class") or {}) or [f"class{i}" for i in range(nc)]
    if len(names) != nc:
        names = [f"class{i}" for i in range(nc)]
    row = next((r for r in summary.get("stages") or [] if r.get("stage") == TFLITE_INT8), {})
    end2end = (summary.get("head") or {}).get("postprocess") == "top-k"  # runs before it: one-to-many, NMS
    return IOContract(inp, boxes, classes, strides, nc, reg_max, names, sorted({n for _, n, _ in f.ops}),
                      row.get("arena_bytes"), end2end)


def _c_array(data: bytes) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    return ",\n    ".join(rows)


def model_data(data: bytes) -> tuple[str, str]:
    """``(header, source)`` of the model as a C array."""
    header = ("/* The model (kdprune's TFLite INT8 device file), generated: do not edit. */\n"
              "#ifndef KDP_MODEL_DATA_H\n#define KDP_MODEL_DATA_H\n\n"
              "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
              "extern const unsigned char kdp_model[];\n"
              f"#define KDP_MODEL_LEN {len(data)}u\n\n"
              "#ifdef __cplusplus\n}\n#endif\n\n#endif /* KDP_MODEL_DATA_H */\n")
    source = ("/* The model as a C array: const (flash), 16-byte aligned (TFLM reads it in place), in section\n"
              " * .kdp_model so a linker script can place it. Generated: do not edit. */\n"
              "#include \"kdp_model_data.h\"\n\n"
              "#if defined(__GNUC__) || defined(__clang__)\n"
              "#define KDP_MODEL_ATTR __attribute__((aligned(16), section(\".kdp_model\")))\n"
              "#else\n#define KDP_MODEL_ATTR\n#endif\n\n"
              f"const unsigned char kdp_model[{len(data)}] KDP_MODEL_ATTR = {{\n    {_c_array(data)}\n}};\n")
    return header, source


def io_header(c: IOContract, conf: float, iou: float, max_det: int) -> str:
    """``kdp_model_io.h``: every number the firmware needs to feed the model and read its outputs."""
    _, h, w, _ = c.input.shape
    lines = ["/* The model's I/O contract, generated by kdprune from the file: do not edit. */",
             "#ifndef KDP_MODEL_IO_H", "#define KDP_MODEL_IO_H", "",
             "/* Input: one RGB image, letterboxed (aspect kept, centered, padded with gray 114) to",
             " * KDP_INPUT_H x KDP_INPUT_W, NHWC int8:",
             " *   q = clamp(round(pixel / 255 / KDP_INPUT_SCALE) + KDP_INPUT_ZERO_POINT, -128, 127).",
             " * Boxes come out in pixels of this letterboxed input. */",
             f"#define KDP_INPUT_H {h}", f"#define KDP_INPUT_W {w}", "#define KDP_INPUT_C 3",
             f"#define KDP_INPUT_SCALE {c.input.scale!r}f", f"#define KDP_INPUT_ZERO_POINT {c.input.zero_point}", "",
             f"#define KDP_NC {c.nc}", f"#define KDP_REG_MAX {c.reg_max}", f"#define KDP_NL {len(c.boxes)}", "",
             f"#define KDP_CONF {conf!r}f  /* defaults for kdp_config_t: class-score threshold, NMS IoU, boxes out */",
             f"#define KDP_IOU {iou!r}f", f"#define KDP_MAX_DET {max_det}",
             "#define KDP_MULTI_LABEL 0  /* 0: the best class per anchor (a device); 1: every class over conf */",
             f"#define KDP_END2END {int(c.end2end)}  /* "
             + ("1: a one-to-one (NMS-free) head: top-k, no NMS; KDP_IOU unused */" if c.end2end else
                "0: a one-to-many head: class-wise NMS */"),
             f"#define KDP_ANCHORS {sum(b.shape[1] * b.shape[2] for b in c.boxes)}", ""]
    if c.arena_bytes:
        margin = f"{ARENA_MARGIN - 1:.0%}"
        lines += [f"/* TFLite Micro's tensor arena, measured: {c.arena_bytes} B; with a {margin} margin: */",
                  f"#define KDP_ARENA_BYTES {int(c.arena_bytes * ARENA_MARGIN + 15) // 16 * 16}", ""]
    lines.append("/* Per level i: TFLM output indices, shapes (NHWC), quantization, stride. */")
    for i, (b, k, s) in enumerate(zip(c.boxes, c.classes, c.strides)):
        lines += [f"#define KDP_L{i}_BOX_OUTPUT {b.index}", f"#define KDP_L{i}_CLS_OUTPUT {k.index}",
                  f"#define KDP_L{i}_H {b.shape[1]}", f"#define KDP_L{i}_W {b.shape[2]}",
                  f"#define KDP_L{i}_STRIDE {s!r}f",
                  f"#define KDP_L{i}_BOX_SCALE {b.scale!r}f", f"#define KDP_L{i}_BOX_ZERO_POINT {b.zero_point}",
                  f"#define KDP_L{i}_CLS_SCALE {k.scale!r}f", f"#define KDP_L{i}_CLS_ZERO_POINT {k.zero_point}"]
    names = ", ".join(json.dumps(n) for n in c.names)
    lines += ["", f"#define KDP_CLASS_NAMES {{{names}}}", "", "#endif /* KDP_MODEL_IO_H */", ""]
    return "\n".join(lines)


def resolver(ops: list[str]) -> list[str]:
    """The resolver calls for exactly ``ops``; an operator TFLM's resolver is not mapped for here is an error."""
    unknown = [o for o in ops if o not in RESOLVER]
    if unknown:
        raise UserError(f"the file has operators this kit cannot register in TFLite Micro: {', '.join(unknown)}")
    return [f"  resolver.{RESOLVER[o]}();" for o in ops]


def example(c: IOContract) -> str:
    """``main.cc``: TFLite Micro running one frame through the model and the post-processing."""
    calls = "\n".join(resolver(c.ops))
    levels = ",\n".join(
        f"      {{interpreter.output({b.index})->data.int8, interpreter.output({k.index})->data.int8, KDP_L{i}_H, "
        f"KDP_L{i}_W, KDP_L{i}_STRIDE, KDP_L{i}_BOX_SCALE, KDP_L{i}_BOX_ZERO_POINT, KDP_L{i}_CLS_SCALE, "
        f"KDP_L{i}_CLS_ZERO_POINT}}" for i, (b, k) in enumerate(zip(c.boxes, c.classes)))
    arena = "KDP_ARENA_BYTES" if c.arena_bytes else "(512 * 1024)"
    return f"""// TFLite Micro example, generated by kdprune: one frame through the model and the post-processing.
// On NXP's eIQ Neutron, a file converted by NXP's Neutron converter adds its NEUTRON_GRAPH custom operator:
// register it here as NXP's MCUXpresso SDK examples do (resolver.AddCustom("NeutronGraph", ...)).
#include <cstdio>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" {{
#include "kdp_model_data.h"
#include "kdp_model_io.h"
#include "kdp_postprocess.h"
}}

namespace {{
alignas(16) uint8_t tensor_arena[{arena}];
kdp_det_t scratch[KDP_ANCHORS];
kdp_det_t dets[KDP_MAX_DET];
const char *const class_names[KDP_NC] = KDP_CLASS_NAMES;
}}  // namespace

int main() {{
  const tflite::Model *model = tflite::GetModel(kdp_model);
  tflite::MicroMutableOpResolver<{len(c.ops)}> resolver;
{calls}
  tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, sizeof(tensor_arena));
  if (interpreter.AllocateTensors() != kTfLiteOk) {{
    std::printf("AllocateTensors failed: the arena is too small\\n");
    return 1;
  }}
  int8_t *input = interpreter.input(0)->data.int8;  // fill: KDP_INPUT_H x KDP_INPUT_W x 3, see kdp_model_io.h
  for (int i = 0; i < KDP_INPUT_H * KDP_INPUT_W * KDP_INPUT_C; ++i) input[i] = (int8_t)KDP_INPUT_ZERO_POINT;
  if (interpreter.Invoke() != kTfLiteOk) return 1;
  const kdp_level_t levels[KDP_NL] = {{
{levels}}};
  const kdp_config_t cfg = {{KDP_NC, KDP_REG_MAX, KDP_NL, KDP_CONF, KDP_IOU, KDP_MAX_DET, KDP_MULTI_LABEL,
                             KDP_END2END}};
  kdp_stats_t stats;
  const int n = kdp_postprocess(&cfg, levels, scratch, KDP_ANCHORS, dets, &stats);
  for (int i = 0; i < n; ++i)
    std::printf("%s %.3f [%.1f %.1f %.1f %.1f]\\n", class_names[dets[i].cls], dets[i].score, dets[i].x1,
                dets[i].y1, dets[i].x2, dets[i].y2);
  std::printf("%d boxes; %d of %d anchors over the int8 threshold\\n", n, stats.candidates, stats.anchors);
  return 0;
}}
"""


README = """# kdprune deploy kit

What to add to the firmware project (MCUXpresso or any CMake/Make project with TensorFlow Lite Micro):

- `kdp_model_data.c`, `kdp_model_data.h`: the model ({bytes:,} B) as a `const` array in section `.kdp_model`
  (place it in flash in the linker script; it is 16-byte aligned, TFLM reads it in place).
- `kdp_model_io.h`: input size and int8 mapping, outputs per level, classes, `KDP_ARENA_BYTES` ({arena}).
- `kdp_postprocess.c`, `kdp_postprocess.h`: C99, no dynamic allocation; `kdp_postprocess()` turns the int8 outputs
  into boxes (class threshold in the int8 domain, DFL, class-wise NMS; top-k and no NMS for an NMS-free head,
  `KDP_END2END` 1). Scratch: `KDP_ANCHORS` entries ({post} for this file).
- `main.cc`: the TFLM example: the op resolver with exactly the file's {n_ops} operators ({ops}), one frame, the
  detections printed. Defines: none beyond TFLM's own.

Defaults: `KDP_CONF` {conf}, `KDP_IOU` {iou}, `KDP_MAX_DET` {max_det} (regenerate with
`python -m kdprune.deploy RUN_DIR --conf C --iou I --max-det N`).
"""


def check_settings(conf: float, iou: float, max_det: int, *, key: str = "--") -> None:
    """The kit's thresholds, as a UserError naming ``key`` + the setting (``--conf`` on the command line,
    ``export.deploy.conf`` in the config, checked before training)."""
    for name, v in (("conf", conf), ("iou", iou)):
        if not 0 < float(v) < 1:
            raise UserError(f"{key}{name}={v}: must be in (0, 1)")
    if int(max_det) < 1:
        raise UserError(f"{key}{'max-det' if key == '--' else 'max_det'}={max_det}: must be >= 1")


def write_kit(run_dir: str | Path, *, conf: float = 0.25, iou: float = 0.7, max_det: int = 300) -> Path:
    """Write ``<run_dir>/deploy/`` (atomically) and return it."""
    run_dir = Path(run_dir)
    check_settings(conf, iou, max_det)
    c = read_contract(run_dir)
    data = (run_dir / "export" / "model_int8.tflite").read_bytes()
    files = dict(zip(("kdp_model_data.h", "kdp_model_data.c"), model_data(data)))
    files["kdp_model_io.h"] = io_header(c, conf, iou, max_det)
    files["main.cc"] = example(c)
    files["README.md"] = README.format(bytes=len(data), arena=f"{c.arena_bytes:,} B measured" if c.arena_bytes else
                                       "not measured", n_ops=len(c.ops), ops=", ".join(c.ops), conf=conf, iou=iou,
                                       max_det=max_det, post="top-k" if c.end2end else "NMS")
    final = run_dir / "deploy"
    tmp = Path(tempfile.mkdtemp(prefix=".deploy-", dir=run_dir))
    tmp.chmod(0o755)
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        for src in ("kdp_postprocess.c", "kdp_postprocess.h"):
            shutil.copy2(C_DIR / src, tmp / src)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
