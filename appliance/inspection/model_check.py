"""Model files checked against their manifest at start-up without re-hashing gigabytes each time.

Hashing a multi-GB GGUF takes minutes; a service restarted after a crash must not pay that on
every start. The first full check records each file's sha256 with its size, mtime and inode in
a cache file in the state directory; later starts hash only files whose size, mtime or inode
changed (a replaced or rewritten file always has a new mtime or inode). `adfm-appliance check`
always hashes everything and refreshes the cache.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

from adfm.files import write_atomic
from adfm.manifest import ManifestError, ModelManifest, load_model_dir, sha256_file

CACHE_NAME = "model-hashes.json"


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_cache(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def verify_model_dir(model_dir: str | Path, cache: Path | None, full: bool = False) -> tuple[ModelManifest, int]:
    """Check every manifest file (present, size, sha256), hashing only files the cache cannot
    vouch for (all of them with `full`). Returns the manifest and how many files were hashed.
    Raises ManifestError naming the file that does not match."""
    model_dir = Path(model_dir)
    manifest = load_model_dir(model_dir, check_hashes=False)  # presence and sizes
    known = {} if (full or cache is None) else _read_cache(cache)
    fresh: dict[str, dict] = {}
    hashed = 0
    for entry in manifest.files:
        f = (model_dir / entry.path).resolve()
        stamp = _stamp(f)
        seen = known.get(str(f))
        if seen and seen.get("stamp") == stamp and seen.get("sha256") == entry.sha256:
            fresh[str(f)] = seen
            continue
        digest = sha256_file(f)
        hashed += 1
        if digest != entry.sha256:
            raise ManifestError(f"{f}: sha256 {digest[:16]}… does not match the manifest's {entry.sha256[:16]}…")
        fresh[str(f)] = {"stamp": stamp, "sha256": digest}
    if cache is not None and fresh != known:
        with suppress(OSError):  # a cache that cannot be written costs a re-hash next start, nothing else
            # readable by the service's user when `adfm-appliance check` ran as root
            write_atomic(cache, json.dumps(fresh, indent=1), mode=0o644)
    return manifest, hashed
