"""docs/configuration.md is ``kdprune.confref.render()`` of the config tree as it is now: every key of the composed
config appears in it, with the comment the YAML gives it."""

from __future__ import annotations

import difflib
import warnings

import pytest
from omegaconf import OmegaConf

from kdprune import CONF_DIR, confref
from tests.conftest import ROOT, compose

DOC = ROOT / "docs" / "configuration.md"
# The keys users turn: each must carry a comment in its YAML file (the reference's meaning column).
IMPORTANT = ("data.", "trainer.max_epochs", "prune.", "distill.", "quant.", "export.", "device.", "target.", "model.")


def _leaves(node, path=""):
    """Dotted paths of the leaves of a plain container (an empty mapping is a leaf: ``target.rules: {}``)."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    else:
        yield path


def test_reference_is_current():
    expected = confref.render()
    text = DOC.read_text() if DOC.is_file() else ""
    if text != expected:
        diff = list(difflib.unified_diff(text.splitlines(), expected.splitlines(), "docs/configuration.md",
                                         "render()", lineterm="", n=1))
        pytest.fail("docs/configuration.md is stale (a config file changed): run `make docs`\n"
                    + "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else ""))


@pytest.mark.parametrize("experiment", [None, "yolo11n_mcu"])
def test_every_composed_key_is_documented(experiment):
    files = confref.load()
    keys = {k.path for f in files for k in f.keys}
    inline = {k.path for f in files for k in f.keys if k.value.startswith("{")}  # a flow mapping: its keys inside
    cfg = OmegaConf.to_container(compose(experiment=experiment), resolve=False)
    missing = [p for p in _leaves(cfg) if p not in keys
               and not any(p.startswith(q + ".") for q in inline)]
    assert not missing, f"keys of the composed config missing from the reference: {missing}"
    text = DOC.read_text()
    assert all(f"| `{p}` |" in text for p in _leaves(cfg) if p in keys)


def test_important_keys_have_a_comment():
    bare = confref.undocumented()
    if bare:  # reported, not failed: Hydra / Lightning wiring (_target_, logger arguments) speaks for itself
        warnings.warn(f"{len(bare)} config keys without a comment: {', '.join(bare)}", stacklevel=1)
    if dropped := [f"{f.rel}: {line}" for f in confref.load() for line in f.dropped]:
        warnings.warn(f"comment lines that are no key's meaning (not in the reference): {dropped}", stacklevel=1)
    important = [b for b in bare if b.split(": ", 1)[1].startswith(IMPORTANT)]
    assert not important, f"add a one-line comment to these keys in their YAML file: {important}"


def test_parser_reads_comments(tmp_path):
    """A synthetic tree: the trailing comment, its aligned continuation, the block above a nested key, a file header,
    a `# @package _global_` file, defaults and list values all reach the rendered lines."""
    (tmp_path / "grp").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "config.yaml").write_text(
        "# The root's header.\n"
        "defaults:\n"
        "  - grp: opt\n"
        "  - _self_\n"
        "\n"
        "top: 1            # a trailing comment\n"
        "                  # that goes on\n"
        "bare: [a, b]\n")
    (tmp_path / "grp" / "opt.yaml").write_text(
        "# The option's header.\n"
        "outer:\n"
        "  # A block above\n"
        "  # in two lines.\n"
        "  inner: ${top}\n"
        "  other: 3        # trailing | wins\n"
        "  nested: 'x # y' # after a quoted hash\n"
        "  # the comment of a nested block\n"
        "  deep:\n"
        "    leaf: 0       # deepest\n"
        "  items:\n"
        "    - one\n"
        "    - two\n")
    (tmp_path / "experiment" / "exp.yaml").write_text(
        "# @package _global_\n"
        "# An experiment.\n"
        "grp:\n"
        "  outer:\n"
        "    inner: 2      # set at the root\n")
    text = confref.render(tmp_path)
    lines = text.splitlines()
    for line in [
        "The root's header.",
        "defaults: `grp: opt`, `_self_`",
        "| `top` | `1` | a trailing comment that goes on |",
        "| `bare` | `[a, b]` | |",
        "Selected with `grp=opt` (the default); keys under `grp`.",
        "The option's header.",
        "| `grp.outer.inner` | `${top}` | A block above in two lines. |",
        r"| `grp.outer.other` | `3` | trailing \| wins |",
        "| `grp.outer.nested` | `'x # y'` | after a quoted hash |",
        "| `grp.outer.deep` | | the comment of a nested block |",
        "| `grp.outer.deep.leaf` | `0` | deepest |",
        "| `grp.outer.items` | `[one, two]` | |",
        "Selected with `+experiment=exp`; keys at the root of the config (`# @package _global_`).",
        "| `grp.outer.inner` | `2` | set at the root |",
    ]:
        assert line in lines, f"{line!r} not rendered:\n{text}"
    assert "| `grp.outer` |" not in text  # a mapping without a comment is not listed
    assert not [ln for ln in lines if ln.startswith("| `") and "header" in ln]  # a header is no key's meaning
    assert confref.undocumented(tmp_path) == ["config.yaml: bare", "grp/opt.yaml: grp.outer.items"]


def test_module_writes_the_reference(capsys):
    confref.main()
    assert capsys.readouterr().out == confref.render(CONF_DIR)
