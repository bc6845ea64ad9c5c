"""The line side runs on line PCs without torch: no appliance, camera or runtime module may import it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("torch", "torchvision", "transformers", "peft", "trl", "accelerate", "datasets")

_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys, tempfile, time
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the appliance must not import it")

    sys.meta_path.insert(0, Block())
    import adfm.appliance, adfm.camera, adfm.runtime
    names = sorted(m.name for pkg in (adfm.appliance, adfm.camera, adfm.runtime)
                   for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."))
    for name in names:
        importlib.import_module(name)
    from adfm.appliance.cli import build_parser
    build_parser().parse_args(["run", "--config", "x.yaml"])
    import numpy as np
    from adfm.appliance.journal.store import Journal
    with Journal(tempfile.mkdtemp(), "st") as j:
        j.accept(np.zeros((8, 8, 3), np.uint8), part_id="p", camera="c", frame_number=0, captured_wall=time.time())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print(" ".join(names))
    """
)


def test_every_line_side_module_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", _PROBE, ",".join(BLOCKED)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = proc.stdout.split()
    for module in ("bus.server", "bus.client", "bus.keys", "config.station", "config.line", "demo",
                   "system.health", "system.install", "system.notify", "journal.store", "journal.writer",
                   "inspection.core", "inspection.worker", "inspection.runner", "modes.freerun", "modes.line",
                   "modes.line_station", "modes.outputs", "plc.modbus", "plc.opcua", "service", "cli"):
        assert f"adfm.appliance.{module}" in imported
    for module in ("adfm.runtime.vlm", "adfm.runtime.gate", "adfm.camera.capture_thread"):
        assert module in imported
