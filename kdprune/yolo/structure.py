"""What the pruner may touch in an ultralytics detection model, and how to trace it.

The YOLO-specific knowledge torch-pruning needs: which layer types are understood, which convs must keep their output
channels (head outputs, DFL, stem, attention), which top-level layer and head branch each module belongs to, and a
forward that exposes every head branch to the graph trace.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C3, SPP, SPPF, C2f, C3k2, PSABlock
from ultralytics.nn.modules.conv import Concat, Conv
from ultralytics.nn.modules.head import Detect

from kdprune.yolo.prunable import SplitC2f

# ---- what the pruner may touch ------------------------------------------------------------------------------------
# Layer types whose channel structure the pruner understands (exact types; SplitC2f is our rewrite of C2f/C3k2).
# Anything else (segment/pose/OBB heads, RT-DETR, attention variants) is refused with a clear message rather than
# pruned into a model that no longer computes what it did.
_KNOWN_LAYERS = (Conv, SplitC2f, C2f, C3k2, C3, SPPF, SPP, C2PSA, Concat, nn.Upsample, Detect)
# How attention (C2PSA, and the PSA blocks YOLO26 puts in C3k2) is pruned. ``keep``: whole. ``ffn``: only the hidden
# width of each block's feed-forward (ffn[0] -> ffn[1]); heads, key_dim and head_dim stay as they are. Whole heads
# cannot go: ultralytics' Attention reshapes its output back to the input width (``view(B, C, H, W)``), so a model
# with fewer heads would no longer be ultralytics' module, and plain ``ultralytics.YOLO`` could not load it.
ATTENTION_MODES = ("keep", "ffn")


def check_prunable(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the layers of ``model.model`` the pruner does not know."""
    unknown = sorted({type(m).__name__ for m in model.model if type(m) not in _KNOWN_LAYERS})
    if unknown:
        raise ValueError(f"layers {', '.join(unknown)} are not supported by kdprune's pruner (supported: YOLOv8, "
                         "YOLO11 and YOLO26 detection models)")


def head_outputs(model: nn.Module) -> list[nn.Module]:
    """The Detect head's output convs (box and class logits, incl. YOLO26's one-to-one copies) and its DFL."""
    head = model.model[-1]
    out = []
    for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
        for branch in getattr(head, name, None) or []:
            out.append(branch[-1])
    dfl = getattr(head, "dfl", None)
    if dfl is not None and hasattr(dfl, "conv"):
        out.append(dfl.conv)
    return out


def frozen_modules(model: nn.Module, *, keep_stem: bool = True, attention: str = "keep") -> list[nn.Module]:
    """Modules whose output channels are never pruned: the head's outputs, the stem if ``keep_stem``, and attention
    (C2PSA, and the PSA blocks YOLO26 puts inside C3k2) except, with ``attention='ffn'``, each block's FFN hidden
    conv. torch-pruning cannot map the head reshapes (on a raw YOLO11 it runs out of memory building the index
    mapping), and the residual paths through attention would drag them in."""
    frozen = head_outputs(model)
    if keep_stem:
        frozen += [m for m in model.model[0].modules() if isinstance(m, nn.Conv2d)]
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention={attention!r}: choose one of {', '.join(ATTENTION_MODES)}")
    ffn_hidden = set()
    if attention == "ffn":
        ffn_hidden = {b.ffn[0].conv for b in model.modules() if isinstance(b, PSABlock)}
    for block in model.modules():
        if isinstance(block, (C2PSA, PSABlock)):
            frozen += [m for m in block.modules() if isinstance(m, nn.Conv2d) and m not in ffn_hidden]
    return frozen


def head_inputs(model: nn.Module) -> list[nn.Conv2d]:
    """Per detection level, the first conv of Detect's box branch (``cv2[i][0]``): the one plain conv that reads the
    level's neck feature in every family. Its input channels are that feature's channels."""
    head = model.model[-1]
    return [head.cv2[i][0].conv for i in range(head.nl)]


def head_input_channels(model: nn.Module) -> list[int]:
    """Channels of each neck feature that feeds Detect (P3, P4, P5)."""
    return [c.in_channels for c in head_inputs(model)]


def layer_index(model: nn.Module) -> dict[str, int]:
    """Module name (as in ``model.named_modules()``) -> index of the top-level layer that holds it."""
    out = {}
    for i, layer in enumerate(model.model):
        for name, _ in layer.named_modules(prefix=f"model.{i}"):
            out[name] = i
    return out


def head_branch(model: nn.Module) -> dict[str, str]:
    """Module name -> ``'reg'`` (box branch, cv2) or ``'cls'`` (class branch, cv3) for the Detect head's convs."""
    i = len(model.model) - 1
    out = {}
    for attr, kind in (("cv2", "reg"), ("cv3", "cls"), ("one2one_cv2", "reg"), ("one2one_cv3", "cls")):
        branch = getattr(model.model[-1], attr, None)
        if branch is not None:
            for name, _ in branch.named_modules(prefix=f"model.{i}.{attr}"):
                out[name] = kind
    return out


def trace_forward(model: nn.Module, x: torch.Tensor, deployed_only: bool = False) -> list[torch.Tensor]:
    """The model's forward up to the raw outputs of every Detect branch, for torch-pruning's graph trace; with
    ``deployed_only``, of the branch the device file holds (YOLO26: the one-to-one branch unless ``Detect.end2end`` is
    off), which is what the file's activations are.

    Written out (ultralytics' ``_predict_once`` layer loop) because neither of ultralytics' own modes traces whole:
    in training YOLO26's one-to-one head reads detached features, so the graph would miss it; in eval the head's
    decoding concatenates along dimensions torch-pruning cannot infer.
    """
    y, head = [], model.model[-1]
    for m in model.model:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        if m is head:
            names = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
            if deployed_only and getattr(head, "one2one_cv2", None) is not None:
                names = names[2:] if getattr(head, "end2end", False) else names[:2]
            branches = [getattr(head, a, None) for a in names]
            return [b[i](x[i]) for b in branches if b is not None for i in range(head.nl)]
        x = m(x)
        y.append(x if m.i in model.save else None)
    raise ValueError("model has no Detect head")
