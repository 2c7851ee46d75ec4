"""Which dataset a run uses: the user's data.yaml, checked at the edge, or the embedded one from the cache."""

from __future__ import annotations

from pathlib import Path

from ultralytics.data.utils import check_det_dataset

from kdprune.data.checks import check_data_yaml, check_labels
from kdprune.data.scene import KINDS
from kdprune.data.synth import ensure_dataset
from kdprune.errors import UserError


def resolve_data(yaml: str | None, cache_dir: str | Path, embedded: dict, check: bool = True) -> dict:
    """Return ultralytics' data dict (absolute ``train``/``val``, ``names``, ``nc``, ``yaml_file``).

    With no ``yaml`` the embedded dataset is generated once into ``cache_dir/datasets`` and reused.
    Every user-fixable problem (missing paths, no names, bad labels) raises UserError before anything is written.
    """
    if yaml:
        check_data_yaml(yaml)
        path = Path(yaml).expanduser().resolve()
    else:  # checked here, the one place training and the sensitivity scan both pass through
        if (kind := embedded.get("kind", "shapes")) not in KINDS:
            raise UserError(f"data.embedded.kind={kind}: choose one of {', '.join(KINDS)} "
                            "(or data=glyphs; your own data: data.yaml=<path>).")
        path = ensure_dataset(Path(cache_dir).expanduser() / "datasets", **embedded)
    try:
        data = check_det_dataset(str(path))
    except (FileNotFoundError, SyntaxError, KeyError, ValueError) as e:
        raise UserError(f"data.yaml={path}: {e}") from None
    if check:
        check_labels(data)
    return data
