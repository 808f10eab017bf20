"""A non-editable install carries the YAML groups: dlrun runs from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_ships_configs_and_runs_elsewhere(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert (target / "dlrun" / "conf" / "config.yaml").is_file()
    assert (target / "dlrun" / "conf" / "model" / "lenet.yaml").is_file()

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
