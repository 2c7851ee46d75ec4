"""``run(cfg)``: one kdprune run, from a composed config to a run dir with weights, TensorBoard and summary.json.

Kept apart from the Hydra entry point so tests call it on a config composed with ``initialize``/``compose``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from kdprune.build import build_datamodule, build_module, build_student, build_trainer
from kdprune.callbacks import (
    check_resume_checkpoint,
    last_checkpoint,
    log_hparams,
    log_per_class_ap,
    run_hparams,
    save_channels_png,
)
from kdprune.compression import Compression
from kdprune.data.checks import check_imgsz
from kdprune.data.stats import SMALL_WARN, small_objects, small_objects_line
from kdprune.environment import environment, warn_if_unlocked
from kdprune.errors import UserError
from kdprune.export.stages import ExportFailed, check_exports, run_stages
from kdprune.losses.objectives import check_objectives
from kdprune.part import check_device, verdict_line
from kdprune.pruning import PruningPhase, check_prune_config, epoch_index, int8_bytes
from kdprune.quant import QATSchedule, per_channel
from kdprune.recipe import check_recipe
from kdprune.report import deployed, margin_line, stage_table, teacher_margin, write_report
from kdprune.teacher_stage import check_teacher, obtain_teacher
from kdprune.yolo import (
    anchors_at,
    check_checkpoint,
    evaluate_checkpoint,
    head_layout,
    head_spec,
    model_stats,
    split_blocks,
)

log = logging.getLogger("kdprune")


def _check_cfg(cfg: DictConfig) -> None:
    if cfg.trainer.max_epochs is None or int(cfg.trainer.max_epochs) < 1:
        raise UserError(f"trainer.max_epochs={cfg.trainer.max_epochs}: must be >= 1.")
    check_imgsz(cfg.data.imgsz)
    check_device(cfg)
    if cfg.ckpt_path == "last":
        saved = [p for p in (last_checkpoint(cfg.run_dir), last_checkpoint(Path(cfg.run_dir) / "teacher"))
                 if p.is_file()]
        if not saved:
            raise UserError(f"ckpt_path=last: {cfg.run_dir} holds no checkpoints/last.ckpt; resume in the interrupted "
                            "run's dir: hydra.run.dir=<that dir> ckpt_path=last (or ckpt_path=<path to a .ckpt>)")
        for p in saved:
            check_resume_checkpoint(p, f"ckpt_path=last ({p})")
    elif cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise UserError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint (use <run_dir>/checkpoints/last.ckpt).")
        check_resume_checkpoint(cfg.ckpt_path)
    if pretrained := cfg.model.get("pretrained"):
        if cfg.model.weights:
            raise UserError("model.weights and model.pretrained: give one (weights: a checkpoint trained as is; "
                            "pretrained: model.cfg built and started from the checkpoint's tensors of equal shape).")
        check_checkpoint(pretrained, "model.pretrained")
    if cfg.reference:
        if not Path(cfg.reference).expanduser().is_file():
            raise UserError(f"reference={cfg.reference}: no such file (a dense run's weights/best.pt on the same "
                            "data).")
        check_checkpoint(cfg.reference, "reference")  # read at the end, after training: checked now


def _check_options(cfg: DictConfig) -> QATSchedule | None:
    """Every check that needs only the config (and files it names): run, objectives, pruning, QAT, exports. Returns
    the QAT phase, if any."""
    _check_cfg(cfg)
    check_recipe(cfg)
    check_teacher(cfg)
    check_objectives(cfg)
    if cfg.prune.name != "none":
        check_prune_config(cfg.prune, int(cfg.trainer.max_epochs))
    qat = None
    if cfg.quant.name == "int8_qat":
        qat = QATSchedule.from_config(cfg.quant, max_epochs=int(cfg.trainer.max_epochs), imgsz=int(cfg.data.imgsz),
                                     prune_end=epoch_index(cfg.prune.end_epoch, int(cfg.trainer.max_epochs))
                                     if cfg.prune.name != "none" else None)
    elif cfg.quant.name != "none":
        raise UserError(f"quant={cfg.quant.name}: choose int8_qat or none")
    check_exports(cfg)  # unknown formats, a bad granularity, a missing 'tflite' extra
    return qat


def _check_top_k(cfg: DictConfig, model) -> None:
    """The deploy kit's ``max_det`` rows out of an NMS-free head: its top-k gives at most one row per anchor."""
    deploy = cfg.export.get("deploy")
    if deploy is None or not head_spec(model).end2end:
        return
    if int(deploy.max_det) > (n := anchors_at(model, int(cfg.data.imgsz))):
        raise UserError(f"export.deploy.max_det={deploy.max_det}: this NMS-free (one-to-one) head gives at most {n} "
                        f"rows at data.imgsz={cfg.data.imgsz} (its anchors); set export.deploy.max_det<={n}")


def _ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last``: this run dir's own checkpoint, if the student got that far (else the student starts fresh;
    the teacher stage resumes its own)."""
    if cfg.ckpt_path == "last":
        p = last_checkpoint(cfg.run_dir)
        return str(p) if p.is_file() else None
    return cfg.ckpt_path


def run(cfg: DictConfig) -> dict:
    """Train, validate and save one student; return the summary written to ``<run_dir>/summary.json``."""
    t0 = time.time()
    qat = _check_options(cfg)  # what needs only the config: one line in seconds, before any data or model is built
    run_dir = Path(cfg.run_dir)
    env = environment()
    warn_if_unlocked(env)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data, hyp, model, recipe = build_student(cfg)
    _check_top_k(cfg, model)
    pruning = None
    if cfg.prune.name != "none":
        split_blocks(model)  # C2f/C3k2's chunk as two convs, so torch-pruning's graph follows it
        pruning = PruningPhase.from_config(cfg.prune, model, imgsz=cfg.data.imgsz, max_epochs=cfg.trainer.max_epochs)

    # Last of the checks, first of the work: the teacher stage may train (and cache) a teacher for many minutes.
    teacher = obtain_teacher(cfg, data, model, run_dir, train_fn=run)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same student whether the teacher was cached or not

    dm = build_datamodule(cfg, data, hyp, model)  # class weights are counted from its training labels
    module, loss_info = build_module(cfg, model, hyp, data, dm, teacher, run_dir, Compression(pruning, qat))
    trainer, ckpt_cb = build_trainer(cfg, run_dir, module.compression)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    trainer.fit(module, datamodule=dm, ckpt_path=_ckpt_path(cfg))
    if not trainer.is_global_zero:
        return {}

    summary = _summary(cfg, module, trainer, ckpt_cb, dm, data, t0, env=env, recipe=recipe, loss_info=loss_info,
                       pruning=pruning)
    # The report's stages: every model this run made, measured the same way (and the exports, verified)
    rank_zero_info("kdprune: stages: evaluating every stage and export on the val split (batch 1)")
    rows, failed = run_stages(cfg, data, hyp, run_dir, module.run_record(ckpt_cb), model_stats=model_stats)
    _finish(cfg, summary, rows, trainer, t0)
    if failed:
        raise ExportFailed(f"export verification failed: {'; '.join(failed)} (the rest is in {run_dir}/report.md)")
    return summary


def _summary(cfg: DictConfig, module, trainer, ckpt_cb, dm, data: dict, t0: float, *, env: dict, recipe: dict,
             loss_info: dict, pruning) -> dict:
    """summary.json before the stages: the saved best.pt re-validated (like ultralytics' final_eval, fp16 on disk:
    the numbers a user gets back) and what the run trained with."""
    final = {}
    # (a run resumed during QAT, in a new run dir, has no best.pt: its float weights are last.pt)
    weights = ckpt_cb.best if ckpt_cb.best.is_file() else ckpt_cb.last
    if weights.is_file():  # on this rank alone, over the whole val set
        final = evaluate_checkpoint(weights, dm.val_dataloader(shard=False), data, module.device, **module.val_args)
    log_per_class_ap(trainer, final.get("per_class", {}), trainer.global_step)
    final_model = module.model if module.qat is not None else module.eval_model  # the architecture (QAT: its floats)
    summary = {
        "model": cfg.model.weights or cfg.model.cfg,
        "data": data["yaml_file"],
        "imgsz": cfg.data.imgsz,
        "epochs": trainer.current_epoch,
        "best_epoch": (ckpt_cb.best_epoch + 1) if ckpt_cb.best_epoch is not None else None,
        **model_stats(final_model, cfg.data.imgsz),
        "head": head_layout(final_model),
        "int8_bytes_est": int8_bytes(final_model, per_channel(cfg.quant.granularity)),
        **{k: final.get(k) for k in ("mAP50", "mAP50-95", "precision", "recall")},
        "per_class": final.get("per_class", {}),
        "optimizer": module.resolved_optim,
        "recipe": recipe,
        "loss": loss_info,
        "images_skipped": dm.skipped_images(),
        "wall_time_s": round(time.time() - t0, 1),
        "weights": {"best": str(ckpt_cb.best), "last": str(ckpt_cb.last)},
        "device": str(module.device),
        "val": module.val_args,
        "environment": env,
    }
    summary["small_objects"] = small = small_objects(dm.train_set.labels, int(cfg.data.imgsz))
    (log.warning if small["share"] > SMALL_WARN else rank_zero_info)(f"kdprune: {small_objects_line(small)}")
    if module.teacher is not None:
        summary["teacher"] = module.teacher.info
        summary["distill"] = {**{k: v for k, v in OmegaConf.to_container(cfg.distill, resolve=True).items()},
                              "kd_ms_per_step": module.kd_ms_per_step}
    if pruning is not None:
        summary["pruning"] = pruning.summary(final_model)
        save_channels_png(Path(cfg.run_dir) / "prune_channels.png", pruning.layer_channels(final_model))
    if module.qat is not None:
        summary["quant"] = {**OmegaConf.to_container(cfg.quant, resolve=True), **module.qat.state()}
    return summary


def _finish(cfg: DictConfig, summary: dict, rows: list[dict], trainer, t0: float) -> None:
    """The stages into summary.json (the part's verdict and levers, the teacher's margin), report.md, the HParams
    row and the console lines."""
    run_dir = Path(cfg.run_dir)
    summary["stages"] = rows
    if (part := next((r["part"] for r in rows if r.get("part")), None)) is not None:
        summary["part"] = part  # the device file on the part (device=): flash and SRAM against its budgets
        summary["part"]["levers"] = {  # what this run traded for RAM (docs/devices.md)
            "imgsz": int(cfg.data.imgsz), "fused_act_layers": int(cfg.model.get("fused_act_layers") or 0),
            "fused_act": str(cfg.model.get("fused_act") or "relu"),
            "pad_free_downsample": int(cfg.model.get("pad_free_downsample") or 0),
            "keep_stem": bool(cfg.prune.get("keep_stem", True)),
            "arena_target": OmegaConf.select(cfg, "prune.target.arena_bytes")}
    if "teacher" in summary and (margin := teacher_margin(rows)) is not None:
        summary["teacher"]["margin"] = margin
        (log.warning if margin["delta"] <= 0 else rank_zero_info)(f"kdprune: {margin_line(margin)}")
    summary["wall_time_s"] = round(time.time() - t0, 1)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run_dir / "report.md", rows, summary)
    deploy = cfg.export.get("deploy")
    if deploy is not None and (run_dir / "export" / "model_int8.tflite").is_file():  # what the MCU engineer flashes
        from kdprune.deploy.kit import write_kit

        out = write_kit(run_dir, conf=deploy.conf, iou=deploy.iou, max_det=deploy.max_det)
        rank_zero_info(f"kdprune: deploy kit (the file as a C array, its I/O header, the C post-processing, a TFLite "
                       f"Micro example) -> {out}")
    log_hparams(trainer, run_hparams(cfg, run_dir),
                {**{k: summary.get(k) for k in ("mAP50-95", "mAP50", "params", "gflops", "int8_bytes_est")},
                 **{k: v for k, v in deployed(summary).items() if k != "int8_source"}})
    rank_zero_info("\n" + stage_table(rows))
    rank_zero_info(
        f"kdprune: mAP50-95 {summary['mAP50-95']:.4f}  mAP50 {summary['mAP50']:.4f}  params {summary['params']:,}  "
        f"GFLOPs {summary['gflops']}  ({summary['wall_time_s']:.0f}s) -> {run_dir}"
    )
    if part is not None:
        rank_zero_info(f"kdprune: the device file {verdict_line(part)}")
