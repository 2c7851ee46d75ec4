"""The locked environment and what a run records of it; the teacher's margin over the student in the report."""

from __future__ import annotations

import logging
from importlib import metadata

import pytest

from kdprune.environment import (
    KEY_PACKAGES,
    LOCK_FILE,
    cpu_native_bf16,
    environment,
    lock_mismatches,
    read_lock,
    warn_if_emulated_bf16,
    warn_if_unlocked,
)
from kdprune.report import margin_line, teacher_margin, write_report


def test_every_key_package_is_locked_and_installed_at_its_locked_version():
    # make install applies requirements.lock as pip constraints: a fresh .venv (CI's) holds exactly these versions.
    # Fails when pyproject.toml gains or moves a dependency without `make lock`, or the lock loses a package.
    lock = read_lock()
    missing = [p for p in KEY_PACKAGES if p.lower() not in lock]
    assert not missing, f"not in {LOCK_FILE.name}: {missing}"
    env = environment()
    assert env["lock"]["differs"] == {}, env["lock"]["differs"]
    assert env["packages"]["torch"] == metadata.version("torch") == lock["torch"]


def test_a_package_off_its_locked_version_is_named_in_the_log(tmp_path, caplog):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# header\nopencv-python==0.0.1\nNumPy=={metadata.version('numpy')}\ntorch==0.1  # note\n")
    assert read_lock(lock) == {"opencv-python": "0.0.1", "numpy": metadata.version("numpy"), "torch": "0.1"}
    env = environment(lock)
    assert env["lock"]["differs"] == {
        "torch": {"installed": metadata.version("torch"), "locked": "0.1"},
        "opencv-python": {"installed": metadata.version("opencv-python"), "locked": "0.0.1"},
    }
    with caplog.at_level(logging.WARNING, logger="kdprune"):
        warn_if_unlocked(env)
    assert "opencv-python" in caplog.text and "locked 0.0.1" in caplog.text and "numpy" not in caplog.text
    caplog.clear()
    warn_if_unlocked(environment(tmp_path / "absent.lock"))  # an installed wheel: no lock, nothing to compare
    assert caplog.text == ""
    assert lock_mismatches({"torch": None}, {"torch": "2.14.1"}) == {"torch": {"installed": None, "locked": "2.14.1"}}


@pytest.mark.parametrize("flags,native", [("fpu sse avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                                          ("fpu sse avx2 avx512f", False)])
def test_bf16_on_a_cpu_that_emulates_it_is_named_in_the_log(tmp_path, monkeypatch, caplog, flags, native):
    import kdprune.environment as E

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_native_bf16(info) is native
    assert cpu_native_bf16(tmp_path / "absent") is None  # an OS that does not say: unknown, no warning
    monkeypatch.setattr(E, "cpu_native_bf16", lambda: cpu_native_bf16(info))
    with caplog.at_level(logging.WARNING, logger="kdprune"):
        warn_if_emulated_bf16({"accelerator": "cpu", "precision": "bf16-mixed"})
        warn_if_emulated_bf16({"accelerator": "cpu", "precision": "32-true"})
        warn_if_emulated_bf16({"accelerator": "gpu", "precision": "bf16-mixed"})
    assert ("emulated and trains slower than fp32" in caplog.text) is (not native)
    assert len(caplog.records) == (0 if native else 1)  # only the CPU run that asked for bf16
    assert environment(LOCK_FILE)["cpu_bf16"] is native


def _row(stage, m):
    return {"stage": stage, "mAP50-95": m, "mAP50": m}


def test_teacher_margin_is_against_the_dense_reference_when_there_is_one(tmp_path):
    rows = [_row("dense reference", 0.30), _row("teacher", 0.35), _row("pruned fp32", 0.28),
            _row("TFLite INT8", 0.29)]
    m = teacher_margin(rows)
    assert m == {"vs": "dense reference", "teacher": 0.35, "other": 0.30, "delta": 0.05}
    assert "not stronger" not in margin_line(m)
    # no reference: against the student this run trained
    m = teacher_margin([r for r in rows if r["stage"] != "dense reference"])
    assert m["vs"] == "pruned fp32" and m["delta"] == 0.07
    assert teacher_margin([_row("pruned fp32", 0.28)]) is None  # no teacher row, no margin
    weak = teacher_margin([_row("teacher", 0.579), _row("student fp32", 0.643)])
    assert weak["delta"] == -0.064 and "not stronger than the student" in margin_line(weak)
    report = write_report(tmp_path / "report.md", rows, {"teacher": {"margin": weak}})
    assert "**teacher margin**: teacher mAP50-95 0.5790 vs student fp32 0.6430: -0.0640" in report.read_text()


def test_canary_judges_a_value_against_the_recorded_seed_band():
    from bench.canary import FLOOR, band, judge

    rec = {"shapes/plain": {"values": {"0": 0.32, "1": 0.30, "2": 0.31}, "commit": "abc"}}
    mean, b = band([0.32, 0.30, 0.31])
    assert mean == pytest.approx(0.31) and b == pytest.approx(max(3 * 0.01, FLOOR))
    assert judge(rec, "shapes/plain", 0.335)[0] == "ok"
    assert judge(rec, "shapes/plain", 0.275)[0] == "OUTSIDE"  # 0.035 below a 0.03 band
    assert judge(rec, "glyphs/plain", 0.5)[0] == "new"
    two = {"k": {"values": {"0": 0.3, "1": 0.31}, "commit": "abc"}}
    assert judge(two, "k", 0.9)[0] == "no band"  # < 3 seeds: no band, never a verdict
    assert band([0.3, 0.3, 0.3])[1] == FLOOR
