"""Per-layer pruning ratios from a YAML file: ``{layer_index: ratio, ..., detect_index: [reg, cls]}``.

The format of ultralytics' own (unmerged) pruning utility, so a user can bring theirs: keys are indices of
``model.model`` (the rows of ultralytics' model summary), values the share of output channels to remove from every
prunable conv in that layer; the Detect layer takes ``[reg, cls]`` for its box and class branches. Layers not listed
are not pruned. The file may hold the mapping itself or under a top-level ``prune_ratios:`` key.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Shipped examples, chosen by name (prune.prune_ratios=yolo11n). Data, not config: they live beside their loader
EXAMPLES = Path(__file__).resolve().parent / "ratio_examples"


def ratios_path(value: str) -> Path:
    """``prune.prune_ratios``: a path to a YAML file, or the name of a shipped example (``EXAMPLES``)."""
    p = Path(value).expanduser()
    if not p.is_file() and (EXAMPLES / f"{value}.yaml").is_file():
        return EXAMPLES / f"{value}.yaml"
    return p


def load_layer_ratios(path: str | Path) -> dict:
    """The raw mapping in ``path``; ``ValueError`` with what is wrong."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"no such file {p.resolve()}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML ({e})") from None
    if isinstance(doc, dict) and "prune_ratios" in doc:
        doc = doc["prune_ratios"]
    if not isinstance(doc, dict) or not doc:
        raise ValueError("expected a mapping {layer_index: ratio, ..., detect_index: [reg, cls]}")
    return doc


def _ratio(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"{where}: ratio {v!r} must be a number in [0, 1)")
    return float(v)


def unit_weights(ratios: dict, n_layers: int, layer_of: dict[str, int], branch_of: dict[str, str],
                 unit_names: list[str]) -> dict[str, float]:
    """Ratio for every unit (by root module name) from a layer-ratio mapping; validates indices and values.

    ``layer_of`` maps module names to top-level layer indices, ``branch_of`` the Detect head's convs to reg/cls.
    """
    detect = n_layers - 1
    per_layer: dict[int, float | tuple[float, float]] = {}
    for k, v in ratios.items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"key {k!r} is not a layer index") from None
        if not 0 <= i < n_layers:
            raise ValueError(f"layer {i} does not exist (the model has layers 0..{n_layers - 1}; Detect is {detect})")
        if i == detect:
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise ValueError(f"layer {i} is the Detect head: give [reg, cls], not {v!r}")
            per_layer[i] = (_ratio(v[0], f"layer {i} reg"), _ratio(v[1], f"layer {i} cls"))
        else:
            per_layer[i] = _ratio(v, f"layer {i}")
    out = {}
    for name in unit_names:
        i = layer_of.get(name)
        r = per_layer.get(i, 0.0)
        if isinstance(r, tuple):
            r = r[0] if branch_of.get(name) == "reg" else r[1]
        out[name] = r
    return out
