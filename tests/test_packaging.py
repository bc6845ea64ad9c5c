"""Packaging: the folder→subpackage map holds in a built wheel, and the light side needs no torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"adfm": "adfm", "trainer": "adfm/trainer", "export": "adfm/export", "camera": "adfm/camera",
           "appliance": "adfm/appliance", "plant": "adfm/plant"}

BLOCK_TORCH = (
    "import sys, importlib.abc\n"
    "class _Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'transformers', 'trl', 'peft', 'torchvision'):\n"
    "            raise ImportError(f'{name} must not be imported on the appliance side')\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def test_light_side_imports_without_torch():
    code = BLOCK_TORCH + (
        "import adfm.protocol, adfm.geometry, adfm.schema, adfm.manifest, adfm.appliance, adfm.camera\n"
        "import adfm.synthetic, adfm.config, adfm.offline, adfm.runtime.vlm, adfm.runtime.gate\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_wheel_holds_every_module_under_its_package_name(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = tmp_path.glob("adfm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder, package_path in FOLDERS.items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            # only files inside packages (folders with __init__.py) ship
            if all((ROOT / folder / Path(*rel.parts[:i]) / "__init__.py").exists() for i in range(len(rel.parts))):
                expected.add(f"{package_path}/{rel.as_posix()}")
    missing = sorted(expected - names)
    assert not missing, missing
    assert "adfm/trainer/__init__.py" in names and "adfm/appliance/__init__.py" in names
    assert not any(n.startswith(("trainer/", "appliance/", "plant/", "tests/")) for n in names)
    # the plant server's schema migrations and page templates travel as package data
    for data in ("adfm/plant/migrations/0001_results.sql", "adfm/plant/templates/base.jinja",
                 "adfm/plant/templates/gallery.jinja",
                 # the OPC UA for Machine Vision nodeset the appliance loads, with its licence
                 "adfm/appliance/plc/nodesets/Opc.Ua.MachineVision.NodeSet2.xml",
                 "adfm/appliance/plc/nodesets/LICENSE.txt"):
        assert data in names, data
