"""The student during quantization-aware training: a fake-quantized graph with DetectionModel's calling convention.

``QATDetector`` wraps the PT2E graph of ``RawHeadModel(model, feats=True)`` (the branch the model deploys) and answers
like ultralytics' ``DetectionModel``: in training a dict ``{boxes, scores, feats}`` for ultralytics' loss (and the
distiller), in eval ``(decoded, dict)`` with the decode done by the model's own ``Detect`` head, in float, outside the
INT8 graph (as the host will). The graph holds the model's own parameter tensors, so the optimizer keeps ultralytics'
parameter groups by being built over the DetectionModel (``source``).

Two-branch heads (YOLO26): the graph holds the deployed branch (the one-to-one one by default: top-k, no NMS, which
is what is quantized and exported), reading the features detached as ultralytics trains it; the other, training-only
branch runs in float on the graph's (fake-quantized) features, so E2ELoss gets ``{"one2many", "one2one"}`` as from
``Detect.forward`` and the backbone keeps learning from the one-to-many assignment.
"""

from __future__ import annotations

import torch
from torch import nn

from kdprune.quant import backend
from kdprune.yolo.rawhead import RawHeadModel, decode_head, has_one2one, head_spec


class QATDetector(nn.Module):
    def __init__(self, model: nn.Module, imgsz: int, *, per_channel: bool = True):
        super().__init__()
        head = head_spec(model)
        self.source = [model]  # a list: not a submodule (its parameters are the graph's; no double registration)
        self.nl, self.nc, self.reg_max = head.nl, head.nc, head.reg_max
        self.per_channel, self.imgsz = per_channel, imgsz
        self.names, self.stride = model.names, model.stride  # what ultralytics' validator reads from a model
        self.two_branches, self.end2end = has_one2one(model), head.end2end  # end2end: read by ultralytics' validator
        raw = RawHeadModel(model, feats=True)
        example = torch.zeros(2, 3, imgsz, imgsz, device=next(model.parameters()).device)
        self.graph = backend.prepare_qat(raw, example, int(max(head.strides)), per_channel=per_channel)
        self.bn_frozen = False
        self.observers_frozen = False

    @property
    def model(self) -> nn.Module:
        """The DetectionModel whose tensors this graph trains."""
        return self.source[0]

    def set_head_attr(self, **kwargs) -> None:
        """ultralytics' validator sets the one-to-one head's ``max_det`` / ``agnostic_nms`` through this."""
        self.model.set_head_attr(**kwargs)

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
        deployed = {
            "boxes": torch.cat([b.view(bs, 4 * self.reg_max, -1) for b in out[0:n:2]], -1),
            "scores": torch.cat([c.view(bs, self.nc, -1) for c in out[1:n:2]], -1),
            "feats": list(out[n:]),
        }
        preds = deployed
        if self.two_branches:  # the training-only branch, in float on the graph's features (Detect.forward's dict)
            head, feats = self.model.model[-1], deployed["feats"]
            if self.end2end:
                other = head.forward_head(feats, **head.one2many)
            else:  # the one-to-one branch reads detached features, as in Detect.forward
                other = head.forward_head([f.detach() for f in feats], **head.one2one)
            preds = {"one2many": other, "one2one": deployed} if self.end2end else {"one2many": deployed,
                                                                                   "one2one": other}
        if self.training:
            return preds
        return decode_head(self.model, deployed), preds

    def state(self) -> dict:
        return {"per_channel": self.per_channel, "imgsz": self.imgsz, "bn_frozen": self.bn_frozen,
                "observers_frozen": self.observers_frozen, "fake_quant": backend.describe(self.graph)}
