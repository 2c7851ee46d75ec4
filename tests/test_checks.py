"""Dataset checks at the edge: every user mistake is one UserError line naming the file (and line)."""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import time
from pathlib import Path

import pytest

from kdprune.data.checks import check_data_yaml, check_labels, split_image_files
from kdprune.errors import UserError

YAML = "path: {path}\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n"


def make_ds(root: Path, labels: dict[str, str] | None = None, yaml_text: str | None = None) -> Path:
    """A tiny dataset: images are empty files (the checks never decode them), labels as given."""
    labels = {"train/a": "0 0.5 0.5 0.2 0.2\n", "train/b": "", "val/c": "2 0.1 0.1 0.1 0.1\n", **(labels or {})}
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for key, text in labels.items():
        (root / "images" / f"{key}.jpg").write_bytes(b"")
        if text is not None:
            (root / "labels" / f"{key}.txt").write_text(text)
    y = root / "data.yaml"
    y.write_text(YAML.format(path=root) if yaml_text is None else yaml_text)
    return y


def raises_one_line(fn, *args, contains: tuple[str, ...] = ()) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for s in contains:
        assert s in msg, (s, msg)
    return msg


def test_good_dataset(tmp_path):
    y = make_ds(tmp_path)
    data = check_data_yaml(y)
    assert data["names"] == {0: "a", 1: "b", 2: "c"} and data["nc"] == 3
    assert data["train"] == str(tmp_path / "images" / "train") and data["yaml_file"] == str(y.resolve())
    check_labels(data)
    check_labels(data, splits=("val",))


def test_names_dict_and_relative_paths(tmp_path):
    """No `path:`: entries resolve against the yaml's folder; `names` may be a mapping with str keys."""
    y = make_ds(tmp_path, yaml_text="train: images/train\nval: images/val\nnc: 2\nnames: {'1': y, 0: x}\n")
    data = check_data_yaml(y)
    assert data["names"] == {0: "x", 1: "y"} and data["nc"] == 2
    assert data["val"] == str(tmp_path / "images" / "val")
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "d.yaml").write_text(f"path: {tmp_path}\ntrain: [images/train]\nval: images/val\nnames: [a, b, c]\n")
    assert check_data_yaml(sub / "d.yaml")["train"] == [str(tmp_path / "images" / "train")]


def test_yaml_errors(tmp_path):
    raises_one_line(check_data_yaml, tmp_path / "nope.yaml", contains=("nope.yaml", "not found"))
    bad = {
        "list.yaml": ("- a\n- b\n", "mapping"),
        "nonames.yaml": (f"path: {tmp_path}\ntrain: images/train\nval: images/val\n", "names"),
        "empty.yaml": (f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: []\n", "names"),
        "nc.yaml": (YAML.format(path=tmp_path) + "nc: 4\n", "nc: 4"),
        "ncstr.yaml": (YAML.format(path=tmp_path) + "nc: three\n", "nc: three"),
        "noval.yaml": (f"path: {tmp_path}\ntrain: images/train\nnames: [a]\n", "val"),
        "missing.yaml": (f"path: {tmp_path}\ntrain: images/train\nval: images/test\nnames: [a]\n", "images/test"),
        "syntax.yaml": ("names: [a, b\ntrain: x\n", "syntax.yaml"),
        "keys.yaml": (f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: {{0: a, 2: b}}\n", "names"),
    }
    make_ds(tmp_path)
    for name, (text, needle) in bad.items():
        (tmp_path / name).write_text(text)
        raises_one_line(check_data_yaml, tmp_path / name, contains=(name, needle))


@pytest.mark.parametrize(
    "text, line, needle",
    [
        ("0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n", 2, "class id 3"),  # class >= nc
        ("0 0.5 0.5 0.2 0.2\n\n1 1.5 0.5 0.2 0.2\n", 3, "1.5"),  # coordinate > 1, blank line counted
        ("1 0.5 0.5 0.2\n", 1, "4 fields"),  # wrong field count
        ("0 0.5 0.5 0.2 0.2 0.1\n", 1, "6 fields"),
        ("1 0.5 x 0.2 0.2\n", 1, "non-numeric"),
        ("1.5 0.5 0.5 0.2 0.2\n", 1, "class id 1.5"),
        ("-1 0.5 0.5 0.2 0.2\n", 1, "class id -1"),
        ("0 0.5 -0.01 0.2 0.2\n", 1, "-0.01"),
        ("0 0.5 nan 0.2 0.2\n", 1, "nan"),
    ],
)
def test_bad_label_lines(tmp_path, text, line, needle):
    data = check_data_yaml(make_ds(tmp_path, {"train/z": text}))
    label = tmp_path / "labels" / "train" / "z.txt"
    raises_one_line(check_labels, data, contains=(f"{label}:{line}:", needle))


def test_label_lines_accepted(tmp_path):
    ok = "0 0.5 0.5 0.2 0.2\n1.0 1.0000001 0 1 0.3\n2 0.1 0.1 0.9 0.1 0.5 0.9\r\n  \n"  # tolerance, segment, CRLF
    data = check_data_yaml(make_ds(tmp_path, {"train/z": ok, "val/nolabel": None}))  # missing label = background
    check_labels(data)


def test_counts_further_bad_lines(tmp_path):
    data = check_data_yaml(make_ds(tmp_path, {"train/y": "9 0 0 0 0\n9 0 0 0 0\n", "val/z": "0 2 0 0 0\n"}))
    msg = raises_one_line(check_labels, data, contains=("y.txt:1:",))
    assert "+2 more bad lines in 2 files" in msg


def test_image_list_txt_and_no_images(tmp_path):
    make_ds(tmp_path, {"train/z": "7 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "train.txt").write_text("./images/train/a.jpg\n./images/train/z.jpg\n")
    y = tmp_path / "list.yaml"
    y.write_text(f"path: {tmp_path}\ntrain: train.txt\nval: images/val\nnames: [a, b, c]\n")
    data = check_data_yaml(y)
    assert split_image_files(data["train"]) == [str(tmp_path / "images/train/a.jpg"),
                                                str(tmp_path / "images/train/z.jpg")]
    raises_one_line(check_labels, data, contains=("z.txt:1:", "class id 7"))
    (tmp_path / "images" / "empty").mkdir()
    raises_one_line(check_labels, dict(data, train=str(tmp_path / "images" / "empty")), contains=("no images",))


def test_fast_on_10k_files(tmp_path):
    img, lab = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    img.mkdir(parents=True)
    lab.mkdir(parents=True)
    text = "0 0.5 0.5 0.2 0.2\n1 0.25 0.75 0.1 0.3\n2 0.6 0.4 0.05 0.05\n"
    for i in range(10_000):
        (img / f"{i}.jpg").write_bytes(b"")
        (lab / f"{i}.txt").write_text(text)
    data = {"names": {0: "a", 1: "b", 2: "c"}, "nc": 3, "train": str(img)}
    t = time.perf_counter()
    check_labels(data, splits=("train",))
    assert time.perf_counter() - t < 2.0
