"""The student during quantization-aware training: a fake-quantized graph with DetectionModel's calling convention.

``QATDetector`` wraps the PT2E graph of ``RawHeadModel(model, feats=True)`` and answers like ultralytics'
``DetectionModel``: in training a dict ``{boxes, scores, feats}`` for ultralytics' loss (and the distiller), in eval
``(decoded, dict)`` with the decode done by the model's own ``Detect`` head, in float, outside the INT8 graph (as the
host will). The graph holds the model's own parameter tensors, so the optimizer keeps ultralytics' parameter groups
by being built over the DetectionModel (``source``).
"""

from __future__ import annotations

import torch
from torch import nn

from kdprune.errors import UserError
from kdprune.quant import backend
from kdprune.yolo.rawhead import RawHeadModel, decode_head, head_spec


def check_qat_model(model: nn.Module, name: str = "this model") -> None:
    """What QAT cannot train yet, as a UserError: end-to-end heads (YOLO26)."""
    if head_spec(model).end2end:
        raise UserError(f"quant=int8_qat: {name} has an end-to-end head (YOLO26), which kdprune cannot "
                        "quantize-train yet; use quant=none (INT8 exports then use PTQ)")


class QATDetector(nn.Module):
    def __init__(self, model: nn.Module, imgsz: int, *, per_channel: bool = True):
        super().__init__()
        check_qat_model(model)
        head = head_spec(model)
        self.source = [model]  # a list: not a submodule (its parameters are the graph's; no double registration)
        self.nl, self.nc, self.reg_max = head.nl, head.nc, head.reg_max
        self.per_channel, self.imgsz = per_channel, imgsz
        self.names, self.stride = model.names, model.stride  # what ultralytics' validator reads from a model
        raw = RawHeadModel(model, feats=True, one2one=False)
        example = torch.zeros(2, 3, imgsz, imgsz, device=next(model.parameters()).device)
        self.graph = backend.prepare_qat(raw, example, int(max(head.strides)), per_channel=per_channel)
        self.bn_frozen = False
        self.observers_frozen = False

    @property
    def model(self) -> nn.Module:
        """The DetectionModel whose tensors this graph trains."""
        return self.source[0]

    # ---- phases ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Train or eval mode for BN, and observers on only while training: a validation pass must not move the
        quantization ranges (they would learn from val images, and from eval-mode BN statistics)."""
        self.training = mode
        backend.set_mode(self.graph, train=mode and not self.bn_frozen)
        backend.set_observers(self.graph, enabled=mode and not self.observers_frozen)
        return self

    def freeze_bn(self) -> None:
        """Use (and stop updating) the BN running statistics: from here the fold is the one that is exported."""
        self.bn_frozen = True
        backend.set_mode(self.graph, train=False)

    def freeze_observers(self) -> None:
        self.observers_frozen = True
        backend.freeze_observers(self.graph)

    def advance(self, *, bn: bool, observers: bool) -> list[str]:
        """Freeze what is due and not frozen yet (BN statistics, quantization ranges): the one path for the QAT phase's
        epochs and for a resumed run's saved state. Returns what froze now ("bn", "observers")."""
        done = []
        if bn and not self.bn_frozen:
            self.freeze_bn()
            done.append("bn")
        if observers and not self.observers_frozen:
            self.freeze_observers()
            done.append("observers")
        return done

    @classmethod
    def from_state(cls, model: nn.Module, state: dict) -> QATDetector:
        """The graph a checkpoint's ``state()`` describes, over ``model`` (whose tensors are then loaded)."""
        qat = cls(model, state["imgsz"], per_channel=state["per_channel"])
        qat.advance(bn=bool(state.get("bn_frozen")), observers=bool(state.get("observers_frozen")))
        return qat

    # ---- forward ---------------------------------------------------------------------------------------------
    def forward(self, img: torch.Tensor):
        # Fake quantization runs in fp32: under mixed precision (trainer=gpu's 16-mixed) autocast would hand the
        # fake-quant ops fp16 activations, which they refuse, and fp16 rounding would blur the INT8 grid QAT trains for.
        with torch.autocast(img.device.type, enabled=False):
            out = self.graph(img.float())
        n, bs = 2 * self.nl, img.shape[0]
        preds = {
            "boxes": torch.cat([b.view(bs, 4 * self.reg_max, -1) for b in out[0:n:2]], -1),
            "scores": torch.cat([c.view(bs, self.nc, -1) for c in out[1:n:2]], -1),
            "feats": list(out[n:]),
        }
        if self.training:
            return preds
        return decode_head(self.model, preds), preds

    def state(self) -> dict:
        return {"per_channel": self.per_channel, "imgsz": self.imgsz, "bn_frozen": self.bn_frozen,
                "observers_frozen": self.observers_frozen, "fake_quant": backend.describe(self.graph)}
