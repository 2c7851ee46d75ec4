"""A run interrupted by SIGINT / SIGKILL / SIGTERM resumes with the command it prints, from the saved state, and ends
with the same model as a run that was never interrupted (real subprocesses, as a user runs them)."""

from __future__ import annotations

import shlex
import shutil
import signal

import pytest
import torch

from tests.conftest import TINY, run_cli, run_main
from tests.probes import assert_starts_from, probe
from tests.test_distill_train import TEACHER

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

# 8 epochs: Taylor scores accumulate from epoch 0; step 1's channels are chosen at epoch 1 and fade over epochs 1-2,
# removed at epoch 3; step 2's fade over 3-4, removed at 5; QAT from epoch 6 (BN and ranges freeze at 7).
# 32 images = 4 batches an epoch, so a signal can land mid-epoch.
RUN = [o for o in TINY if not o.startswith(("trainer.max_epochs", "data.embedded.n_train"))] + [
    "data.embedded.n_train=32", "trainer.max_epochs=8", "val.plot_every=0",
    "prune=gradual", "prune.start_epoch=3", "prune.end_epoch=5", "prune.steps=2", "prune.fade_epochs=2",
    "prune.importance_epochs=1",
    "prune.target.ratio=0.3",
    "quant=int8_qat", "quant.start_epoch=6", "quant.freeze_bn_epoch=7", "quant.freeze_observer_epoch=7"]


def _signal_at(name: str, epoch: int, sig: str, once, batch: int = 0) -> list[str]:
    return [f"+callbacks.{name}._target_=tests.probes.SelfSignal", f"+callbacks.{name}.epoch={epoch}",
            f"+callbacks.{name}.batch={batch}", f"+callbacks.{name}.sig={sig}", f"+callbacks.{name}.once={once}"]


def _resume_line(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if "kdprune: stopped by" in ln]
    assert len(lines) == 1, stderr[-3000:]
    return shlex.split(lines[0].split("resume with: ", 1)[1])


def _final_weights(run_dir) -> dict:
    ck = torch.load(run_dir / "weights" / "last.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in ck["ema"].state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    out = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def test_sigint_mid_fade_then_sigkill_and_sigterm_mid_qat_resume_to_the_uninterrupted_model(reference, tmp_path):
    run_dir = tmp_path / "run"
    # 1. Ctrl-C during epoch 2 (step 1's channels half faded, nothing removed yet): stops at the end of that batch
    out = run_cli(*RUN, f"hydra.run.dir={run_dir}", *_signal_at("int", 2, "SIGINT", tmp_path / "int", batch=1))
    assert out.returncode == 128 + signal.SIGINT, out.stderr[-3000:]
    cmd = _resume_line(out.stderr)
    assert "2 finished epochs saved" in out.stderr and cmd[-2:] == [f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    # nothing was reported or exported from a half-trained model; the saved state is epoch 1's, mid-fade
    assert not (run_dir / "summary.json").exists() and not (run_dir / "report.md").exists()
    ckpt1 = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    pruning = ckpt1["compression"]["pruning"]
    assert ckpt1["epoch"] == 1 and not ckpt1["compression"]["history"] and ckpt1["compression"]["qat"] is None
    assert pruning["plan"] and 0 < pruning["fade"]["done"] < pruning["fade"]["steps"] and pruning["taylor"]["acc"]
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))

    # 2. resume with the printed command; this time the process is killed outright (SIGKILL: nothing runs) at the
    # start of epoch 7, in QAT: the last state on disk is epoch 6's
    out = run_cli(*cmd[3:], *_signal_at("kill", 7, "SIGKILL", tmp_path / "kill"), *probe(tmp_path / "start"))
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert_starts_from(tmp_path / "start.0", ckpt1)  # incl. the plan, fade progress and accumulated scores
    ckpt2 = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state2 = ckpt2["compression"]
    assert ckpt2["epoch"] == 6 and state2["qat"] is not None and not state2["qat"]["bn_frozen"]
    assert state2["history"] and state2["pruning"]["steps_done"] == 2  # both ran after it

    # 3. resume again; SIGTERM (a scheduler's stop) mid-batch of epoch 7, QAT with BN and ranges just frozen: it stops
    # at the end of that batch and the state on disk stays epoch 6's
    out = run_cli(*cmd[3:], *_signal_at("term", 7, "SIGTERM", tmp_path / "term", batch=2), *probe(tmp_path / "start"))
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    assert "stopped by SIGTERM; 7 finished epochs saved" in out.stderr
    assert _resume_line(out.stderr)[-2:] == [f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    assert_starts_from(tmp_path / "start.1", ckpt2)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 6

    # 4. resume once more: the run finishes, mid-QAT state restored, and ends where the uninterrupted run ended
    out = run_cli(*cmd[3:], *probe(tmp_path / "start"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_starts_from(tmp_path / "start.2", ckpt2)
    assert (run_dir / "summary.json").is_file()
    ref, got = _final_weights(reference), _final_weights(run_dir)
    assert ref.keys() == got.keys() and all(ref[k].shape == got[k].shape for k in ref)  # the architecture, exactly
    # Same seed, same CPU threads: the interrupted-and-resumed run is bit-identical to the uninterrupted one
    # (measured max |diff| = 0.0). Epoch k's shuffle, worker seeds and mosaic buffer depend only on (seed, k) and the
    # global RNG states travel in last.ckpt; without restoring them the weights differed by up to 1.03.
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) == 0.0


def test_sigterm_in_the_teacher_stage_resumes_the_teacher(tmp_path):
    """SIGTERM (a scheduler's stop) while the teacher trains: the teacher stage resumes from its own checkpoint."""
    run_dir = tmp_path / "run"
    kd = [*TINY, *[o for o in TEACHER if not o.startswith("teacher.epochs")], "teacher.epochs=2", "distill=kd",
          f"hydra.run.dir={run_dir}"]
    cache = {"KDPRUNE_CACHE": str(tmp_path / "cache")}  # no cached teacher: this run trains it
    out = run_cli(*kd, *_signal_at("term", 1, "SIGTERM", tmp_path / "term"), **cache)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    cmd = _resume_line(out.stderr)
    teacher_ckpt = run_dir / "teacher" / "checkpoints" / "last.ckpt"
    saved = torch.load(teacher_ckpt, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and not (run_dir / "checkpoints").exists()
    teachers = tmp_path / "cache" / "teachers"
    assert not teachers.exists() or not any(teachers.glob("*/best.pt"))
    shutil.copy(teacher_ckpt, tmp_path / "teacher.ckpt")

    out = run_cli(*cmd[3:], *probe(tmp_path / "start"), **cache)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_starts_from(tmp_path / "start.0", saved)  # the teacher went on from epoch 1
    assert torch.load(tmp_path / "start.1", weights_only=False)["epoch"] == 0  # then the student started fresh
    assert len(list((tmp_path / "cache" / "teachers").glob("*/best.pt"))) == 1


def test_ckpt_path_last_without_a_checkpoint_is_a_user_error(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    out = run_main(*TINY, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert out.returncode == 2
    err = [ln for ln in out.stderr.splitlines() if ln.startswith("kdprune: error:")]
    assert len(err) == 1 and "holds no checkpoints/last.ckpt" in err[0]
    assert (run_dir / "notes.txt").read_text() == "mine"  # a folder kdprune did not make is never cleaned up
