"""The embedded "shapes" dataset: deterministic bytes, valid labels, long tail, scale range, ultralytics-readable."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

from pathlib import Path

import cv2
import numpy as np
import pytest

from kdprune.data import scene, synth
from kdprune.data.checks import check_data_yaml, check_labels
from kdprune.data.scene import CLASS_NAMES, DATASET_VERSION
from kdprune.data.synth import ensure_dataset, generate

SMALL = dict(n_train=24, n_val=8, imgsz=96)


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root; data.yaml without its `path:` line (the absolute folder differs)."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "data.yaml":
                data = b"".join(x for x in data.splitlines(True) if not x.startswith(b"path:"))
            out[str(f.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _read_labels(root: Path, split: str) -> list[tuple[Path, tuple[int, int], np.ndarray]]:
    """(image, (h, w), labels (n, 5)) for every image of a split."""
    out = []
    for img in sorted((root / "images" / split).glob("*.jpg")):
        lab = root / "labels" / split / (img.stem + ".txt")
        rows = [list(map(float, x.split())) for x in lab.read_text().splitlines()]
        h, w = cv2.imread(str(img)).shape[:2]
        out.append((img, (h, w), np.array(rows, float).reshape(-1, 5)))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("small") / "ds", workers=0, **SMALL)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Enough objects for distribution checks; small images keep it fast."""
    return generate(tmp_path_factory.mktemp("big") / "ds", n_train=300, n_val=60, imgsz=64, workers=0)


def test_api_constants():
    assert DATASET_VERSION.startswith("shapes-v")  # part of the cache folder name: bump it when bytes change
    assert len(CLASS_NAMES) >= 6 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_same_bytes_twice_and_with_workers(tmp_path, small):
    a = _digests(small.parent)
    b = _digests(generate(tmp_path / "b", workers=0, **SMALL).parent)
    c = _digests(generate(tmp_path / "c", workers=2, **SMALL).parent)
    assert len(a) == 2 * (SMALL["n_train"] + SMALL["n_val"]) + 1
    assert a == b == c
    d = _digests(generate(tmp_path / "d", workers=0, seed=1, **SMALL).parent)
    assert a.keys() == d.keys() and a != d  # the seed matters


def test_layout_and_yaml(small):
    root = small.parent
    text = small.read_text()
    assert f'path: "{root.resolve()}"' in text and "train: images/train" in text and "val: images/val" in text
    for split, n in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
        assert len(list((root / "images" / split).glob("*.jpg"))) == n
        assert len(list((root / "labels" / split).glob("*.txt"))) == n
    data = check_data_yaml(small)
    assert data["nc"] == len(CLASS_NAMES) and data["names"] == dict(enumerate(CLASS_NAMES))


def test_labels_valid(small):
    check_labels(check_data_yaml(small))
    imgsz = SMALL["imgsz"]
    for split in ("train", "val"):
        for img, (h, w), lab in _read_labels(small.parent, split):
            assert img.read_bytes()[:2] == b"\xff\xd8"  # JPEG
            assert w == imgsz and 0.75 * imgsz <= h <= imgsz and h % 8 == 0
            assert 0 <= len(lab) <= 8
            if len(lab):
                assert np.all(lab[:, 0] == lab[:, 0].round()) and lab[:, 0].min() >= 0
                assert lab[:, 0].max() < len(CLASS_NAMES)
                assert lab[:, 1:].min() >= 0 and lab[:, 1:].max() <= 1
                x1, x2 = (lab[:, 1] - lab[:, 3] / 2) * w, (lab[:, 1] + lab[:, 3] / 2) * w
                y1, y2 = (lab[:, 2] - lab[:, 4] / 2) * h, (lab[:, 2] + lab[:, 4] / 2) * h
                assert x1.min() > -1e-3 and y1.min() > -1e-3 and x2.max() < w + 1e-3 and y2.max() < h + 1e-3
                assert (lab[:, 3] * w).min() >= 3 - 1e-3 and (lab[:, 4] * h).min() >= 3 - 1e-3


def test_long_tail_scale_and_backgrounds(big):
    train = _read_labels(big.parent, "train")
    counts = np.bincount(np.concatenate([lab[:, 0] for *_, lab in train]).astype(int), minlength=len(CLASS_NAMES))
    assert counts.min() > 0 and len(counts) == len(CLASS_NAMES)
    assert counts.max() >= 10 * counts.min()
    sides = np.concatenate([np.maximum(lab[:, 3] * w, lab[:, 4] * h) for _, (h, w), lab in train])
    assert sides.max() / sides.min() >= 4
    per_image = np.array([len(lab) for *_, lab in train])
    assert (per_image == 0).any() and per_image.max() == 8 and per_image.mean() > 2
    val = _read_labels(big.parent, "val")
    val_counts = np.bincount(np.concatenate([lab[:, 0] for *_, lab in val]).astype(int), minlength=len(CLASS_NAMES))
    assert val_counts.argmax() == counts.argmax()  # same distribution: the same head class


def test_colour_does_not_give_the_class(big):
    """Mean colour near each box centre: classes differ far less than instances within a class."""
    cols: dict[int, list] = {}
    for img, (h, w), lab in _read_labels(big.parent, "train"):
        im = cv2.imread(str(img)).astype(float)
        for c, x, y, bw, bh in lab:
            x1, x2 = int((x - bw / 4) * w), int(np.ceil((x + bw / 4) * w))
            y1, y2 = int((y - bh / 4) * h), int(np.ceil((y + bh / 4) * h))
            cols.setdefault(int(c), []).append(im[y1:y2, x1:x2].reshape(-1, 3).mean(0))
    means = np.array([np.mean(v, 0) for v in cols.values()])
    within = np.mean([np.std(v, 0) for v in cols.values()], 0)
    assert np.all(np.ptp(means, 0) < within)


def test_objects_overlap_and_touch(monkeypatch):
    """Some objects share a border with (touch or partly cover) another, none hides over half of an earlier one."""
    scenes = []
    orig = scene._Scene.labels

    def spy(self):
        scenes.append(self)
        return orig(self)

    monkeypatch.setattr(scene._Scene, "labels", spy)
    for i in range(40):
        scene.make_image(0, "train", i, 128)
    adjacent, occluded = 0, 0
    for s in scenes:
        o = s.owner
        for a, b in ((o[:, 1:], o[:, :-1]), (o[1:], o[:-1])):
            adjacent += int(((a != b) & (a >= 0) & (b >= 0)).any())
        for ob in s.objs:
            assert ob["visible"] >= 0.5 * ob["full"]
            occluded += ob["visible"] < 0.9 * ob["full"]
    assert adjacent >= 10 and occluded >= 10


def test_ultralytics_reads_it(small):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(small))
    assert data["nc"] == len(CLASS_NAMES) and Path(data["val"]) == small.parent.resolve() / "images" / "val"
    cfg = get_cfg()
    cfg.imgsz = SMALL["imgsz"]
    ds = build_yolo_dataset(cfg, data["val"], 4, data, mode="val")
    assert len(ds) == SMALL["n_val"]
    item = ds[0]
    assert item["img"].shape[0] == 3 and item["cls"].shape[0] == item["bboxes"].shape[0]


def test_ensure_dataset_caches(tmp_path, monkeypatch):
    kw = dict(n_train=6, n_val=3, imgsz=64)
    y1 = ensure_dataset(tmp_path, workers=0, **kw)
    folder = y1.parent
    assert folder.parent == tmp_path.resolve() and folder.name.startswith(f"{DATASET_VERSION}-")
    assert f'path: "{folder}"' in y1.read_text()
    check_labels(check_data_yaml(y1))
    mtime = y1.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "_generate", boom)
    assert ensure_dataset(tmp_path, **kw) == y1  # cached; workers do not change the key
    assert ensure_dataset(str(tmp_path), workers=2, **kw) == y1
    assert y1.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folders
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_dataset(tmp_path, **dict(kw, seed=1))  # other kwargs, other folder
    with pytest.raises(TypeError, match=r"unexpected keyword arguments: \['bogus'\]"):
        ensure_dataset(tmp_path, bogus=1)


def test_ensure_dataset_interrupted_leaves_nothing(tmp_path, monkeypatch):
    real = synth._generate

    def interrupted(root, *a, **k):
        real(root, *a, **dict(k, n_train=2))  # some files written ...
        raise KeyboardInterrupt  # ... then killed

    monkeypatch.setattr(synth, "_generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(tmp_path, n_train=4, n_val=2, imgsz=64, workers=0)
    assert list(tmp_path.iterdir()) == []


def test_ensure_dataset_loses_race(tmp_path, monkeypatch):
    """Another process renames its copy into place first: ours is discarded and theirs used."""
    real = synth._generate

    def racing(root, final, *a, **k):
        real(root, final, *a, **k)
        other = final.parent / ".other-tmp"
        real(other, final, *a, **k)
        os.rename(other, final)

    monkeypatch.setattr(synth, "_generate", racing)
    y = ensure_dataset(tmp_path, n_train=3, n_val=2, imgsz=64, workers=0)
    assert y.is_file() and [p.name for p in tmp_path.iterdir()] == [y.parent.name]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="imgsz >= 32; got 2, 1, 16"):
        generate(tmp_path, n_train=2, n_val=1, imgsz=16, workers=0)
    with pytest.raises(ValueError, match="glyphs"):
        generate(tmp_path, n_train=2, n_val=1, imgsz=64, kind="letters", workers=0)


def test_glyphs_is_a_second_dataset_with_other_content(tmp_path):
    """data=glyphs: other classes and backgrounds, a steeper tail, more and smaller objects, its own cache folder."""
    from kdprune.data.scene import KINDS, make_image
    from kdprune.data.shapes import GLYPHS

    y = ensure_dataset(tmp_path, n_train=120, n_val=8, imgsz=96, kind="glyphs", workers=0)
    assert y.parent.name.startswith("glyphs-v1-")
    assert ensure_dataset(tmp_path, n_train=120, n_val=8, imgsz=96, workers=0).parent.name.startswith(DATASET_VERSION)
    data = check_data_yaml(y)
    check_labels(data)
    assert data["names"] == dict(enumerate(GLYPHS))
    labs = _read_labels(y.parent, "train")
    counts = np.bincount(np.concatenate([lab[:, 0] for *_, lab in labs]).astype(int), minlength=len(GLYPHS))
    assert counts[0] > 12 * max(counts[-1], 1)  # ~33x by design; the shapes tail is ~15x
    assert np.mean([len(lab) for *_, lab in labs]) > 4.5  # 0-12 objects (shapes: 0-8, mean ~4)
    first, again = make_image(0, "train", 5, 96, "glyphs"), make_image(0, "train", 5, 96, "glyphs")
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not np.array_equal(first[0], make_image(0, "train", 5, 96, "shapes")[0])
    assert KINDS["glyphs"].names != KINDS["shapes"].names
