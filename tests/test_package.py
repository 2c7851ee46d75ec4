"""The package as a user installs it: a wheel (not the editable checkout) holds the configs and the C kit, and the
installed ``kdprune`` command composes the documented experiments from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kdprune

SRC = Path(kdprune.__file__).resolve().parent
ROOT = SRC.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """kdprune built into a wheel from a copy of the sources (the checkout stays clean) and installed from it, without
    its dependencies (they are this venv's), into a target folder."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(SRC, src / "kdprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                   check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("kdprune-*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                   check=True, capture_output=True)
    return tmp


def _package_files(pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in SRC.glob(pattern) if "__pycache__" not in p.parts}


def test_the_wheel_holds_every_config_and_the_c_kit(installed):
    (wheel,) = (installed / "dist").glob("kdprune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = _package_files("conf/**/*.yaml") | _package_files("deploy/c/*") | _package_files("**/*.py")
    assert len(_package_files("conf/**/*.yaml")) > 30 and "kdprune/conf/experiment/yolo11n_mcu.yaml" in want
    assert not want - names, f"missing from the wheel: {sorted(want - names)[:5]}"


@pytest.mark.parametrize("experiment", ["yolo11n_mcu", "yolo26n_mcu"])
def test_the_installed_command_composes_an_experiment_outside_the_checkout(installed, experiment, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}
    where = subprocess.run([sys.executable, "-c", "import kdprune; print(kdprune.CONF_DIR)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(installed / "site"), where  # the installed copy, not the editable checkout
    r = subprocess.run([str(installed / "site" / "bin" / "kdprune"), f"+experiment={experiment}", "--cfg", "job"],
                       env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "imgsz: 192" in r.stdout and f"cfg: {experiment.split('_')[0]}.yaml" in r.stdout
    assert not list(tmp_path.iterdir())  # --cfg job writes nothing
