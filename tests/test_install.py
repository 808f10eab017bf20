"""A non-editable install carries the YAML groups: dlrun runs from any working directory."""

from __future__ import annotations

import pytest

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def copy_source_tree(destination: Path) -> Path:
    """The checkout's files (tracked, plus new ones git does not ignore) copied to `destination`.

    pip builds in the folder it is given, leaving build/ and *.egg-info behind: building a copy
    keeps those stale files out of the checkout, and keeps ignored clutter out of the build.
    """
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is listed too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_elsewhere(tmp_path):
    source = copy_source_tree(tmp_path / "source")
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert (target / "dlrun" / "conf" / "config.yaml").is_file()
    assert (target / "dlrun" / "conf" / "model" / "lenet.yaml").is_file()
    assert (target / "dlrun" / "detection" / "boxes.py").is_file()  # every subpackage is listed in pyproject

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-m", "dlrun", "debug=smoke"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(target / "dlrun") in subprocess.run(
        [sys.executable, "-c", "import dlrun; print(dlrun.__file__)"], cwd=elsewhere, env=env,
        capture_output=True, text=True).stdout
    assert list((elsewhere / "outputs").glob("*/*/summary.json"))

    # The fused launcher ships in Hydra's plugin namespace (no __init__.py there: other plugins share it),
    # where Hydra's own scan finds it in a non-editable install, and a sweep runs through it.
    assert (target / "hydra_plugins" / "dlrun_fused_launcher" / "fused_launcher.py").is_file()
    assert not (target / "hydra_plugins" / "__init__.py").exists()
    scan = subprocess.run([sys.executable, "-c", "from hydra.core.plugins import Plugins; "
                           "print(sorted(Plugins.instance().class_name_to_class))"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert "hydra_plugins.dlrun_fused_launcher.fused_launcher.FusedLauncher" in scan.stdout, scan.stderr
    fused = subprocess.run([sys.executable, "-m", "dlrun", "-m", "hydra/launcher=fused", "seed=0,1", "debug=smoke"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert fused.returncode == 0, fused.stderr
    assert "fused launcher: jobs 0,1 as one stacked model" in fused.stdout
