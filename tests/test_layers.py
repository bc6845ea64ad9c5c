"""The layers of docs/architecture.md hold: import-linter's contracts pass on the tree and catch a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (dev extra)")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _scratch_copy(tmp_path: Path) -> Path:
    """The package as a plain folder tree (the symlinked subpackages copied in), with the contracts."""
    shutil.copytree(ROOT / "adfm", tmp_path / "adfm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_tree_keeps_every_contract():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "bad_import", "contract"), [
    ("camera/frame.py", "import torch", "The line side"),
    ("appliance/journal/store.py", "from adfm.export import cli", "The line side"),
    ("trainer/rewards.py", "from adfm.appliance.journal import store", "Export and trainer never import the appliance"),
    ("protocol.py", "from adfm.runtime import vlm", "Contracts import no side"),
    ("runtime/gate.py", "from adfm.camera import frame", "Runtime and camera are independent"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path, module, bad_import, contract):
    root = _scratch_copy(tmp_path)
    assert _lint(root).returncode == 0  # the copy itself is clean
    target = root / "adfm" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    proc = _lint(root)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"{contract}" in proc.stdout and "BROKEN" in proc.stdout


def test_line_side_service_import_loads_no_torch():
    """`python -X importtime -c 'import adfm.appliance.service'` lists no torch/transformers module."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import adfm.appliance.service"],
                          capture_output=True, text=True, cwd="/", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "adfm.appliance.service" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "transformers", "peft", "trl", "torchvision"))
    assert not heavy, heavy
