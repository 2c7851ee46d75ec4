"""The training recipe of each model a run trains: from scratch, or fine-tuning a checkpoint.

``optim`` in config.yaml holds the values measured for short from-scratch runs (AdamW lr0 0.003, 3 warm-up epochs).
A model that starts from a checkpoint (the student with ``model.weights``, a teacher trained here from
``teacher.init``) may want gentler ones: ``finetune`` in config.yaml lists them, and ``recipe=auto`` (the default)
applies them to the models whose parameters mostly come from a checkpoint (at least ``FINETUNE_SHARE``). By default
they equal ``optim``'s: on pretrained stand-ins the from-scratch values beat lr0 0.001 with one warm-up epoch by 0.086
mAP50-95 (bench/RESULTS.md, "The fine-tuning recipe, measured"); a user with checkpoints that should move less sets
``finetune.lr0``. ``model.pretrained`` transfers into another architecture only the tensors of equal shape:
yolo11n's weights into a yolo11n cut to width 0.20 move 7 % of its parameters, and lr0 0.001 cost that model 0.11
mAP50-95 against the from-scratch values, hence the share rule. ``recipe=scratch`` / ``recipe=finetune`` choose one
recipe for every model.

A value the user set wins over the recipe: a key given on the command line (``optim.lr0=0.002``), or one whose value
differs from config.yaml's (set by an experiment). Hydra has no conditional defaults (a group's option cannot depend
on whether another key is set), which is why this is resolved here rather than by composition; ``summary.json``
records every value and where it came from.
"""

from __future__ import annotations

from functools import cache

from omegaconf import DictConfig, OmegaConf

from kdprune import CONF_DIR
from kdprune.errors import UserError

RECIPES = ("auto", "scratch", "finetune")
# recipe=auto fine-tunes a model when at least this share of its parameter elements came from a checkpoint. Only one
# side is measured: at 7 % transferred the from-scratch values beat lr0 0.001 by 0.11 (the threshold is a round middle).
FINETUNE_SHARE = 0.5


@cache
def _base_optim() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").optim, resolve=False)


def command_line_keys() -> set[str]:
    """The dotted keys given on the command line of this Hydra run (empty outside one, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").partition("=")[0] for o in HydraConfig.get().overrides.task}


def _recipe_keys() -> list[str]:
    """The optim keys a recipe may set: those ultralytics' hyperparameters take (``grad_clip`` and ``ema`` are read
    by kdprune itself, once for every model) and that config.yaml writes as values (an interpolation such as
    ``nbs: ${data.batch}`` follows its source)."""
    return sorted(k for k, v in _base_optim().items()
                  if k not in ("grad_clip", "ema") and not (isinstance(v, str) and v.startswith("${")))


def check_recipe(cfg: DictConfig) -> None:
    recipe = cfg.get("recipe", "auto")
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise UserError(f"recipe={recipe}: choose from {', '.join(RECIPES)}")
    if unknown := sorted(set(cfg.get("finetune") or {}) - set(_recipe_keys())):
        raise UserError(f"finetune.{unknown[0]}: not a recipe key (the fine-tuning recipe sets optim values: "
                        f"{', '.join(_recipe_keys())})")


def training_optim(cfg: DictConfig, *, transferred: float, given: set[str] | None = None) -> tuple[dict, dict]:
    """``(optim, sources)``: the optim values a model trains with, and for each recipe key where its value came from
    (``recipe finetune``, ``optim (from scratch)``, ``command line`` or ``config``). ``transferred``: the share of
    the model's parameters that start from a checkpoint (0: from scratch, 1: a whole checkpoint). ``given``: the
    command line's keys (default: this Hydra run's)."""
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    recipe = cfg.get("recipe", "auto")
    finetune = recipe == "finetune" or (recipe == "auto" and transferred >= FINETUNE_SHARE)
    given = command_line_keys() if given is None else given
    base = _base_optim()
    sources = {}
    for key, value in OmegaConf.to_container(cfg.get("finetune") or {}, resolve=True).items():
        if f"optim.{key}" in given:
            sources[key] = "command line"
        elif optim[key] != base.get(key):
            sources[key] = "config"  # an experiment (or the config) set it: it wins over the recipe
        elif finetune:
            optim[key] = value
            sources[key] = "recipe finetune" + (" (the model starts from a checkpoint)" if recipe == "auto" else "")
        else:
            sources[key] = "optim (from scratch)"
    return optim, {"recipe": "finetune" if finetune else "scratch", "transferred": round(transferred, 4),
                   "values": {k: {"value": optim[k], "from": s} for k, s in sources.items()}}
