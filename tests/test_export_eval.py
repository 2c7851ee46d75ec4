"""Host decode == ultralytics' Detect; ONNX export == PyTorch; the runner -> decode -> validator path scores a perfect
prediction at mAP 1 (and a wrong one near 0); latency is measured over enough runs."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from kdprune.export.decode import decode, nms
from kdprune.export.onnx import export_onnx, onnx_ops
from kdprune.export.runtime import OnnxRunner, TorchRunner, latency_ms
from kdprune.export.scoring import evaluate_runner, square_val_loader
from kdprune.yolo.rawhead import RawHeadModel
from tests.conftest import val_args

pytestmark = pytest.mark.slow  # trains, converts or exports (make test-fast leaves it out)

IMGSZ = 64
ORACLE_SCALE = 3.0  # val mAP50-95 ~0.73: imperfect boxes, so ranking and IoU both matter


def _model(cfg: str, nc: int = 3, seed: int = 0):
    """Random-weight detector in eval mode, head perturbed so boxes vary and scores sit around 0.5 (not ~0)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    m = DetectionModel(cfg, nc=nc, verbose=False).eval()
    head = m.model[-1]
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad:  # not the DFL's fixed arange conv
                p.add_(torch.randn_like(p) * 0.1)
        for branch in ("cv3", "one2one_cv3"):
            for seq in getattr(head, branch, None) or []:
                seq[-1].bias.add_(8.0)
    return m


@pytest.fixture(scope="module")
def yolo11():
    return _model("yolo11n.yaml")


@pytest.fixture(scope="module")
def yolo26():
    return _model("yolo26n.yaml", seed=1)


def _check_decode(m, end2end: bool, x: torch.Tensor):
    head = m.model[-1]
    m.end2end = end2end  # ultralytics 8.4.190: YOLO26 infers one-to-many + NMS unless end2end is set (nms=False)
    with torch.no_grad():
        ref = m(x)[0]
        raw = RawHeadModel(m, one2one=end2end)(x)
    kw = dict(nc=head.nc, reg_max=head.reg_max, end2end=end2end)
    got = decode(raw, head.stride, **kw)
    assert got.shape == ref.shape
    nhwc = [r.permute(0, 2, 3, 1).numpy() for r in raw]
    again = decode(nhwc, head.stride.tolist(), channels_last=True, **kw)
    if end2end:  # rows of equal score: ultralytics' torch.topk leaves their order open, decode's is by anchor
        assert len(got[0, :, 4].unique()) < got.shape[1] - 10  # ties exist: the comparison below must allow them
        torch.testing.assert_close(got[..., 4], ref[..., 4])  # the scores, in order, are ultralytics'
        for b in range(len(got)):  # rows above the k-th score (at it, which tied rows make the cut is open)
            above = ref[b, :, 4] > ref[b, -1, 4]
            assert above.sum() > 20
            got_, ref_, again_ = (_by_row(t[b:b + 1, above]) for t in (got, ref, again))
            torch.testing.assert_close(got_, ref_, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(again_, ref_, atol=1e-4, rtol=1e-5)
        return got
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-4, rtol=1e-5)
    return got


def _by_row(rows: torch.Tensor) -> torch.Tensor:
    """(B, k, 6) top-k rows in a canonical order: by score, then class, then the box."""
    out = []
    for r in rows:
        keys = [r[:, j].numpy().round(3) for j in (3, 2, 1, 0, 5, 4)]
        out.append(r[torch.from_numpy(np.lexsort(keys))])
    return torch.stack(out)


def test_decode_matches_detect_yolo11(yolo11):
    x = torch.rand(2, 3, IMGSZ, 96)
    got = _check_decode(yolo11, False, x)
    assert got.shape == (2, 4 + 3, 8 * 12 + 4 * 6 + 2 * 3)
    assert 0.05 < got[:, 4:].mean() < 0.95  # scores not degenerate
    dets = nms(got, conf=0.25)
    assert len(dets) == 2 and all(d.shape[1] == 6 and len(d) for d in dets)


def test_decode_matches_detect_yolo26(yolo26):
    x = torch.rand(2, 3, 96, IMGSZ)
    _check_decode(yolo26, False, x)  # one-to-many branch, reg_max=1: xywh + scores
    got = _check_decode(yolo26, True, x)  # one-to-one branch: top-k rows x1 y1 x2 y2 score cls
    assert got.shape == (2, 12 * 8 + 6 * 4 + 3 * 2, 6)
    assert (got[..., 4].diff(dim=1) <= 0).all() and got[..., 4].std() > 0.01
    assert len(nms(got, conf=0.5)[0]) == int((got[0, :, 4] > 0.5).sum())  # end2end: threshold only, no NMS


@pytest.fixture(scope="module")
def tiny_val(cache_dir):
    from kdprune.build import hyp_from_cfg
    from kdprune.data import resolve_data
    from tests.conftest import TINY, compose

    cfg = compose(TINY)
    data = resolve_data(cfg.data.yaml, cfg.cache_dir, dict(cfg.data.embedded), cfg.data.check_labels)
    return data, square_val_loader(data, hyp_from_cfg(cfg, data), IMGSZ)


class GroundTruthRunner:
    """Raw outputs that decode to the val labels: per box, one anchor (cell holding its centre, first level whose
    distances fit the DFL range) with a high class logit, distances encoded as two-bin DFL distributions (exact
    expectation) or directly for reg_max=1. Looked up by image bytes, so it also proves the loader feeds the runner
    exactly the images the evaluator scores."""

    def __init__(self, loader, nc: int, reg_max: int, strides=(8, 16, 32), wrong_class: bool = False):
        self.nc, self.reg_max, self.strides, self.wrong = nc, reg_max, strides, wrong_class
        self.output_names = [f"{k}{i}" for i in range(len(strides)) for k in ("box", "cls")]
        self.table = {}
        for batch in loader:
            img = (batch["img"].float() / 255).numpy()
            h, w = img.shape[2:]
            xywh = batch["bboxes"].numpy().astype(np.float64) * [w, h, w, h]
            xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            self.table[self._key(img)] = self._encode(xyxy, batch["cls"].view(-1).long().tolist(), h, w)
        self.calls = 0

    @staticmethod
    def _key(img):
        return hashlib.sha1(np.ascontiguousarray(img, dtype=np.float32).tobytes()).hexdigest()

    def _encode(self, boxes, classes, h, w):
        outs = []
        for s in self.strides:
            outs += [np.zeros((1, 4 * self.reg_max, h // s, w // s), np.float32),
                     np.full((1, self.nc, h // s, w // s), -20.0, np.float32)]
        taken = set()
        for box, c in zip(boxes, classes):
            cands = []
            for lvl, s in enumerate(self.strides):
                gx = min(int((box[0] + box[2]) / 2 // s), w // s - 1)
                gy = min(int((box[1] + box[3]) / 2 // s), h // s - 1)
                ax, ay = (gx + 0.5) * s, (gy + 0.5) * s
                d = np.array([ax - box[0], ay - box[1], box[2] - ax, box[3] - ay]) / s
                fits = self.reg_max == 1 or (d.min() >= 0 and d.max() <= self.reg_max - 1)
                if (lvl, gy, gx) not in taken:
                    cands.append((not fits, lvl, gy, gx, d))
            assert cands, "more boxes than cells"
            _, lvl, gy, gx, d = min(cands, key=lambda t: (t[0], t[1]))
            taken.add((lvl, gy, gx))
            outs[2 * lvl][0, :, gy, gx] = self._dist_logits(d)
            outs[2 * lvl + 1][0, (c + self.wrong) % self.nc, gy, gx] = 10.0
        return outs

    def _dist_logits(self, d):
        if self.reg_max == 1:
            return d
        logits = np.full((4, self.reg_max), -40.0)
        for side, v in enumerate(np.clip(d, 0, self.reg_max - 1)):
            lo = min(int(math.floor(v)), self.reg_max - 2)
            f = v - lo
            logits[side, lo], logits[side, lo + 1] = math.log(max(1 - f, 1e-15)), math.log(max(f, 1e-15))
        return logits.reshape(-1)  # side-major: channel side * reg_max + bin

    def __call__(self, img):
        self.calls += 1
        return [o.copy() for o in self.table[self._key(img)]]


@pytest.mark.parametrize("reg_max,end2end", [(16, False), (1, True)])
def test_evaluate_runner_scores_ground_truth(tiny_val, reg_max, end2end):
    data, loader = tiny_val
    names, nc = data["names"], len(data["names"])
    assert all(b["img"].shape[2:] == (IMGSZ, IMGSZ) for b in loader)  # letterboxed square, whatever the aspect
    kw = dict(strides=[8, 16, 32], nc=nc, reg_max=reg_max, names=names, end2end=end2end, **val_args())
    gt = GroundTruthRunner(loader, nc, reg_max)
    seen = []
    res = evaluate_runner(gt, loader, data, progress=lambda n, total: seen.append((n, total)), **kw)
    assert gt.calls == res["images"] == len(loader.dataset) == 8 and seen[-1] == (8, 8)
    assert res["mAP50"] > 0.99 and res["mAP50-95"] > 0.9 and res["recall"] > 0.99, res
    assert set(res["per_class"]) <= set(names.values()) and res["per_class"]
    # NHWC outputs decode the same
    nhwc = lambda img: [o.transpose(0, 2, 3, 1) for o in gt(img)]  # noqa: E731
    assert evaluate_runner(nhwc, loader, data, channels_last=True, **kw)["mAP50"] == res["mAP50"]
    # the same boxes with the wrong class must score (near) zero: the path can fail
    bad = evaluate_runner(GroundTruthRunner(loader, nc, reg_max, wrong_class=True), loader, data, **kw)
    assert bad["mAP50"] < 0.1, bad


class OracleDetector(torch.nn.Module):
    """A real yolo11n graph whose outputs are shifted towards the ground truth: ``GroundTruthRunner``'s logits for the
    stored val image the input equals (picked inside the graph by a hard softmax over L1 distances) plus ``scale`` x
    yolo11n's raw outputs. Exports and runs like any ``RawHeadModel``; its val mAP is high but not 1 (the yolo11n
    part moves boxes and scores), so the ONNX-vs-PyTorch mAP comparison ranks real, imperfect predictions."""

    def __init__(self, raw: RawHeadModel, loader, scale: float):
        super().__init__()
        self.raw, self.scale = raw, scale
        gt = GroundTruthRunner(loader, raw.nc, raw.reg_max)
        imgs = [(b["img"].float() / 255) for b in loader]
        targets = [gt(im.numpy()) for im in imgs]
        self.register_buffer("images", torch.cat(imgs))
        for j in range(len(targets[0])):
            self.register_buffer(f"target{j}", torch.from_numpy(np.concatenate([t[j] for t in targets])))

    def output_names(self) -> list[str]:
        return self.raw.output_names()

    def forward(self, x):
        w = torch.softmax(-1e4 * (x - self.images).abs().flatten(1).mean(1), 0)  # (K,): one-hot for x's image
        outs = self.raw(x)
        return tuple((w[:, None, None, None] * getattr(self, f"target{j}")).sum(0, keepdim=True) + self.scale * o
                     for j, o in enumerate(outs))


@pytest.fixture(scope="module")
def oracle(tiny_val):
    data, loader = tiny_val
    m = _model("yolo11n.yaml", nc=len(data["names"]), seed=2)
    return OracleDetector(RawHeadModel(m), loader, scale=ORACLE_SCALE).eval()


@pytest.fixture(scope="module")
def onnx_fp32(oracle, tmp_path_factory):
    path = export_onnx(oracle, tmp_path_factory.mktemp("onnx") / "m.onnx", IMGSZ)
    return oracle, path


def test_onnx_export_matches_torch(onnx_fp32):
    import onnx

    raw, path = onnx_fp32
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == raw.output_names()
    ops = onnx_ops(path)
    assert ops["Conv"] > 50 and "QuantizeLinear" not in ops

    ort_run, pt_run = OnnxRunner(path, threads=1), TorchRunner(raw)
    assert ort_run.output_names == pt_run.output_names == raw.output_names()
    img = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    a, b = ort_run(img), pt_run(img)
    shapes = [(1, c, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32) for c in (64, 8)]
    assert [o.shape for o in a] == [o.shape for o in b] == shapes
    assert all(o.dtype == np.float32 for o in a + b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)


def test_evaluate_runner_onnx_equals_torch(onnx_fp32, tiny_val):
    raw, path = onnx_fp32
    data, loader = tiny_val
    head = raw.raw.model.model[-1]
    dec = dict(strides=head.stride.tolist(), nc=head.nc, reg_max=head.reg_max)
    ort_run, pt_run = OnnxRunner(path), TorchRunner(raw)
    r_ort = evaluate_runner(ort_run, loader, data, names=data["names"], **dec, **val_args())
    r_pt = evaluate_runner(pt_run, loader, data, names=data["names"], **dec, **val_args())
    assert r_ort["images"] == r_pt["images"] == 8
    assert r_pt["mAP50"] > 0.9 and 0.3 < r_pt["mAP50-95"] < 0.97, r_pt  # real, imperfect predictions: not 0 == 0
    for k in ("mAP50", "mAP50-95", "precision", "recall"):
        assert abs(r_ort[k] - r_pt[k]) <= 0.002, (k, r_ort, r_pt)
    for batch in loader:  # and the decoded predictions themselves, before NMS
        img = (batch["img"].float() / 255).numpy()
        torch.testing.assert_close(decode(ort_run(img), **dec), decode(pt_run(img), **dec), atol=1e-3, rtol=1e-4)


def test_latency_ms(onnx_fp32):
    raw, path = onnx_fp32
    res = latency_ms(OnnxRunner(path, threads=1), IMGSZ, runs=20, warmup=2)
    assert res["runs"] == 20 and 0 < res["median"] <= res["p90"]
    with pytest.raises(ValueError, match="runs=5; take at least"):
        latency_ms(TorchRunner(raw), IMGSZ, runs=5)


def test_fake_quant_exports_as_qdq(tmp_path):
    """Fake-quant ops (what QAT inserts) reach the ONNX graph as QuantizeLinear/DequantizeLinear, and run in ORT."""

    class FakeQuant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def output_names(self):
            return ["box0", "cls0"]

        def forward(self, x):
            x = torch.fake_quantize_per_tensor_affine(x, 1 / 255, 0, 0, 255)
            scale = self.conv.weight.detach().abs().amax((1, 2, 3)) / 127
            w = torch.fake_quantize_per_channel_affine(self.conv.weight, scale, torch.zeros(4, dtype=torch.int32), 0,
                                                       -128, 127)
            y = torch.nn.functional.conv2d(x, w, self.conv.bias, padding=1)
            return y, y.sigmoid()

    m = FakeQuant()
    path = export_onnx(m, tmp_path / "q.onnx", 32)
    ops = onnx_ops(path)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 2
    img = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    for a, b in zip(OnnxRunner(path)(img), TorchRunner(m)(img)):
        np.testing.assert_allclose(a, b, atol=1e-5)
