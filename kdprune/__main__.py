"""``python -m kdprune [+experiment=NAME] [overrides]``: the Hydra entry point (one run, or a sweep with ``-m``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
import traceback
import types
from pathlib import Path

import hydra
from omegaconf import DictConfig

from kdprune import CONF_DIR
from kdprune.errors import Interrupted, SweepFailed, UserError

_CONF = str(CONF_DIR)
_entered = False


# What a run writes before a user error can stop it (Hydra's record and log, the resolved config, TensorBoard, a
# teacher stage): all that _clean_run_dir may delete.
_RUN_WRITES = (".hydra", "__main__.log", "config.yaml", "tensorboard", "teacher")


def _clean_run_dir(run_dir: Path, keep: tuple[str, ...] = ()) -> None:
    """A run stopped by a user error leaves nothing behind (Hydra has already made its dir and .hydra/); a sweep job
    keeps ``keep`` (its overrides), so its row in the summary says which job failed. A dir that holds saved training
    state (a resumed run's) or anything a run does not write (``hydra.run.dir=`` an existing folder) is left alone."""
    if not run_dir.is_dir() or any((run_dir / d).exists() for d in ("weights", "checkpoints", "teacher/checkpoints")):
        return
    if any(p.name not in _RUN_WRITES for p in run_dir.iterdir()):
        return
    for p in run_dir.iterdir():
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if not keep and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _job_failed(run_dir: Path, error: BaseException, kind: str, t0: float) -> None:
    """A sweep job that failed: ``failed.json`` in its run dir, the error on stderr, and the sweep goes on."""
    if kind == "user":
        _clean_run_dir(run_dir, keep=(".hydra",))
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"error": f"{error}" if kind == "user" else f"{type(error).__name__}: {error}", "kind": kind,
              "wall_time_s": round(time.time() - t0, 1)}
    if kind == "internal":
        record["traceback"] = traceback.format_exc()
    (run_dir / "failed.json").write_text(json.dumps(record, indent=2))


def resume_command(run_dir: Path, overrides: list[str]) -> str:
    """The command line that resumes the run in ``run_dir`` (started with ``overrides``) where it stopped."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    return shlex.join([sys.executable, "-m", "kdprune", *keep, f"hydra.run.dir={run_dir}", "ckpt_path=last"])


def _interrupted(e: Interrupted, run_dir: Path) -> None:
    """One line on what was saved and how to go on; exit 128 + the signal's number, as a shell reports it."""
    from hydra.core.hydra_config import HydraConfig

    n = e.epoch + 1
    saved = (f"{n} finished epoch{'s' if n > 1 else ''} saved in {e.checkpoint}" if e.checkpoint is not None
             else "no finished epoch to save")
    print(f"\nkdprune: stopped by {e.signame}; {saved}; resume with: "
          f"{resume_command(run_dir, list(HydraConfig.get().overrides.task))}", file=sys.stderr)
    sys.exit(128 + e.signum)


def _check_sweep(cfg: DictConfig) -> None:
    # Lightning's DDP launcher re-runs this command line once per extra rank: under `-m` every rank would start the
    # whole sweep again. On SLURM, ranks are srun tasks instead (hydra/launcher=slurm), which works.
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy.startswith("ddp") and "SLURM_JOB_ID" not in os.environ:
        raise UserError(f"trainer.strategy={strategy} inside a local multirun would restart the sweep on every rank: "
                        "sweep on SLURM (hydra/launcher=slurm), or run the DDP jobs one at a time without -m")


@hydra.main(version_base="1.3", config_path=_CONF, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns its score (``kdprune.report.score``: INT8 mAP50-95 within the budget, negative over it),
    which is what ``+hparams_search=optuna`` maximises."""
    global _entered
    _entered = True
    # heavy imports after Hydra has parsed the command line
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    # torchao 0.18 registers an Enum with torch 2.14's pytree, which logs a deprecation warning on every start; it is
    # theirs to fix and it came before a config error's one line. Silenced for this logger only.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # TensorBoard's compat layer imports TensorFlow wherever it is installed (kdprune does not install it), only to
    # write event files its own stub writes as well; a module named tensorboard.compat.notf is TensorBoard's switch
    # for the stub.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from kdprune.report.sweep import job_row, score

    if cfg.get("task", "train") == "sensitivity":
        from kdprune.sensitivity import run
    else:
        from kdprune.train import run

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir, t0 = Path(cfg.run_dir), time.time()
    try:
        if multirun:
            _check_sweep(cfg)
        run(cfg)
    except Interrupted as e:  # a signal: the whole sweep stops too
        _interrupted(e, run_dir)
    except UserError as e:
        print(f"kdprune: error: {e}", file=sys.stderr)
        if not multirun:
            _clean_run_dir(run_dir)
            sys.exit(2)
        if not (run_dir / "summary.json").is_file():  # else: a finished run whose export failed (its rows say so)
            _job_failed(run_dir, e, "user", t0)
    except Exception as e:
        traceback.print_exc()  # our own bug: the full traceback (Hydra would shorten it)
        if not multirun:
            sys.exit(1)
        _job_failed(run_dir, e, "internal", t0)
    if cfg.get("task", "train") != "train":
        return None
    return score(job_row(run_dir, run_dir.parent))  # (its name does not matter here)


def _unknown_group_option(argv: list[str]) -> str | None:
    """``group=name`` naming no file in ``conf/group/``, as one line (Hydra's own message spans a dozen lines)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        folder = CONF_DIR / key
        if not sep or "." in key or "/" in key or not folder.is_dir() or value.startswith(("choice(", "range(")):
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for v in value.split(","):
            if v and v != "null" and v not in options:
                return f"{key}={v}: no such option; choose from {', '.join(options)}"
    return None


def main() -> None:
    if (msg := _unknown_group_option(sys.argv[1:])) is not None:
        print(f"kdprune: error: {msg}", file=sys.stderr)
        sys.exit(2)
    try:
        _hydra_main()
    except SystemExit as e:
        # Hydra reports a bad override or unknown key in one message and exits 1 before our task runs:
        # that is a user error, so it gets the user-error exit code.
        if e.code == 1 and not _entered and not isinstance(e, SweepFailed):
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
