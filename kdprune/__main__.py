"""``python -m kdprune [+experiment=NAME] [overrides]``: the Hydra entry point."""

from __future__ import annotations

import shutil
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kdprune.errors import UserError

_CONF = str(Path(__file__).resolve().parent.parent / "conf")
_entered = False


def _clean_run_dir(run_dir: Path) -> None:
    """A run stopped by a user error leaves nothing behind (Hydra has already made its dir and .hydra/)."""
    if run_dir.is_dir() and not (run_dir / "weights").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=_CONF, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    global _entered
    _entered = True
    from kdprune.train import run  # heavy imports after Hydra has parsed the command line

    try:
        summary = run(cfg)
    except UserError as e:
        _clean_run_dir(Path(cfg.run_dir))
        print(f"kdprune: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        traceback.print_exc()  # our own bug: the full traceback (Hydra would shorten it)
        sys.exit(1)
    return summary.get("mAP50-95")


def main() -> None:
    try:
        _hydra_main()
    except SystemExit as e:
        # Hydra reports a bad override or unknown key in one message and exits 1 before our task runs:
        # that is a user error, so it gets the user-error exit code.
        if e.code == 1 and not _entered:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
