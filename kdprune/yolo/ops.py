"""ultralytics' box utilities that the host-side decode (kdprune.export.decode) reuses rather than re-implements."""

from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.tal import dist2bbox, make_anchors

__all__ = ["dist2bbox", "make_anchors", "non_max_suppression"]
