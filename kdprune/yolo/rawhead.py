"""The detector as the device runs it: image in, per-level raw box and class logits out.

The box-distribution decode (DFL softmax + integral), the anchor grid and the final box+class concatenation are
float arithmetic that an INT8 graph handles badly (one shared scale for pixel coordinates and probabilities), so the
exported INT8 graph stops at the head's last convs and the host decodes (``kdprune.export.decode``). The same module
is what QAT trains, so the graph that is fake-quantized is the graph that is exported.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class HeadSpec(NamedTuple):
    """What the rest of kdprune needs to know about a detector's head (ultralytics' ``Detect``): the only description
    of it outside ``kdprune.yolo``. Decoding raw outputs (``kdprune.export.decode``) needs the first three."""

    strides: list[float]
    nc: int
    reg_max: int
    end2end: bool = False  # the deployed branch is one-to-one (YOLO26): top-k selection, no NMS

    @property
    def nl(self) -> int:
        """Detection levels."""
        return len(self.strides)


def has_one2one(model: nn.Module) -> bool:
    """Whether the detector's head has a one-to-one (NMS-free) branch beside its one-to-many one (YOLO26)."""
    return getattr(model.model[-1], "one2one_cv2", None) is not None


def one2one_deployed(model: nn.Module) -> bool:
    """Whether the model deploys its one-to-one branch (top-k, no NMS): ultralytics' own switch, ``Detect.end2end``
    (set by ``kdprune.yolo.models.choose_branch`` from ``model.end2end``; ultralytics 8.4 sets it from ``nms=``)."""
    return bool(getattr(model.model[-1], "end2end", False))


def head_spec(model: nn.Module) -> HeadSpec:
    """The ``HeadSpec`` of an ultralytics detection model (its Detect layer), for the branch it deploys."""
    head = model.model[-1]
    return HeadSpec([float(s) for s in head.stride], int(head.nc), int(head.reg_max), one2one_deployed(model))


def anchors_at(model: nn.Module, imgsz: int) -> int:
    """Anchors of a square ``imgsz`` input: the most rows an NMS-free head's top-k can give."""
    return sum((int(imgsz) // int(s)) ** 2 for s in head_spec(model).strides)


def head_layout(model: nn.Module) -> dict:
    """What the exported file's outputs are and what decodes them, for summary.json, the report and the deploy kit:
    ``{"branch", "postprocess", "reg_max", "strides", "nc"}``."""
    spec = head_spec(model)
    return {"branch": "one2one" if spec.end2end else "one2many", "two_branches": has_one2one(model),
            "postprocess": "top-k" if spec.end2end else "nms", "box": "ltrb" if spec.reg_max == 1 else "dfl",
            "reg_max": spec.reg_max, "nc": spec.nc, "strides": spec.strides}


def decode_head(model: nn.Module, preds: dict) -> torch.Tensor:
    """The head's own eval-mode decode of raw ``{boxes, scores, feats}`` of its deployed branch (ultralytics'
    ``Detect.forward`` after the convs: ``_inference``, and for the one-to-one branch the top-k ``postprocess``): what
    ``model`` returns first in eval mode, for predictions computed elsewhere (the QAT graph)."""
    head = model.model[-1]
    y = head._inference(preds)
    return head.postprocess(y.permute(0, 2, 1)) if one2one_deployed(model) else y


def not_exported(model: nn.Module) -> set[int]:
    """ids of the modules the exported graph leaves out: the Detect head's DFL (decoded on the host) and, for heads
    with two branches (YOLO26), the one that is not deployed (a training-only head)."""
    skip: set[int] = set()
    for m in model.modules():
        drop = () if getattr(m, "one2one_cv2", None) is None else (
            ("cv2", "cv3") if getattr(m, "end2end", False) else ("one2one_cv2", "one2one_cv3"))
        for attr in ("dfl", *drop):
            sub = getattr(m, attr, None)
            if isinstance(sub, nn.Module):
                skip.update(id(x) for x in sub.modules())
    return skip


class RawHeadModel(nn.Module):
    """Wraps an ultralytics detection model (sharing its parameters): ``forward(img)`` returns
    ``(box_0, cls_0, box_1, cls_1, ...)``, one pair per detection level, NCHW, ``box_i`` with ``4 * reg_max``
    channels (DFL logits; ``4`` distances for YOLO26's ``reg_max=1``) and ``cls_i`` with ``nc`` class logits.

    With ``feats=True`` the Detect inputs (the neck features) are appended, for the training loss and distillation.
    Two-branch heads (YOLO26) give the branch the model deploys (``one2one_deployed``), or the one ``one2one`` names.
    With ``feats`` the one-to-one branch reads the features detached, as ultralytics' ``Detect.forward`` trains it:
    its loss does not reach the backbone (an identity for the exported graph).
    """

    def __init__(self, model: nn.Module, *, one2one: bool | None = None, feats: bool = False):
        super().__init__()
        self.model = model
        head = model.model[-1]
        self.nl, self.nc, self.reg_max = head.nl, head.nc, head.reg_max
        self.use_one2one = has_one2one(model) and (one2one_deployed(model) if one2one is None else bool(one2one))
        self.return_feats = feats

    @property
    def stride(self) -> torch.Tensor:
        return self.model.model[-1].stride

    def output_names(self) -> list[str]:
        names = [f"{kind}{i}" for i in range(self.nl) for kind in ("box", "cls")]
        return names + ([f"feat{i}" for i in range(self.nl)] if self.return_feats else [])

    def neck(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The Detect inputs, by ultralytics' own layer routing (``DetectionModel._predict_once`` without its
        profiling/visualisation/embedding branches)."""
        layers, save, y = self.model.model, self.model.save, []
        for m in layers[:-1]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in save else None)
        head = layers[-1]
        return [x if j == -1 else y[j] for j in head.f]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.model.model[-1]
        feats = self.neck(x)
        box_head, cls_head = (head.one2one_cv2, head.one2one_cv3) if self.use_one2one else (head.cv2, head.cv3)
        x = [f.detach() for f in feats] if self.use_one2one and self.return_feats else feats
        out = []
        for i in range(self.nl):
            out += [box_head[i](x[i]), cls_head[i](x[i])]
        return tuple(out + feats) if self.return_feats else tuple(out)
