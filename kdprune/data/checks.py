"""Dataset checks at the edge: a user's data.yaml and label files, each problem as one clear UserError line.

Paths are resolved the way ultralytics resolves them (``check_det_dataset``, ``BaseDataset.get_img_files``,
``img2label_paths``), so what passes here is what ultralytics will read.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import yaml

from kdprune.errors import UserError

log = logging.getLogger("kdprune")

_TOL = 1e-6
_LABEL_HELP = "expected `class x_center y_center width height` (or a segment `class x1 y1 x2 y2 x3 y3 ...`)"


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _names_dict(names, where: str) -> dict[int, str]:
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if not isinstance(names, dict):
        raise UserError(f"{where}: `names` must be a list or a mapping id -> name, not {type(names).__name__}")
    try:
        out = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise UserError(f"{where}: `names` keys must be class ids 0..{len(names) - 1}, got {list(names)}") from None
    if sorted(out) != list(range(len(out))):
        raise UserError(f"{where}: `names` keys must be the class ids 0..{len(out) - 1}, got {sorted(out)}")
    return dict(sorted(out.items()))


def _dataset_root(data: dict, yaml_path: Path) -> Path:
    """Dataset root as ultralytics' check_det_dataset computes it."""
    root = Path(str(data.get("path") or yaml_path.parent))
    if not root.exists() and not root.is_absolute():
        from ultralytics.utils import DATASETS_DIR

        root = (DATASETS_DIR / root).resolve()
    return root


def _resolve(root: Path, entry: str) -> Path:
    x = (root / entry).resolve()
    if not x.exists() and entry.startswith("../"):
        x = (root / entry[3:]).resolve()
    return x


def check_data_yaml(path: str | Path) -> dict:
    """Load and check a user's data.yaml; raise UserError (one line: what is wrong, what to do) for a missing file,
    not a YAML mapping, no or empty `names`, `nc` != len(names), a `train`/`val` entry missing or pointing to a path
    that does not exist (resolved against `path:` if given, else the yaml's folder, as ultralytics does).

    Returns the parsed dict with `names` as {int: str}, `nc`, `path` (the resolved root), `yaml_file`, and
    `train`/`val` (and `test` if given) as absolute path strings (lists stay lists)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"data.yaml not found: {p} (give the path of an existing dataset YAML file)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        why = getattr(e, "problem", None) or e
        raise UserError(_one_line(f"{where}: not valid YAML ({why}); fix the syntax")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(_one_line(f"{p}: cannot read ({e})")) from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: not a YAML mapping; expected keys path, train, val and names")
    if not data.get("names"):
        raise UserError(f"{p}: no class names; add `names:` (a list, or a mapping id -> name)")
    names = _names_dict(data["names"], str(p))
    if "nc" in data:
        nc = data["nc"]
        try:  # as ultralytics: integer-like values (3, 3.0, '3') are fine
            ok = not isinstance(nc, bool) and float(nc) == int(float(nc))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise UserError(f"{p}: `nc: {nc}` must be an integer (the number of names); or delete `nc:`")
        if int(float(nc)) != len(names):
            raise UserError(f"{p}: `nc: {nc}` but {len(names)} names are given; make them agree (or delete `nc:`)")
    root = _dataset_root(data, p)
    out = dict(data, names=names, nc=len(names), path=str(root), yaml_file=str(p.resolve()))
    for k in ("train", "val", "test"):
        entry = data.get(k)
        if not entry:
            if k == "test":
                continue
            raise UserError(f"{p}: no `{k}:` entry; add `{k}: <image folder, image list .txt, or a list of them>`")
        entries = entry if isinstance(entry, list) else [entry]
        if not all(isinstance(e, str) and e for e in entries):
            raise UserError(f"{p}: `{k}:` must be a path or a list of paths, got {entry!r}")
        resolved = [_resolve(root, e) for e in entries]
        for e, x in zip(entries, resolved):
            if k != "test" and not x.exists():
                raise UserError(f"{p}: `{k}: {e}` -> {x} does not exist (relative paths are taken from {root}; "
                                f"fix `path:` or `{k}:`)")
        out[k] = [str(x) for x in resolved] if isinstance(entry, list) else str(resolved[0])
    return out


def split_image_files(entry: str | list[str]) -> list[str]:
    """Image files of one split entry (folders searched recursively, .txt image lists), as ultralytics reads them."""
    from ultralytics.data.utils import IMG_FORMATS

    files: list[str] = []
    for p in entry if isinstance(entry, list) else [entry]:
        p = Path(p)
        if p.is_dir():
            files += glob.glob(str(Path(glob.escape(p)) / "**" / "*.*"), recursive=True)
        elif p.is_file():
            try:
                lines = p.read_text(encoding="utf-8-sig").strip().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(_one_line(f"{p}: cannot read the image list ({e})")) from None
            parent = str(p.parent) + os.sep
            files += [x.replace("./", parent, 1) if x.startswith("./") else x for x in lines]
        else:
            raise UserError(f"{p} does not exist; fix the split entry in data.yaml")
    return sorted(x.replace("/", os.sep) for x in files if x.rpartition(".")[-1].lower() in IMG_FORMATS)


def _bad_line(fields: list[str], nc: int) -> str | None:
    """What is wrong with one label line, or None."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return f"{n} fields, {_LABEL_HELP}"
    try:
        vals = [float(x) for x in fields]
    except ValueError:
        return f"non-numeric field in {' '.join(fields)!r}, {_LABEL_HELP}"
    c = vals[0]
    if not (c.is_integer() and 0 <= c < nc):
        return f"class id {fields[0]} is not an integer in [0, {nc}) (data.yaml has {nc} names)"
    for f, v in zip(fields[1:], vals[1:]):
        if not (-_TOL <= v <= 1 + _TOL):  # also rejects nan
            return f"coordinate {f} is outside [0, 1]; coordinates must be normalised by the image width/height"
    return None


def check_labels(data: dict, splits=("train", "val")) -> None:
    """Scan every label .txt of the given splits (labels next to images, '/images/' -> '/labels/', as ultralytics'
    img2label_paths does; missing label files are background images). Raise UserError naming `file:line` of the
    first bad line (wrong field count, non-numeric, class id not an integer in [0, nc), coordinate outside [0, 1]),
    with the number of further bad lines; also when a split has no images."""
    from ultralytics.data.utils import img2label_paths

    names = data.get("names") or {}
    nc = int(data.get("nc") or len(names))
    first, n_bad, bad_files = None, 0, set()
    for split in splits:
        entry = data.get(split)
        if not entry:
            raise UserError(f"data.yaml has no `{split}:` entry")
        images = split_image_files(entry)
        if not images:
            raise UserError(f"{split}: no images found in {entry} (image types: jpg, png, bmp, tif, webp, ...)")
        labels = img2label_paths(images)
        labelled = 0  # images with at least one object
        for label in labels:
            try:
                with open(label, encoding="utf-8", errors="replace") as f:
                    text = f.read()
            except FileNotFoundError:
                continue  # no label file: a background image
            except OSError as e:
                raise UserError(_one_line(f"{label}: cannot read ({e})")) from None
            lines = [ln.split() for ln in text.splitlines()]
            labelled += any(lines)
            for i, fields in enumerate(lines, 1):
                if not fields:
                    continue
                why = _bad_line(fields, nc)
                if why is not None:
                    n_bad += 1
                    bad_files.add(label)
                    first = first or f"{label}:{i}: {why}"
        _check_labelled(split, len(images), labelled, labels[0])
    if first is not None:
        more = f" (+{n_bad - 1} more bad lines in {len(bad_files)} files)" if n_bad > 1 else ""
        raise UserError(_one_line(f"{first}{more}; fix or remove these lines"))


# Background images (no objects) are normal in a detection set (ultralytics suggests 0-10 %); past this share the
# labels are more likely misplaced than the scenes empty.
BACKGROUND_WARN = 0.5


def _check_labelled(split: str, images: int, labelled: int, first_label: str) -> None:
    """A split none of whose images has a label cannot be trained (train) or scored (val: every mAP would read 0):
    refused, naming where labels were looked for. A large share without labels is a warning with the counts."""
    where = Path(first_label).parent
    if labelled == 0:
        raise UserError(f"{split}: none of its {images} images has a label (looked for YOLO .txt files beside the "
                        f"images' folder, e.g. {where}/); a {split} split without labels cannot be "
                        f"{'trained on' if split == 'train' else 'scored (every mAP would be 0)'}: put each image's "
                        "labels in labels/<split>/<image name>.txt, as ultralytics expects")
    if (images - labelled) / images > BACKGROUND_WARN:
        log.warning(f"kdprune: {split}: {images - labelled} of {images} images have no label (background images); "
                    f"if that is not intended, check the label files in {where}/")


def check_imgsz(imgsz) -> None:
    """``data.imgsz``: a multiple of 32, the largest stride of every YOLO detector."""
    if int(imgsz) % 32:
        raise UserError(f"data.imgsz={imgsz}: must be a multiple of 32 (the model's largest stride).")
