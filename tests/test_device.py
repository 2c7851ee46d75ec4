"""Device profiles (conf/device/): a part's flash and SRAM, the application's reserve, the model's budgets that
follow, the checks before a run, and the verdict on the device file."""

from __future__ import annotations

import pytest

from kdprune.errors import UserError
from kdprune.part import check_device, verdict, verdict_line
from tests.conftest import compose


def test_the_mcxn947_budgets_follow_from_the_part_and_its_reserve():
    d = compose(["device=mcxn947"]).device
    assert (d.flash_bytes, d.sram_bytes) == (2 * 1024 * 1024, 512 * 1024)
    assert (d.model_flash, d.model_sram) == (2_000_000, 384 * 1024)  # the user's 2 MB budget; 128 KiB kept
    d = compose(["device=mcxn947", "device.reserve.sram=65536", "device.reserve.flash=197152"]).device
    assert (d.model_flash, d.model_sram) == (1_900_000, 448 * 1024)
    rt = compose(["device=imxrt700"]).device
    assert rt.model_flash is None and rt.model_sram == 7_864_320 - 1_048_576  # no internal flash: the board's


def test_the_default_experiment_deploys_to_the_mcxn947():
    cfg = compose(experiment="yolo11n_mcu")
    assert cfg.device.name == "mcxn947" and cfg.target.name == cfg.device.target
    assert cfg.prune.target.int8_bytes == cfg.device.model_flash == 2_000_000
    assert cfg.prune.target.arena_bytes <= cfg.device.model_sram  # the RAM budget is the part's, not a free choice
    cfg = compose(["device.reserve.sram=262144"], experiment="yolo11n_mcu")
    assert cfg.prune.target.arena_bytes <= 262_144  # the reserve moves the pruning target


def test_generic_has_no_limits_and_no_verdict():
    d = compose().device
    assert d.name == "generic" and d.model_flash is None and d.model_sram is None
    assert verdict(d, 10**9, 10**9) is None


@pytest.mark.parametrize("over, needle", [
    (["device=mcxn947", "device.reserve.sram=600000"], "device.reserve.sram=600,000 leaves nothing"),
    (["device=mcxn947", "device.reserve.flash=-1"], "device.reserve.flash=-1: must be >= 0"),
    (["device=mcxn947", "target=ethos_u"], "target=neutron"),
])
def test_a_device_the_run_cannot_use_is_one_line(over, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_device(compose(over))


def test_the_verdict_judges_flash_and_arena_against_the_part():
    d = compose(["device=mcxn947"]).device
    ok = verdict(d, 1_983_000, 390_000, vela_sram=210_000)
    assert ok["fits"] and ok["flash"]["left"] == 2_097_152 - 1_983_000 and ok["sram"]["budget"] == 393_216
    line = verdict_line(ok)
    assert line.startswith("fits NXP MCX N947: flash 1,983,000 of 2,000,000 B (114,152 B of the part left")
    assert "SRAM 390,000 of 393,216 B" in line and "Vela's NPU SRAM plan 210,000 B" in line
    over = verdict(d, 1_983_000, 916_832)  # today's 256-px default before this profile
    assert not over["fits"] and over["flash"]["fits"] and not over["sram"]["fits"]
    assert verdict_line(over).startswith("does NOT fit") and "(OVER)" in verdict_line(over)
    assert not verdict(d, 2_000_001, 1000)["fits"]  # one byte over the flash budget


def test_the_verdict_line_names_the_ram_levers_the_run_used():
    v = verdict(compose(["device=mcxn947"]).device, 1_950_000, 380_000)
    v["levers"] = {"imgsz": 192, "fused_act_layers": 3, "fused_act": "relu", "keep_stem": True, "arena_target": 393_216}
    assert verdict_line(v).endswith("RAM levers: imgsz 192, relu in the first 3 layers, arena budget for the pruner "
                                    "393,216 B")


def test_the_device_levers_sweep_trains_every_combination_at_the_devices_budgets():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = hydra_compose("config", ["+experiment=yolo11n_mcu", "+hparams_search=device_levers"],
                            return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {"data.imgsz": ["160", "192", "224"], "model.fused_act_layers": ["0", "3"]}
    for px in params["data.imgsz"]:  # each job composes with the part's budgets as its pruning targets
        job = compose([f"data.imgsz={px}"], experiment="yolo11n_mcu")
        assert job.prune.target.arena_bytes == job.device.model_sram and job.data.imgsz == int(px)


def test_the_arena_replay_counts_the_pad_before_each_strided_conv():
    """TFLite pads a 3x3 stride-2 conv (0, 1) where PyTorch pads (1, 1), so the file has a PAD op and its padded copy is
    alive beside its source. With ReLU in layers 0-2 and the rest pruned, the stem's 16 x 96 x 96 output and its
    16 x 98 x 98 copy are the peak at 192 px: 301,120 B, what TFLM planned for the first 192-px default file."""
    from kdprune.pruning import YoloPruner
    from kdprune.pruning import arena as A
    from kdprune.yolo import build_model, fused_activation, hyp_namespace, split_blocks

    model = build_model("yolo11n.yaml", None, {i: str(i) for i in range(8)}, hyp_namespace(imgsz=192)).eval()
    fused_activation(model, 3)
    split_blocks(model)
    pruner = YoloPruner(model, keep_stem=True)
    pruner.apply(model, pruner.plan(model, 0.5))
    assert A.peak_activation_bytes(model, 192) == 16 * 96 * 96 + 16 * 98 * 98 == 301_120
    input_and_copy = 3 * 256 * 256 + 3 * 258 * 258  # the floor at 256 px: over 384 KiB before any structure
    assert input_and_copy > 384 * 1024 and A.peak_activation_bytes(model, 256) >= input_and_copy


@pytest.mark.parametrize("kernel,stride,padding,pad", [(3, 2, 1, (1, 1)), (4, 2, 1, None), (3, 1, 1, None),
                                                       (1, 1, 0, None), (3, 2, 0, None), (5, 2, 2, (2, 2))])
def test_a_pad_op_is_replayed_only_where_tflites_same_padding_differs(kernel, stride, padding, pad):
    """TFLite's SAME pads (out - 1) * stride + kernel - in, the smaller half first: a 3x3 (or 5x5) stride-2 kernel on
    an even input gets (0, 1) (or (1, 2)) where PyTorch pads both sides: an explicit PAD; a 4x4 stride-2 one gets
    (1, 1), as PyTorch: none."""
    import torch

    from kdprune.pruning.arena import _explicit_pad

    x, w = torch.zeros(1, 3, 64, 64), torch.zeros(8, 3, kernel, kernel)
    assert _explicit_pad((x, w, None, (stride, stride), (padding, padding))) == pad


def test_pad_free_downsample_keeps_the_function_and_removes_the_pad_copies():
    """model.pad_free_downsample=2: the stem and the next stride-2 conv become 4x4 kernels with the 3x3 weights in
    their top-left corner: the model computes the same outputs, and the arena replay no longer counts the padded
    copies of the image and of the stem's output (at 192 px the stem's output and its copy were the peak)."""
    import copy

    import torch

    from kdprune.pruning import YoloPruner
    from kdprune.pruning import arena as A
    from kdprune.yolo import build_model, fused_activation, hyp_namespace, pad_free_downsample, split_blocks

    model = build_model("yolo11n.yaml", None, {i: str(i) for i in range(8)}, hyp_namespace(imgsz=192)).eval()
    fused_activation(model, 3)
    free = copy.deepcopy(model)
    assert pad_free_downsample(free, 2) == 2 and pad_free_downsample(free, 2) == 0  # a converted model stays
    strided = [tuple(m.kernel_size) for m in free.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert strided[:3] == [(4, 4), (4, 4), (3, 3)]
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], free(x)[0], atol=1e-4)
    for m in (model, free):  # pruned as the default prunes (torch-pruning slices the 4x4 kernels alike)
        split_blocks(m)
        pruner = YoloPruner(m, keep_stem=True)
        pruner.apply(m, pruner.plan(m, 0.5))
    stem_and_copy = 16 * 96 * 96 + 16 * 98 * 98
    assert A.peak_activation_bytes(model, 192) == stem_and_copy
    assert A.peak_activation_bytes(free, 192) == 3 * 192 * 192 + 16 * 96 * 96  # the stem's own input and output
    with pytest.raises(UserError, match="model.pad_free_downsample=9: between 0 and 7"):
        pad_free_downsample(free, 9)


@pytest.mark.parametrize("end2end", [True, False])
def test_the_arena_replay_of_yolo26_runs_the_branch_the_file_holds(end2end):
    """The file holds one of YOLO26's two head branches (the one-to-one unless ``Detect.end2end`` is off): the arena
    estimate replays that one, not both (both would count the other branch's activations, which the file has not)."""
    import torch

    from kdprune.yolo import build_model, hyp_namespace
    from kdprune.yolo.structure import trace_forward

    model = build_model("yolo26n.yaml", None, {i: str(i) for i in range(3)}, hyp_namespace(imgsz=64)).eval()
    head = model.model[-1]
    head.end2end = end2end
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for seq in (*head.one2one_cv2, *head.one2one_cv3):  # ultralytics starts one2one as a copy: make it differ
            seq[-1].bias.add_(1.0)
        got = trace_forward(model, x, deployed_only=True)
        every = trace_forward(model, x)
    assert len(every) == 4 * head.nl and len(got) == 2 * head.nl
    want = every[2 * head.nl:] if end2end else every[:2 * head.nl]  # one2one_cv2/cv3, else cv2/cv3
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    other = every[:2 * head.nl] if end2end else every[2 * head.nl:]
    assert not any(torch.equal(g, o) for g, o in zip(got, other))
