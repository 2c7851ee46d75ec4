"""The package boundaries docs/architecture.md promises, read from the source's imports (every ``import``, the ones
inside functions too): ultralytics is imported only by its two adapters (``yolo/`` for models, losses and metrics,
``data/`` for its dataset and augmentation); export and the reports never import the training machinery; every
name table a config chooses from is a ``Registry``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdprune import CONF_DIR

PKG = CONF_DIR.parent
ADAPTERS = ("yolo", "data")  # the only packages that import ultralytics
TRAINING = ("kdprune.module", "kdprune.compression", "kdprune.train", "kdprune.callbacks", "kdprune.teacher_stage")


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _files(*top: str) -> list[Path]:
    return sorted(p for t in top for p in ((PKG / t).rglob("*.py") if (PKG / t).is_dir() else [PKG / f"{t}.py"]))


def _offenders(files: list[Path], prefixes: tuple[str, ...]) -> list[str]:
    return [f"{p.relative_to(PKG.parent)}:{line} imports {mod}" for p in files for line, mod in _imports(p)
            if any(mod == x or mod.startswith(x + ".") for x in prefixes)]


def test_only_the_adapters_import_ultralytics():
    others = [p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ADAPTERS]
    assert len(others) > 40  # the walk saw the package
    assert _offenders(others, ("ultralytics",)) == []
    assert _offenders(_files(*ADAPTERS), ("ultralytics",))  # and the adapters do (the check can see an import)


def test_export_and_reports_never_import_training():
    assert _offenders(_files("export", "report", "stage_rows", "part", "registry"), TRAINING) == []


@pytest.mark.parametrize("module,name", [
    ("kdprune.pruning.importance", "IMPORTANCES"), ("kdprune.pruning.schedule", "PRUNE_SHAPES"),
    ("kdprune.pruning.budget", "MEASURES"), ("kdprune.distill.schedule", "KD_SCHEDULES"),
    ("kdprune.losses.kd", "KD_TERMS"), ("kdprune.losses.kd", "ANCHOR_WEIGHTS"),
    ("kdprune.losses.objectives", "LOSSES"), ("kdprune.export.formats", "FORMATS"),
    ("kdprune.export.target", "RULES"), ("kdprune.export.npu", "VELA_CONFIGS"), ("kdprune.stage_rows", "STAGES")])
def test_every_name_table_is_a_registry_with_one_error(module, name):
    """Each table a config key chooses from is a ``Registry``: an unknown name is one ``UserError`` that names the
    key and lists every valid name, and a second registration of a name is refused (two definitions of one part)."""
    import importlib

    from kdprune.errors import UserError
    from kdprune.registry import Registry

    reg = getattr(importlib.import_module(module), name)
    assert isinstance(reg, Registry) and len(reg) >= 2
    with pytest.raises(UserError, match=rf"^some.key=nope: unknown {reg.kind}; choose one of {', '.join(reg)}$"):
        reg.lookup("nope", "some.key")
    first = next(iter(reg))
    assert reg.lookup(first, "some.key") is reg[first]
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(first, reg[first])


def test_target_names_come_from_conf_target():
    from omegaconf import OmegaConf

    from kdprune.errors import UserError
    from kdprune.export.target import check_target, target_names

    assert target_names() == sorted(p.stem for p in (CONF_DIR / "target").glob("*.yaml"))
    assert "neutron" in target_names() and check_target(OmegaConf.create({"name": "neutron"})) == "neutron"
    with pytest.raises(UserError, match="target=npu9: unknown deployment target; choose one of ethos_u, generic"):
        check_target(OmegaConf.create({"name": "npu9"}))
    with pytest.raises(UserError, match="target.rules=no_rule: unknown target rule; choose one of batch_1"):
        check_target(OmegaConf.create({"name": "neutron", "rules": {"no_rule": True}}))
