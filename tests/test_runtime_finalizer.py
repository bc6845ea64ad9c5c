"""`GgufVlm.__del__` at interpreter exit: module globals may already be None; it must stay quiet."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import adfm.runtime.vlm as vlm

class Broken:
    def close(self):
        raise RuntimeError("llama.cpp already unloaded")

kept = vlm.GgufVlm.__new__(vlm.GgufVlm)
kept._mtmd_ctx = None
kept._llama = Broken()
# what interpreter shutdown does to a module's globals before finalizers run
vlm.contextlib = None
del kept
print("done")
"""


def test_finalizer_swallows_what_close_meets_when_globals_are_gone():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "Exception ignored" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
