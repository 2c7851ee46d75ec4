"""Build or load YOLO detection models (student, later teacher) from ultralytics YAML or a local checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.tasks import DetectionModel, guess_model_task, load_checkpoint
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils.torch_utils import get_flops, get_num_params

from kdprune.errors import UserError


def hyp_namespace(**overrides):
    """Ultralytics' hyperparameter namespace (box/cls/dfl gains, augmentation, ...) with our overrides applied."""
    known = {k: v for k, v in overrides.items() if k in DEFAULT_CFG_DICT}
    return get_cfg(overrides=known)


def _build_from_yaml(cfg: str, nc: int) -> DetectionModel:
    try:
        return DetectionModel(cfg, nc=nc, verbose=False)
    except FileNotFoundError as e:
        raise UserError(
            f"model.cfg={cfg}: unknown model ({e}). Use an ultralytics detection YAML such as yolo11n.yaml, "
            "yolov8n.yaml or yolo26n.yaml, or a path to your own model YAML."
        ) from None


# what to do instead of a missing checkpoint, per config key
_WITHOUT = {"model.weights": "build from scratch with model.cfg={stem}.yaml model.weights=null",
            "model.pretrained": "build model.cfg from scratch with model.pretrained=null",
            "teacher.weights": "let kdprune train the teacher with teacher.weights=null",
            "teacher.init": "train the teacher from scratch with teacher.init=null",
            "reference": "leave the dense reference row out with reference=null"}


def _load_weights(weights: str | Path, key: str = "model.weights") -> tuple[torch.nn.Module, dict]:
    """``(model, checkpoint)`` of a local ultralytics detection checkpoint named by config key ``key``; a missing,
    unloadable or non-detection file is a UserError that names the key."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"{key}={weights}: file not found at {path.resolve()}. kdprune never downloads weights: put the "
            f"checkpoint there (or pass its path), or {_WITHOUT[key].format(stem=path.stem)}."
        )
    try:
        model, ckpt = load_checkpoint(str(path))
    except Exception as e:  # a corrupt or foreign file is the user's to fix
        raise UserError(f"{key}={weights}: not a loadable ultralytics checkpoint "
                        f"({type(e).__name__}: {e}).") from None
    # ultralytics' own answer from the architecture's head (the checkpoint's train args may be missing or stale)
    task = guess_model_task(getattr(model, "yaml", None) or model)
    if task != "detect" or not isinstance(model, DetectionModel):
        raise UserError(f"{key}={weights}: a {task} checkpoint ({type(model).__name__}); kdprune needs a "
                        "detection model (task=detect), e.g. yolo11n.pt.")
    return model, ckpt


def check_checkpoint(weights: str | Path, key: str) -> None:
    """Raise the UserError ``build_model`` / ``load_teacher`` would, before any work is done."""
    _load_weights(weights, key)


def load_teacher(weights: str | Path) -> DetectionModel:
    """A teacher from a local checkpoint, in fp32 (checkpoints are saved in fp16)."""
    model, _ = _load_weights(weights, key="teacher.weights")
    return model.float().eval()


def _nc(model: torch.nn.Module) -> int:
    """The class count a model predicts: its Detect head's (``model.nc`` is only set by a trainer, and a checkpoint
    saved from a freshly built ``DetectionModel`` has none)."""
    return int(model.model[-1].nc)


def teacher_mismatch(student: torch.nn.Module, teacher: torch.nn.Module, *, need_dfl: bool) -> str | None:
    """Why ``teacher`` cannot teach ``student`` (classes, detection levels, box encoding), or None."""
    s_names, t_names = dict(student.names), dict(getattr(teacher, "names", {}) or {})
    if _nc(teacher) != _nc(student) or (t_names and t_names != s_names):
        def show(names, nc):
            items = list(names.values()) if names else []
            return f"{nc} classes ({', '.join(map(str, items[:6]))}{', ...' if len(items) > 6 else ''})"
        return (f"the teacher has {show(t_names, _nc(teacher))} but the student and data have "
                f"{show(s_names, _nc(student))}")
    hs, ht = student.model[-1], teacher.model[-1]
    if hs.nl != ht.nl or [int(x) for x in hs.stride] != [int(x) for x in ht.stride]:
        return (f"the teacher predicts at strides {[int(x) for x in ht.stride]} but the student at "
                f"{[int(x) for x in hs.stride]}")
    return dfl_mismatch(student, teacher) if need_dfl else None


def dfl_mismatch(student: torch.nn.Module, teacher: torch.nn.Module) -> str | None:
    """Why localization distillation (``distill.ld``) cannot run between the two, or None. It distils DFL box
    distributions: YOLO26 has none (reg_max 1), and a YOLO11 teacher's 16 bins have no counterpart in it. The class
    (``cls``) and feature (``cwd``) terms carry across the two families (same anchors, strides and adapters)."""
    hs, ht = student.model[-1].reg_max, teacher.model[-1].reg_max
    if hs != ht or hs < 2:
        return (f"localization distillation needs DFL box distributions of one size in both (reg_max: student "
                f"{hs}, teacher {ht}; YOLO26 has none); set distill.ld=0 (cls and cwd distil across families)")
    return None


def build_model(cfg: str | None, weights: str | None, names: dict[int, str], hyp,
                key: str = "model.weights") -> DetectionModel:
    """A trainable DetectionModel for ``names``: from ``weights`` (any ultralytics checkpoint) or built from ``cfg``.

    A checkpoint with another class count is rebuilt from its own YAML with ``nc=len(names)`` and every tensor of
    matching shape transferred, as ultralytics' trainer does.
    """
    nc = len(names)
    if weights:
        loaded, _ = _load_weights(weights, key)
        if _nc(loaded) == nc:
            model = loaded
        else:
            model = _build_from_yaml(loaded.yaml, nc)
            model.load(loaded, verbose=False)  # ultralytics' transfer (the share is not needed here)
    elif cfg:
        model = _build_from_yaml(cfg, nc)
    else:
        raise UserError("model: give model.cfg (e.g. yolo11n.yaml) or model.weights (a local .pt).")
    model.nc, model.names, model.args = nc, dict(names), hyp
    for p in model.parameters():
        p.requires_grad_(True)
    for name, p in model.named_parameters():
        if ".dfl" in name:  # ultralytics always freezes the DFL integral
            p.requires_grad_(False)
    return model.float().train()


def choose_branch(model: DetectionModel, end2end: bool | None) -> bool:
    """Which branch of a two-branch head (YOLO26) the run deploys, set on ultralytics' own switch (``model.end2end``,
    which its validator and exporter set from ``nms=``): ``None`` (``model.end2end=null``) the one-to-one branch
    where the head has one, ``True`` it (a UserError for a head without one), ``False`` the one-to-many branch +
    NMS (ultralytics 8.4's default, ``nms=None``). Both branches train either way (E2ELoss); QAT fake-quantizes and
    the exports write the deployed one. Returns whether it is the one-to-one branch."""
    two = getattr(model.model[-1], "one2one_cv2", None) is not None
    if end2end and not two:
        raise UserError("model.end2end=true: this model's head has no one-to-one (NMS-free) branch (YOLO26 has one); "
                        "use model.end2end=null")
    if two:
        model.end2end = two if end2end is None else bool(end2end)
    return two and bool(model.end2end)


# Activations TFLite fuses into the CONV_2D that feeds them (no tensor, no operator of their own); SiLU has no TFLite
# operator and runs as LOGISTIC then MUL, two more tensors alive at the layer's resolution (kdprune.pruning.arena).
FUSED_ACTS = {"relu": torch.nn.ReLU, "relu6": torch.nn.ReLU6}


def fused_activation(model: DetectionModel, layers: int, act: str = "relu") -> int:
    """Every conv activation of the first ``layers`` layers (``model.model[:layers]``: the high-resolution ones,
    where activations peak) becomes ``act``, one the TFLite converter fuses into the conv. Returns how many changed
    (a checkpoint that already has them changes none). The weights stay: the run trains the new activation in."""
    if act not in FUSED_ACTS:
        raise UserError(f"model.fused_act={act}: choose one of {', '.join(FUSED_ACTS)}.")
    n_layers = len(model.model)
    if not 0 <= layers < n_layers:
        raise UserError(f"model.fused_act_layers={layers}: between 0 and {n_layers - 1} (the model's layers before "
                        "its head).")
    changed = 0
    for layer in list(model.model)[:layers]:
        for m in layer.modules():
            if isinstance(m, Conv) and not isinstance(m.act, (FUSED_ACTS[act], torch.nn.Identity)):
                m.act = FUSED_ACTS[act]()
                changed += 1
    return changed


def pad_free_downsample(model: DetectionModel, convs: int) -> int:
    """The first ``convs`` stride-2 3x3 convs (padding 1) become 4x4 convs (padding 1) holding the same weights in
    their top-left 3x3 (the new row and column start at zero): the same function on every even input (each output
    reads the same input pixels), but the padding TFLite's SAME computes for a 4x4 stride-2 kernel, (1, 1), now
    equals PyTorch's. A 3x3 stride-2 conv's SAME padding is (0, 1), so the converter writes an explicit PAD copy of
    its input before it (kdprune.pruning.arena): at the stem that copy is as large as the image and alive beside it.
    Returns how many changed (a checkpoint that already has them changes none). Costs 7/9 more weights and MACs in
    the changed convs only (the high-resolution ones are the narrowest: a few KB of flash)."""
    strided = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and tuple(m.stride) == (2, 2)]
    if not 0 <= convs <= len(strided):
        raise UserError(f"model.pad_free_downsample={convs}: between 0 and {len(strided)} (the model's stride-2 "
                        "convs).")
    changed = 0
    for conv in strided[:convs]:
        if tuple(conv.kernel_size) != (3, 3) or tuple(conv.padding) != (1, 1):
            continue
        w = conv.weight.detach()
        new = torch.zeros(*w.shape[:2], 4, 4, dtype=w.dtype, device=w.device)
        new[..., :3, :3] = w
        conv.weight = torch.nn.Parameter(new, requires_grad=conv.weight.requires_grad)
        conv.kernel_size = (4, 4)
        changed += 1
    return changed


def transfer(model: DetectionModel, source: str | Path | torch.nn.Module) -> float:
    """Load every tensor of ``source`` (a checkpoint path, named by ``model.pretrained``, or a model) whose name and
    shape match into ``model``, as ultralytics' trainer does with ``pretrained=``; return the share of ``model``'s
    parameter elements that came from it (1.0: all of them, 0.0: none: another architecture)."""
    if not isinstance(source, torch.nn.Module):
        source, _ = _load_weights(source, "model.pretrained")
    model.load(source, verbose=False)  # ultralytics' transfer (it also re-widens the class branch to the source's)
    src = source.state_dict()
    own = dict(model.named_parameters())
    moved = sum(p.numel() for k, p in own.items() if k in src and src[k].shape == p.shape)
    return moved / max(sum(p.numel() for p in own.values()), 1)


def model_stats(model: torch.nn.Module, imgsz: int) -> dict:
    """Parameter count and GFLOPs at ``imgsz`` (ultralytics' own counters)."""
    return {"params": int(get_num_params(model)), "gflops": round(float(get_flops(model, imgsz)), 3)}
