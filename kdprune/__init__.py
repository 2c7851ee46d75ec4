"""kdprune: knowledge-distillation-aware structured pruning + INT8 QAT for Ultralytics YOLO detectors."""

import os as _os
from pathlib import Path as _Path

# kdprune runs offline: ultralytics must never reach for the network (settings sync, online checks, font or
# weight downloads). YOLO_OFFLINE makes ultralytics.utils.ONLINE False; it must be set before ultralytics is
# imported, and every ultralytics import goes through a kdprune package, so this is the place.
_os.environ.setdefault("YOLO_OFFLINE", "1")

from kdprune import part as _part  # noqa: E402,F401  (registers the config's kdprune.left resolver)

__version__ = "0.1.0"
# The Hydra config tree (config.yaml and its groups) ships inside the package, so a wheel or a non-editable install
# composes; the checkout's top-level conf/ is a link to it, where users look for it.
CONF_DIR = _Path(__file__).resolve().parent / "conf"
