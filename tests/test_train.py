"""A 1-epoch fit at 64 px on generated images writes every output, reloads in plain ultralytics, and is seeded."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdprune.train import run

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny run shared by the assertions below (runs are the expensive part of this suite)."""
    from tests.conftest import TINY, compose

    run_dir = tmp_path_factory.mktemp("fit") / "run"
    cfg = compose([*TINY, "trainer.max_epochs=2", "data.augment.close_mosaic=1"], run_dir=run_dir)
    return run_dir, run(cfg)


def test_run_dir_holds_every_output(fitted):
    run_dir, summary = fitted
    for f in ("weights/best.pt", "weights/last.pt", "config.yaml", "summary.json", "checkpoints/last.ckpt"):
        assert (run_dir / f).is_file(), f
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for k in ("params", "gflops", "mAP50", "mAP50-95", "wall_time_s", "images_skipped", "optimizer"):
        assert k in on_disk, k
    assert on_disk["params"] > 2_000_000 and on_disk["gflops"] > 0
    assert 0.0 <= on_disk["mAP50-95"] <= on_disk["mAP50"] <= 1.0
    assert on_disk["images_skipped"] == {"train": 0, "val": 0}
    assert on_disk["epochs"] == 2
    assert on_disk["optimizer"]["optimizer"] == "AdamW" and on_disk["optimizer"]["lr0"] == 0.003
    assert "imgsz: 64" in (run_dir / "config.yaml").read_text()
    env = on_disk["environment"]  # what the numbers ran with, from the installed packages themselves
    assert env["packages"]["opencv-python"] == metadata.version("opencv-python")
    assert env["packages"]["ultralytics"] == "8.4.190" and env["lock"]["differs"] == {}


def test_tensorboard_has_losses_lr_metrics_and_images(fitted):
    run_dir, _ = fitted
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/box_loss_epoch", "train/cls_loss_epoch", "train/dfl_loss_epoch", "lr/pg0",
                "val/mAP50", "val/mAP50-95", "model/params", "model/GFLOPs"):
        assert tag in scalars, (tag, sorted(scalars))
    images = set(acc.Tags()["images"])
    assert "val/predictions" in images and "val/per_class_AP50-95" in images
    assert len(acc.Images("val/predictions")) == 2  # plot_every=1 -> one grid per epoch
    assert any(t.startswith("per_class_AP50-95/") for t in scalars)


def test_weights_load_in_plain_ultralytics(fitted, tmp_path):
    """best.pt is an ultralytics checkpoint: YOLO(path) loads it for predict and ONNX export, no kdprune classes."""
    from ultralytics import YOLO

    run_dir, _ = fitted
    ckpt = torch.load(run_dir / "weights" / "best.pt", weights_only=False)
    pickled_types = {type(m).__module__ for m in ckpt["ema"].modules()}
    assert not any(t.startswith("kdprune") for t in pickled_types), pickled_types
    model = YOLO(str(run_dir / "weights" / "best.pt"))
    assert model.task == "detect" and len(model.names) == 8
    res = model.predict(torch.zeros(1, 3, 64, 64), imgsz=64, verbose=False)
    assert len(res) == 1
    onnx = model.export(format="onnx", imgsz=64, simplify=False, dynamic=False)
    assert str(onnx).endswith(".onnx")


def test_same_seed_same_first_epoch(tmp_path):
    """Same seed -> bit-identical weights after epoch 1 (so identical losses); another seed -> different."""
    from tests.conftest import TINY, compose

    def first_epoch_weights(seed, name):
        cfg = compose([*TINY, f"seed={seed}", "logger=none", "val.plot_every=0", "data.workers=2"],
                      run_dir=tmp_path / name)
        run(cfg)
        ck = torch.load(tmp_path / name / "weights" / "last.pt", weights_only=False)
        return [float(v) for v in ck["ema"].state_dict()["model.23.cv3.0.0.0.conv.weight"].flatten()[:64]]

    a, b, c = first_epoch_weights(0, "a"), first_epoch_weights(0, "b"), first_epoch_weights(1, "c")
    assert a == b
    assert a != c


def _mosaic_p(transform) -> float:
    """Probability of ultralytics' Mosaic inside a (nested) Compose; 0 when there is none."""
    from ultralytics.data.augment import Mosaic

    if isinstance(transform, Mosaic):
        return float(transform.p)
    return max([_mosaic_p(t) for t in getattr(transform, "transforms", None) or []], default=0.0)


def test_close_mosaic_reaches_the_dataloader_workers(tmp_path, monkeypatch):
    """Mosaic is on in epoch 1 and off in epoch 2 (close_mosaic=1), as seen inside forked worker processes."""
    import lightning as L

    import kdprune.train as kt
    from kdprune.data import YOLODataModule
    from tests.conftest import TINY, compose

    seen: dict[int, set] = {}
    make_loader = YOLODataModule.train_dataloader

    def probing_loader(dm):
        loader = make_loader(dm)
        ds, collate = loader.dataset, loader.collate_fn

        def probing_collate(items):  # runs in the worker: reports the worker's copy of the dataset
            out = collate(items)
            out["mosaic_in_worker"] = torch.tensor(_mosaic_p(ds.transforms) > 0)
            return out

        loader.collate_fn = probing_collate
        return loader

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, set()).add(bool(batch["mosaic_in_worker"]))

    monkeypatch.setattr(YOLODataModule, "train_dataloader", probing_loader)
    trainer_cls = kt.L.Trainer
    monkeypatch.setattr(kt.L, "Trainer",
                        lambda *a, callbacks=(), **k: trainer_cls(*a, callbacks=[*callbacks, Record()], **k))
    cfg = compose([*TINY, "trainer.max_epochs=2", "data.augment.close_mosaic=1", "data.workers=2",
                   "data.embedded.n_train=32", "logger=none", "val.plot_every=0"], run_dir=tmp_path / "run")
    kt.run(cfg)
    assert seen == {0: {True}, 1: {False}}


def test_model_weights_start_from_an_ultralytics_checkpoint(fitted):
    """model.weights=best.pt: same classes -> the checkpoint's tensors; other classes -> all but the class head."""
    from ultralytics.nn.tasks import load_checkpoint

    from kdprune.yolo import build_model, hyp_namespace

    run_dir, _ = fitted
    best = run_dir / "weights" / "best.pt"
    ref = load_checkpoint(str(best))[0].state_dict()
    names8 = {i: f"c{i}" for i in range(8)}
    same = build_model(None, str(best), names8, hyp_namespace()).state_dict()
    assert all(torch.equal(same[k].float(), ref[k].float()) for k in ref)
    three = build_model(None, str(best), {0: "a", 1: "b", 2: "c"}, hyp_namespace())
    sd3 = three.state_dict()
    assert three.nc == 3
    transferred = [k for k in ref if sd3[k].shape == ref[k].shape and torch.equal(sd3[k].float(), ref[k].float())]
    assert len(transferred) > 0.9 * len(ref)
    assert sd3["model.23.cv3.0.2.weight"].shape[0] == 3 and ref["model.23.cv3.0.2.weight"].shape[0] == 8


def test_bf16_mixed_on_cpu_keeps_losses_validation_and_ema_in_fp32(tmp_path, monkeypatch):
    """trainer.precision=bf16-mixed: convolutions run in bf16 (the speed), while the losses see fp32 predictions,
    validation runs in fp32 (bf16 would round 256-px boxes to 2 px) and the EMA and master weights stay fp32."""
    import lightning as L

    import kdprune.train as kt
    from tests.conftest import TINY, compose

    seen = {"conv": set(), "criterion": set(), "val_conv": set()}

    class SpyCriterion:  # the dtypes of the predictions the losses get
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, preds, batch, **kw):
            seen["criterion"].update(t.dtype for t in torch.utils._pytree.tree_leaves(preds)
                                     if torch.is_tensor(t) and t.is_floating_point())
            return self.inner(preds, batch, **kw)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class Spy(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            first = next(m for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d))

            def hook(m, i, o):  # global (a hook on the model would be pickled into best.pt)
                if m is first or m is next(x for x in pl_module.eval_model.modules() if isinstance(x, torch.nn.Conv2d)):
                    seen["conv" if pl_module.training else "val_conv"].add(o.dtype)

            self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
            pl_module.criterion = SpyCriterion(pl_module.criterion)

        def on_fit_end(self, trainer, pl_module):
            self.handle.remove()
            seen["ema"] = {p.dtype for p in pl_module.ema.ema.parameters()}
            seen["master"] = {p.dtype for p in pl_module.model.parameters()}

    trainer_cls = kt.L.Trainer
    monkeypatch.setattr(kt.L, "Trainer",
                        lambda *a, callbacks=(), **k: trainer_cls(*a, callbacks=[*callbacks, Spy()], **k))
    s = run(compose([*TINY, "trainer.precision=bf16-mixed", "logger=none", "val.plot_every=0"], run_dir=tmp_path / "r"))
    assert seen["conv"] == {torch.bfloat16}  # the setting reached the trainer: training convs ran in bf16
    assert seen["criterion"] == {torch.float32}
    assert seen["val_conv"] == {torch.float32}
    assert seen["ema"] == seen["master"] == {torch.float32}
    assert s["mAP50-95"] is not None

