"""Host-side decode of the exported detector's raw outputs: the reference to port to the device's host.

The exported graph (``kdprune.yolo.rawhead.RawHeadModel``) stops at the head's last convs and returns, per detection
level ``i`` (strides 8, 16, 32 for the stock models), two tensors:

* ``box_i``: ``4 * reg_max`` channels. For ``reg_max > 1`` (YOLOv8/11) they are DFL logits laid out side-major
  (channel ``side * reg_max + bin``, sides left/top/right/bottom); the distance of a side, in grid cells, is the
  expectation of its softmax over the bins, ``sum_k softmax(logits)_k * k``. For ``reg_max == 1`` (YOLO26) the four
  channels are the distances themselves.
* ``cls_i``: ``nc`` class logits; the score of a class is ``sigmoid(logit)``.

Every grid cell ``(y, x)`` of level ``i`` is one anchor at ``((x + 0.5), (y + 0.5))`` grid cells; anchors are numbered
level by level, row-major within a level. A box is ``anchor -/+ (left, top) / (right, bottom)`` in grid cells, times
the level's stride, in pixels of the (letterboxed) network input.

``decode`` returns exactly what ultralytics' ``Detect`` head returns in eval mode, so everything downstream of it
(``nms``, ultralytics' validator) is ultralytics' own code:

* normal heads: ``(B, 4 + nc, A)``, rows ``cx, cy, w, h`` (pixels) then the ``nc`` sigmoid scores;
* end-to-end heads (YOLO26's one-to-one branch, trained to need no NMS): ``(B, min(max_det, A), 6)``, rows
  ``x1, y1, x2, y2, score, class`` of the top-scoring (anchor, class) pairs, best first.

Plain torch on CPU; no ultralytics module state is involved (only its ``make_anchors`` / ``dist2bbox`` helpers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kdprune.yolo.ops import dist2bbox, make_anchors, non_max_suppression


def _as_nchw(x, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    t = t.detach().float().cpu()
    if t.ndim != 4:
        raise ValueError(f"decode: every output must be 4-D (batch, C, H, W or batch, H, W, C), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2) if channels_last else t


def dfl(box: torch.Tensor, reg_max: int) -> torch.Tensor:
    """``(B, 4 * reg_max, A)`` DFL logits -> ``(B, 4, A)`` distances in grid cells (identity for ``reg_max == 1``)."""
    if reg_max == 1:
        return box
    b, _, a = box.shape
    bins = torch.arange(reg_max, dtype=box.dtype)
    return (box.view(b, 4, reg_max, a).softmax(2) * bins.view(1, 1, reg_max, 1)).sum(2)


def topk(preds: torch.Tensor, nc: int, max_det: int = 300, agnostic: bool = False) -> torch.Tensor:
    """End-to-end selection (ultralytics' ``Detect.postprocess``): ``(B, A, 4 + nc)`` xyxy+scores ->
    ``(B, min(max_det, A), 6)`` ``x1, y1, x2, y2, score, class`` of the best (anchor, class) pairs, best first.

    Two stages, as ultralytics does them: the ``k`` anchors with the highest best-class score, then the ``k`` best of
    their ``k * nc`` (anchor, class) scores, so an anchor may appear once per class. Ties (frequent: an int8 file's
    scores take at most 256 values per level) break by anchor index, then class, where ``torch.topk`` leaves them
    unspecified: the order the kit's C library (``kdp_postprocess``) gives, so its boxes can be checked equal.
    """
    boxes, scores = preds.split([4, nc], dim=-1)
    k = min(max_det, scores.shape[1])

    def best_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # a topk whose ties keep index order
        v, i = x.sort(dim=1, descending=True, stable=True)
        return v[:, :k], i[:, :k]

    if agnostic:
        best, labels = scores.max(-1)
        conf, idx = best_first(best)
        labels = labels.gather(1, idx)
    else:
        anchor_idx = best_first(scores.max(-1)[0])[1].sort(dim=1)[0]  # (B, k), in anchor order
        cand = scores.gather(1, anchor_idx[..., None].expand(-1, -1, nc))  # (B, k, nc)
        conf, flat = best_first(cand.flatten(1))  # (B, k) over the k * nc candidates
        labels, idx = flat % nc, anchor_idx.gather(1, flat // nc)
    sel = boxes.gather(1, idx[..., None].expand(-1, -1, 4))
    return torch.cat([sel, conf[..., None], labels[..., None].float()], -1)


def decode(outputs: Sequence, strides: Sequence[float] | torch.Tensor, *, nc: int, reg_max: int,
           channels_last: bool = False, end2end: bool = False, max_det: int = 300,
           agnostic: bool = False) -> torch.Tensor:
    """Raw per-level outputs ``[box0, cls0, box1, cls1, ...]`` -> what ultralytics' ``Detect`` returns in eval mode.

    ``outputs``: numpy arrays or torch tensors, NCHW (NHWC with ``channels_last=True``), ``box_i`` with
    ``4 * reg_max`` channels and ``cls_i`` with ``nc``. ``strides``: one per level (the head's ``stride``).
    Returns a float32 CPU tensor: ``(B, 4 + nc, A)`` xywh pixel boxes + sigmoid scores, or for ``end2end`` heads
    ``(B, min(max_det, A), 6)`` xyxy + score + class (``agnostic`` is ultralytics' ``agnostic_nms`` for that top-k).
    """
    outs = [_as_nchw(o, channels_last) for o in outputs]
    boxes, clss = outs[0::2], outs[1::2]
    if len(outs) % 2 or len(boxes) != len(strides):
        raise ValueError(f"decode: expected {2 * len(strides)} outputs (box, cls per level), got {len(outs)}")
    for i, (b, c) in enumerate(zip(boxes, clss)):
        if b.shape[1] != 4 * reg_max or c.shape[1] != nc or b.shape[2:] != c.shape[2:]:
            raise ValueError(f"decode: level {i}: box {tuple(b.shape)} / cls {tuple(c.shape)} do not match "
                             f"reg_max={reg_max}, nc={nc} (channels_last={channels_last})")
    bs = boxes[0].shape[0]
    box = torch.cat([b.reshape(bs, 4 * reg_max, -1) for b in boxes], -1)  # (B, 4*reg_max, A)
    cls = torch.cat([c.reshape(bs, nc, -1) for c in clss], -1)  # (B, nc, A)

    anchors, stride = make_anchors(boxes, [float(s) for s in strides], 0.5)  # (A, 2) grid cells, (A, 1) pixels
    xy = dist2bbox(dfl(box, reg_max), anchors.T.unsqueeze(0), xywh=not end2end, dim=1) * stride.T
    y = torch.cat([xy, cls.sigmoid()], 1)  # (B, 4 + nc, A)
    return topk(y.permute(0, 2, 1), nc, max_det, agnostic) if end2end else y


def nms(preds: torch.Tensor, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, *,
        end2end: bool | None = None, agnostic: bool = False, multi_label: bool = False) -> list[np.ndarray]:
    """``decode``'s output -> per image an ``(N, 6)`` float32 array ``x1, y1, x2, y2, score, class`` (pixels of the
    network input; undo the letterbox for original-image coordinates).

    Ultralytics' own ``non_max_suppression`` (best class per box, class-aware NMS, as its predictor runs it; with
    ``multi_label`` every class over ``conf`` is a candidate, as its validator runs it for mAP). End-to-end
    output (``(B, k, 6)``; inferred from the shape when ``end2end`` is None) is only thresholded by ``conf``.
    """
    preds = torch.as_tensor(preds)
    if end2end is None:
        end2end = preds.ndim == 3 and preds.shape[-1] == 6 and preds.shape[1] != 6
    out = non_max_suppression(preds, conf, iou, agnostic=agnostic, multi_label=multi_label, max_det=max_det,
                              end2end=end2end)
    return [o[:, :6].cpu().numpy().astype(np.float32) for o in out]
