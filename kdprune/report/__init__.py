"""What a run and a sweep cost: report.md per run (``markdown.py``); ``sweep_summary.csv``, ``pareto.png`` and
``best.yaml`` per sweep (``sweep.py``, ``pareto.py``), rebuilt at any time with ``python -m kdprune.report PATH``."""

from kdprune.report.markdown import margin_line, stage_table, teacher_margin, write_report
from kdprune.report.summary import summarize
from kdprune.report.sweep import collect, deployed, score, write_csv

__all__ = ["collect", "deployed", "margin_line", "score", "stage_table", "summarize", "teacher_margin", "write_csv",
           "write_report"]
