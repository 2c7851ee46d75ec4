"""The bench's compared variants are config files (bench/conf/arm/<topic>/<arm>.yaml) a user can run by hand or as a
Hydra multirun: each composes over its experiment, and every value it sets is the run's."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_dir

from bench.common import BENCH_CONF, arm_args, arm_names
from kdprune import CONF_DIR

EXPERIMENT = {"device_fit": "yolo11n_mcu"}
ARMS = [(t, a) for t in EXPERIMENT for a in arm_names(t)]


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_every_topic_has_its_arms():
    assert {"relu_192", "unconstrained", "resolution_128"} <= set(arm_names("device_fit"))


@pytest.mark.parametrize("topic,arm", ARMS, ids=[f"{t}/{a}" for t, a in ARMS])
def test_an_arm_composes_over_its_experiment_and_sets_its_values(topic, arm):
    spec = yaml.safe_load((BENCH_CONF / "arm" / topic / f"{arm}.yaml").read_text())
    groups = {k.removeprefix("override /"): v for d in spec.pop("defaults", []) for k, v in d.items()}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = compose("config", overrides=[f"+experiment={EXPERIMENT[topic]}"])
        cfg = compose("config", overrides=[f"+experiment={EXPERIMENT[topic]}", *arm_args(topic, arm)])
    for key, value in _leaves(spec).items():
        node, *path = key.split(".")
        got = cfg[node]
        for p in path:
            got = got[p]
        assert got == value, (key, got, value)
    for group, option in groups.items():
        assert cfg[group].name == option and plain[group].name != option  # the arm's group replaced the experiment's
