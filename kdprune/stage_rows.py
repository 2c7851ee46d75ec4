"""The report's rows: one per model a run measures (``kdprune.export.stages`` writes them, ``kdprune.report`` reads
them back from summary.json). Each stage is named once here, with what it is checked against and whether it is a
deployable result; the fidelity check, the sweep's "INT8 mAP" and the report take these entries, not copies of the
strings. A new export adds its stage here and its writer to ``kdprune.export.formats.FORMATS``.

No torch here: the report is rebuilt from run-dir files alone.
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

from kdprune.registry import Registry

DENSE_REFERENCE = "dense reference"
TEACHER = "teacher"
BEFORE_PRUNING = "student before pruning"
PRUNED_FP32 = "pruned fp32"
STUDENT_FP32 = "student fp32"
QAT = "QAT fake-quant"
PTQ = "PTQ baseline"
ONNX_FP32 = "ONNX fp32"
ONNX_INT8 = "ONNX INT8"
TFLITE_INT8 = "TFLite INT8"  # the device file
TFLITE_PTQ = "TFLite PTQ"


class Stage(NamedTuple):
    """``references``: the rows an export is checked against (the first present), ``tolerance`` the largest
    |mAP50-95 difference| expected from it (None: not checked); ``deploy_rank``: preference as the run's deployable
    INT8 result (0 first; None: not a deployable)."""

    references: tuple[str, ...] = ()
    tolerance: float | None = None
    deploy_rank: int | None = None


# The tolerances: ONNX fp32 runs the same float graph. The INT8 exports run the same integer graph as the fake-quant
# or PTQ model, with every scale equal (checked on the TFLite file), but integer kernels round where PyTorch's float
# emulation of them rounds differently, and a sigmoid turns a 1-LSB difference into up to 64 * s_in LSB (slope 1/4,
# output scale 1/256). Measured on the embedded set's 200 val images: the file within 0.0005-0.0017 of its graph; on a
# 32-image val set 0.018 below it (small val sets can fail this check: it is a verdict on what the user would deploy).
STAGES: Registry[Stage] = Registry("report stage")
STAGES.register(DENSE_REFERENCE, Stage())
STAGES.register(TEACHER, Stage())
STAGES.register(BEFORE_PRUNING, Stage())
STAGES.register(PRUNED_FP32, Stage())
STAGES.register(STUDENT_FP32, Stage())
STAGES.register(QAT, Stage(deploy_rank=2))
STAGES.register(PTQ, Stage(deploy_rank=3))
STAGES.register(ONNX_FP32, Stage((PRUNED_FP32, STUDENT_FP32), 0.002))
STAGES.register(ONNX_INT8, Stage((QAT,), 0.01, deploy_rank=1))
STAGES.register(TFLITE_INT8, Stage((QAT, PTQ), 0.015, deploy_rank=0))
STAGES.register(TFLITE_PTQ, Stage((PTQ,), 0.015))

# The artifact a user deploys, in order of preference: its mAP is "the INT8 mAP" of a run.
DEPLOY_ORDER = tuple(sorted((n for n, s in STAGES.items() if s.deploy_rank is not None),
                            key=lambda n: STAGES[n].deploy_rank))


# One row of summary.json's ``stages`` (report.md's table). Device rows add ``tflm``, ``arena_bytes``, ``npu``,
# ``part``, ``target``; checked exports add ``check``; status is "ok" or "failed" (``note`` says why).
Row = TypedDict("Row", {"stage": str, "params": "int | None", "gflops": "float | None", "bytes": "int | None",
                        "mAP50": "float | None", "mAP50-95": "float | None", "latency_ms": "float | None",
                        "artifact": "str | None", "status": str, "note": str}, total=False)
