"""`make demo`'s job, shortened: built-in corpus -> shards -> 2-rank training -> HF export -> generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_path(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.demo", "--out", str(tmp_path / "demo"), "--steps", "6"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    demo = tmp_path / "demo"
    manifest = json.loads((demo / "shards" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] > 100
    assert (demo / "run" / "checkpoints" / "latest").read_text().strip() == "step00000006"
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {p.name for p in (demo / "hf").iterdir()}
    assert "generated: 'The module provides" in proc.stdout
    assert (tmp_path / "mlflow.db").is_file()  # local MLflow in the working directory
