"""The part a run deploys to (``conf/device/``): its flash and SRAM in all, what the application keeps of each, the
model's budgets that follow, and the verdict on the device file ("fits MCX N947: flash X of Y, SRAM X of Y").

The budgets are config values (``device.model_flash``, ``device.model_sram``: the ``kdprune.left`` resolver
subtracts the reserve from the part), so ``--cfg job`` shows them and an experiment interpolates its pruning targets
from them (``kdprune.first``: the part's budget, else the experiment's own value, for ``device=generic``). The
verdict is judged on the exported file: its bytes against the flash budget and the arena TensorFlow Lite Micro
measured for it against the SRAM budget.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from kdprune.errors import UserError


def _left(total, reserve):
    """``total - reserve`` (None when the part sets no limit). A negative result is checked by ``check_device``."""
    return None if total is None else int(total) - int(reserve or 0)


def _first(*values):
    """The first value that is not None: a part's budget, else the experiment's own (``device=generic``)."""
    return next((v for v in values if v is not None), None)


for _name, _fn in (("kdprune.left", _left), ("kdprune.first", _first)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def check_device(cfg: DictConfig) -> None:
    """One line, before any work, for a device the run cannot use: a reserve larger than the part (or negative), a
    target whose operator rules are not the part's NPU."""
    device = cfg.get("device")
    if device is None:
        return
    for total, reserve, kind in ((device.flash_bytes, device.reserve.flash, "flash"),
                                 (device.sram_bytes, device.reserve.sram, "sram")):
        if int(reserve or 0) < 0:
            raise UserError(f"device.reserve.{kind}={reserve}: must be >= 0 (bytes the application keeps).")
        if total is not None and int(reserve or 0) >= int(total):
            raise UserError(f"device.reserve.{kind}={int(reserve):,} leaves nothing of {device.part}'s "
                            f"{int(total):,} bytes of {kind} for the model: lower the reserve (or pick another "
                            "device=).")
    target = cfg.get("target")
    if device.target and target is not None and str(target.name) != str(device.target):
        raise UserError(f"device={device.name} carries the {device.target} NPU but target={target.name}: set "
                        f"target={device.target} (or device=generic to check the file against {target.name} alone).")


def verdict(dev: DictConfig | dict | None, file_bytes: int, arena_bytes: int,
            vela_sram: int | None = None) -> dict | None:
    """Whether the device file fits the part: its bytes in the model's flash budget and TFLite Micro's measured arena
    in its SRAM budget (Vela's SRAM plan beside it, the NPU compiler's estimate). None for ``device=generic``."""
    if dev is None or (dev.get("flash_bytes") is None and dev.get("sram_bytes") is None):
        return None
    out = {"device": str(dev["name"]), "part": str(dev["part"]), "fits": True, "flash": None, "sram": None}
    for kind, used in (("flash", file_bytes), ("sram", arena_bytes)):
        budget = dev.get(f"model_{kind}")
        if budget is None:
            continue
        total = int(dev[f"{kind}_bytes"])
        out[kind] = {"used": int(used), "budget": int(budget), "part": total, "reserve": total - int(budget),
                     "left": total - int(used), "fits": int(used) <= int(budget)}
        out["fits"] &= out[kind]["fits"]
    if vela_sram is not None:
        out["vela_sram"] = int(vela_sram)
    return out


def verdict_line(v: dict) -> str:
    """``fits NXP MCX N947: flash 1,983,000 of 2,000,000 B (114,152 B of the part left for the firmware), SRAM ...``"""
    parts = []
    for kind, label, what in (("flash", "flash", "firmware"), ("sram", "SRAM", "application")):
        if (k := v.get(kind)) is not None:
            parts.append(f"{label} {k['used']:,} of {k['budget']:,} B"
                         + ("" if k["fits"] else " (OVER)") + f" ({k['left']:,} B of the part left for the {what})")
    if "vela_sram" in v:
        parts.append(f"Vela's NPU SRAM plan {v['vela_sram']:,} B")
    line = f"{'fits' if v['fits'] else 'does NOT fit'} {v['part']}: " + ", ".join(parts)
    if lv := v.get("levers"):
        act = f"{lv['fused_act']} in the first {lv['fused_act_layers']} layers" if lv["fused_act_layers"] else "SiLU"
        line += (f"; RAM levers: imgsz {lv['imgsz']}, {act}, arena budget for the pruner "
                 + (f"{lv['arena_target']:,} B" if lv["arena_target"] else "none")
                 + ("" if lv["keep_stem"] else ", stem prunable")
                 + (f", {n} pad-free downsampling convs" if (n := lv.get("pad_free_downsample")) else ""))
    return line
