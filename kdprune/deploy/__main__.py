"""``python -m kdprune.deploy RUN_DIR [--conf C] [--iou I] [--max-det N]``: (re)write RUN_DIR/deploy/."""

from __future__ import annotations

import argparse
import sys

from kdprune.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdprune.deploy", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--conf", type=float, default=0.25, help="class-score threshold in (0, 1)")
    ap.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold in (0, 1)")
    ap.add_argument("--max-det", type=int, default=300, help="at most this many boxes per frame")
    a = ap.parse_args(argv)
    from kdprune.deploy.kit import write_kit

    try:
        out = write_kit(a.run_dir, conf=a.conf, iou=a.iou, max_det=a.max_det)
    except UserError as e:
        print(f"kdprune.deploy: error: {e}", file=sys.stderr)
        return 2
    print(f"kdprune.deploy: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
