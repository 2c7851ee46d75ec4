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
    end2end: bool = False  # a one-to-one branch (YOLO26): its own selection, no NMS

    @property
    def nl(self) -> int:
        """Detection levels."""
        return len(self.strides)


def head_spec(model: nn.Module) -> HeadSpec:
    """The ``HeadSpec`` of an ultralytics detection model (its Detect layer)."""
    head = model.model[-1]
    return HeadSpec([float(s) for s in head.stride], int(head.nc), int(head.reg_max),
                    getattr(head, "one2one_cv2", None) is not None)


def decode_head(model: nn.Module, preds: dict) -> torch.Tensor:
    """The head's own eval-mode decode of raw ``{boxes, scores, feats}`` (ultralytics' ``Detect._inference``): what
    ``model`` returns first in eval mode, for predictions computed elsewhere (the QAT graph)."""
    return model.model[-1]._inference(preds)


def not_exported(model: nn.Module) -> set[int]:
    """ids of the modules the exported graph leaves out: the Detect head's DFL (decoded on the host) and the
    one-to-one branch of end-to-end heads (``RawHeadModel(one2one=False)`` exports the one-to-many branch)."""
    skip: set[int] = set()
    for m in model.modules():
        for attr in ("dfl", "one2one_cv2", "one2one_cv3"):
            sub = getattr(m, attr, None)
            if isinstance(sub, nn.Module):
                skip.update(id(x) for x in sub.modules())
    return skip


class RawHeadModel(nn.Module):
    """Wraps an ultralytics detection model (sharing its parameters): ``forward(img)`` returns
    ``(box_0, cls_0, box_1, cls_1, ...)``, one pair per detection level, NCHW, ``box_i`` with ``4 * reg_max``
    channels (DFL logits; ``4`` distances for YOLO26's ``reg_max=1``) and ``cls_i`` with ``nc`` class logits.

    With ``feats=True`` the Detect inputs (the neck features) are appended, for the training loss and distillation.
    End-to-end heads (YOLO26) use their one-to-one branch unless ``one2one=False``.
    """

    def __init__(self, model: nn.Module, *, one2one: bool = True, feats: bool = False):
        super().__init__()
        self.model = model
        head = model.model[-1]
        self.nl, self.nc, self.reg_max = head.nl, head.nc, head.reg_max
        self.use_one2one = bool(one2one and getattr(head, "one2one_cv2", None) is not None)
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
        out = []
        for i in range(self.nl):
            out += [box_head[i](feats[i]), cls_head[i](feats[i])]
        return tuple(out + feats) if self.return_feats else tuple(out)
