"""The Hydra callback that writes a sweep's summary when its jobs are done (``conf/hydra/default.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdprune.errors import SweepFailed
from kdprune.report.summary import summarize, summary_lines
from kdprune.report.sweep import FAILED


class SweepSummary(Callback):
    """After the last job of a multirun (any sweeper, any launcher): ``sweep_summary.csv``, ``pareto.png`` and
    ``best.yaml`` in the sweep dir. Jobs that failed are rows with their error; they stop neither the other jobs
    (see ``kdprune.__main__``) nor this summary, but the sweep then exits non-zero: 1 if a job hit a bug, 2 if
    every failure was a user error."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        out = Path(config.hydra.sweep.dir)
        rows, top = summarize([out], out)
        for line in summary_lines(rows, top, out):
            # printed: after the jobs, the root logger holds whatever handlers the last job's logging set up
            print(f"kdprune: sweep: {line}", flush=True)
        failed = [r for r in rows if r["status"] == FAILED]
        if failed:
            kinds = {json.loads(p.read_text()).get("kind") if (p := out / r["job"] / "failed.json").is_file()
                     else "export" for r in failed}
            raise SweepFailed(1 if "internal" in kinds else 2)
