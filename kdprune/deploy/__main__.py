"""``python -m kdprune.deploy RUN_DIR [--conf C] [--iou I] [--max-det N] [--check [--images K]]``: (re)write
RUN_DIR/deploy/, and with ``--check`` drive its C post-processing on the run's val images in TFLite Micro against
the decode that scored the file (RUN_DIR/deploy/check.json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from kdprune.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdprune.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--conf", type=float, default=0.25, help="class-score threshold in (0, 1)")
    ap.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold in (0, 1)")
    ap.add_argument("--max-det", type=int, default=300, help="at most this many boxes per frame")
    ap.add_argument("--check", action="store_true", help="check the C post-processing on the run's val images "
                    "(needs gcc): same detections as the scored decode, same mAP as the report")
    ap.add_argument("--images", type=int, default=None, help="with --check: only the first K val images")
    a = ap.parse_args(argv)
    from kdprune.deploy.kit import write_kit

    try:
        out = write_kit(a.run_dir, conf=a.conf, iou=a.iou, max_det=a.max_det)
        print(f"kdprune.deploy: wrote {out}")
        if a.check:
            from kdprune.deploy.check import check_kit, check_line
            from kdprune.deploy.host import compile_library

            with tempfile.TemporaryDirectory() as tmp:
                r = check_kit(a.run_dir, compile_library(tmp), conf=a.conf, iou=a.iou, max_det=a.max_det,
                              images=a.images)
            part = out / ".check.json.part"
            part.write_text(json.dumps(r, indent=2))
            os.replace(part, out / "check.json")
            print(f"kdprune.deploy: {check_line(r)}")
            if not r["equal"] or (r["images"] and r["row_mAP50-95"] is not None and a.images is None
                                  and abs(r["mAP50-95"] - r["row_mAP50-95"]) > 1e-4):
                raise RuntimeError(f"the C post-processing does not compute what the report scored: {r}")
    except UserError as e:
        print(f"kdprune.deploy: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
