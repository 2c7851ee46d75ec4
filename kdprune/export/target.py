"""The deployment target's operator rules, checked on the exported file (the device artifact), not on settings.

A target (``conf/target/``) sets the weight granularity, the channel rounding of pruning and the Vela compiles, and
names the rules below. A rule returns findings: operators the target's NPU compiler would not take as they are
(NXP's converter and Vela leave those on the Cortex-M CPU, where TFLite Micro runs them), one line each. Findings are
reported (report.md, summary.json), not failures: the file still runs, part of it more slowly. Sources of each rule:
docs/npu_targets.md. A rule is one ``@RULES.register(name)`` function here; a target is one conf/target/<name>.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdprune import CONF_DIR
from kdprune.errors import UserError
from kdprune.export.flatbuffer import TFLiteFile
from kdprune.registry import Registry

# A target's operator rules (``target.rules.<name>: setting``): rule(file, setting) -> findings, one line each.
RULES: Registry[Callable[[TFLiteFile, object], list[str]]] = Registry("target rule")

# TFLite builtins in NXP's Neutron column of the MCU operator table (mcuxsdk-middleware-tensorflow,
# docs/topics/supported_operators.md, int8); anything else runs on the CPU.
NEUTRON_OPS = {
    "ADD", "SUB", "MUL", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL",
    "CONCATENATION", "SLICE", "STRIDED_SLICE", "LOGISTIC", "SOFTMAX", "MAX_POOL_2D", "AVERAGE_POOL_2D",
    "RESIZE_NEAREST_NEIGHBOR", "PAD", "MIRROR_PAD", "TRANSPOSE", "TANH", "RELU", "RELU6", "LEAKY_RELU", "PRELU", "ABS",
    "GATHER", "ARG_MAX", "MAXIMUM", "UNIDIRECTIONAL_SEQUENCE_LSTM"}


def target_names() -> list[str]:
    """The deployment targets: one per conf/target/<name>.yaml."""
    return sorted(p.stem for p in (CONF_DIR / "target").glob("*.yaml"))


@RULES.register("batch_1")
def _batch_1(f: TFLiteFile, on: bool) -> list[str]:
    return [f"op {i} {name}: batch {f.shape(op.outputs[0])[0]}" for i, name, op in f.ops
            if on and len(f.shape(op.outputs[0])) == 4 and f.shape(op.outputs[0])[0] != 1]


@RULES.register("ops_in_table")
def _ops_in_table(f: TFLiteFile, on: bool) -> list[str]:
    count: dict[str, int] = {}
    for _, name, _ in f.ops:
        if on and name not in NEUTRON_OPS:
            count[name] = count.get(name, 0) + 1
    return [f"{n} x{k}: not in NXP's Neutron operator table (runs on the CPU)" for n, k in sorted(count.items())]


@RULES.register("matmul_zero_point_0")
def _matmul_zero_point_0(f: TFLiteFile, on: bool) -> list[str]:
    out = []
    for i, name, op in f.ops:
        if on and name == "BATCH_MATMUL":
            zps = [f.zero_point(t) for t in op.inputs[:2]]
            if any(zps):
                out.append(f"op {i} BATCH_MATMUL: input zero points {zps} (Neutron needs 0 and 0)")
    return out


@RULES.register("softmax")
def _softmax(f: TFLiteFile, limits) -> list[str]:
    out = []
    for i, name, op in f.ops:
        if limits and name == "SOFTMAX":
            s = f.shape(op.inputs[0])
            c, rows = s[-1], int(np.prod(s[:-1]))
            if c > limits["max_channels"] or rows > limits["max_rows"] or c * rows > limits["max_elements"]:
                out.append(f"op {i} SOFTMAX: {rows} rows of {c} (Neutron: <= {limits['max_rows']} rows of <= "
                           f"{limits['max_channels']}, <= {limits['max_elements']} elements)")
    return out


def _sliced_dims(f: TFLiteFile, op) -> list[int]:
    shape, begin, size = f.shape(op.inputs[0]), f.const(op.inputs[1]), f.const(op.inputs[2])
    if begin is None or size is None:
        return []
    return [d for d in range(len(shape)) if begin[d] != 0 or (size[d] not in (-1, shape[d]))]


@RULES.register("channel_multiple")
def _channel_multiple(f: TFLiteFile, n) -> list[str]:
    """Channel counts Neutron's MACs take whole (ExecuTorch's Neutron checks up to v1.3; the graph's own inputs and
    outputs, e.g. 3 image channels or nc classes, are exempt)."""
    out = []
    for i, name, op in f.ops:
        if not n:
            break
        if name == "CONCATENATION":
            axis = op.builtinOptions.axis
            dims = [f.shape(t)[axis] for t in [*op.inputs, op.outputs[0]] if t not in f.io]
            same = len({tuple(f.shape(t)) for t in op.inputs}) == 1 and axis in (-1, len(f.shape(op.inputs[0])) - 1)
            bad = [d for d in dims if d % n] if not same else []
        elif name in ("MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR"):
            bad = [f.shape(op.inputs[0])[-1]] if f.shape(op.inputs[0])[-1] % n else []
        elif name == "SLICE":
            bad = [f.shape(op.inputs[0])[d] for d in _sliced_dims(f, op) if f.shape(op.inputs[0])[d] % n]
        else:
            continue
        if bad:
            out.append(f"op {i} {name}: {', '.join(map(str, bad))} channels, not a multiple of {n}")
    return out


@RULES.register("npu_only")
def _npu_only(f: TFLiteFile, on: bool) -> list[str]:
    """Every operator Vela left on the CPU, per Ethos-U configuration."""
    return [f"{r['target']}: {op}" for r in f.npu for op in r["cpu_operators"]] if on else []


def check_target(target) -> str:
    """The configured target, validated before training (name and rule names)."""
    name = str(target.name)
    if name not in (names := target_names()):
        raise UserError(f"target={name}: unknown deployment target; choose one of {', '.join(names)}")
    for rule in target.get("rules") or {}:
        RULES.lookup(rule, "target.rules")
    return name


def target_findings(path: str | Path, rules, npu: list[dict] | tuple = ()) -> dict[str, list[str]]:
    """Per rule of the target (``{rule: setting}``), what the file (and Vela's compiles of it, ``npu``) does that
    the NPU would not take."""
    f = TFLiteFile(path, npu)
    return {rule: RULES[rule](f, setting) for rule, setting in (rules or {}).items() if setting}
