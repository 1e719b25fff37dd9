"""A tiny learnable image-folder dataset and the command lines the search tests share."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def make_pattern_folder(root: Path, classes: int = 4, n_train: int = 48, n_test: int = 8, size: int = 16) -> Path:
    """``root/train/cN/*.png`` and ``root/test/cN/*.png``: class ``c`` has a bright square in
    quadrant ``c`` on noise, so a supernet can learn it in a few steps."""
    rng = np.random.default_rng(7)
    half = size // 2
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                y0, x0 = (c // 2) * half, (c % 2) * half
                img[y0:y0 + half, x0:x0 + half] += np.uint8(150)
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def pattern_folder_fixture(name: str):
    """A module-scoped fixture called ``name``: a :func:`make_pattern_folder` dataset in a
    temporary folder."""
    @pytest.fixture(scope="module", name=name)
    def folder(tmp_path_factory):
        return make_pattern_folder(tmp_path_factory.mktemp(name) / "pattern")
    return folder


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    """Points ``GAEA_DATA_CACHE`` at one temporary folder shared by the tests of a run (autouse where imported)."""
    monkeypatch.setenv("GAEA_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "data-cache"))


def search_argv(dataset: Path, out: Path, *extra: str, epochs: int = 2) -> List[str]:
    """A tiny NB201 GAEA search on CPU (C=4, N=1, batch 16)."""
    return ["search", "--dataset", str(dataset), "--out", str(out), "--epochs", str(epochs), "--batch-size", "16",
            "--channels", "4", "--cells", "1", "--device", "cpu", "--threads", "1", "--no-progress", "--seed", "0",
            "--checkpoint-minutes", "0", *extra]


def run_cli(argv: List[str], env: Dict[str, str] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m gaea_nas ARGV`` in a subprocess (one CPU thread)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "gaea_nas", *argv], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(REPO))


def read_jsonl(path: Path) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)
