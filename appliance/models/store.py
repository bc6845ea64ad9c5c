"""The station's model store: exported model directories kept by their model id (the manifest's
content hash), which one is active, which earlier ones it replaced, which candidate runs in shadow.

    <state_dir>/models/
        store.json                  {"active": id, "previous": [ids, newest last], "shadow": id}
        <model id>/                 a copy of an exported model directory (manifest.json + GGUF files)

A model enters only through `add`, which copies the directory beside its final place, checks every
file's size and sha256 against the manifest on the copy, and renames it in: a store entry is whole
and verified or absent. The running station reads the state at start and changes it on the
`promote`, `rollback` and `shadow` commands (appliance/models/control.py); nothing else writes it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from adfm.files import write_atomic
from adfm.manifest import MANIFEST_NAME, ManifestError, ModelManifest, load_model_dir, read_manifest

STORE_DIR = "models"
STATE_FILE = "store.json"
#: how many earlier active models `rollback` can go back through
PREVIOUS_KEPT = 16
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


class ModelStoreError(RuntimeError):
    """A store operation that cannot be done; the message names the model or file and why."""


@dataclass
class StoreState:
    active: str | None = None
    previous: list[str] = field(default_factory=list)
    shadow: str | None = None

    def to_json(self) -> dict:
        return {"active": self.active, "previous": list(self.previous), "shadow": self.shadow}


@dataclass(frozen=True)
class StoredModel:
    model_id: str
    path: Path
    manifest: ModelManifest
    role: str  # active, shadow, previous, candidate

    def to_json(self) -> dict:
        m = self.manifest
        return {"model_id": self.model_id, "role": self.role, "path": str(self.path),
                "prompt_version": m.prompt_version, "base_model": m.base_model, "adapter": m.adapter,
                "created_at": m.created_at.isoformat(), "bytes": sum(f.size for f in m.files)}


def store_root(state_dir: Path) -> Path:
    return Path(state_dir) / STORE_DIR


def check_model_id(model_id: str) -> str:
    """A model id as a store folder name: refused when it could name anything outside the store."""
    if not _ID_RE.match(model_id) or model_id in (".", ".."):
        raise ModelStoreError(f"model id {model_id!r} is not a valid store name")
    return model_id


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> ModelStore:
        return cls(store_root(state_dir))

    # ---- state ----------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def state(self) -> StoreState:
        path = self.state_path
        if not path.is_file():
            return StoreState()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return StoreState(active=data.get("active"), previous=list(data.get("previous") or []),
                              shadow=data.get("shadow"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ModelStoreError(f"{path}: cannot read the model store's state: {exc}") from exc

    def save(self, state: StoreState) -> None:
        state.previous = state.previous[-PREVIOUS_KEPT:]
        write_atomic(self.state_path, json.dumps(state.to_json(), indent=2) + "\n", durable=True)

    # ---- models ---------------------------------------------------------------------------------

    def path(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def has(self, model_id: str) -> bool:
        try:
            return (self.path(model_id) / MANIFEST_NAME).is_file()
        except ModelStoreError:
            return False

    def require(self, model_id: str) -> Path:
        """The stored model's directory (its files' sizes checked), or a clear error."""
        if not self.has(model_id):
            known = ", ".join(m.model_id for m in self.models()) or "none"
            raise ModelStoreError(f"model {model_id!r} is not in the store {self.root} (stored: {known}); "
                                  "add it with `adfm-appliance models add DIR`")
        path = self.path(model_id)
        try:
            load_model_dir(path, check_hashes=False)
        except ManifestError as exc:
            raise ModelStoreError(f"stored model {model_id}: {exc}") from exc
        return path

    def models(self) -> list[StoredModel]:
        """Every stored model with its role, the active one first."""
        if not self.root.is_dir():
            return []
        state = self.state()
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                manifest = read_manifest(d)
            except ManifestError:
                continue
            role = ("active" if d.name == state.active else "shadow" if d.name == state.shadow
                    else "previous" if d.name in state.previous else "candidate")
            out.append(StoredModel(d.name, d, manifest, role))
        order = {"active": 0, "shadow": 1, "candidate": 2, "previous": 3}
        return sorted(out, key=lambda m: (order[m.role], m.model_id))

    def add(self, source: Path, *, activate_if_none: bool = False) -> tuple[str, bool]:
        """Copy an exported model directory in, verified on the copy; (model id, newly added).

        A model already stored (same id) is not copied again. `activate_if_none`: a first model
        becomes the active one."""
        source = Path(source)
        try:
            if source.is_dir():
                for entry in read_manifest(source).files:
                    if Path(entry.path).name != entry.path or entry.path in (".", "..", MANIFEST_NAME):
                        raise ModelStoreError(f"{source / MANIFEST_NAME}: file {entry.path!r} is not a plain file "
                                              "name inside the model directory")
            manifest = load_model_dir(source, check_hashes=False)  # listed files present, right sizes
        except ManifestError as exc:
            raise ModelStoreError(f"{source}: {exc}") from exc
        model_id = check_model_id(manifest.model_id)
        final = self.root / model_id
        added = False
        if not (final / MANIFEST_NAME).is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", suffix=".tmp", dir=self.root))
            try:
                for entry in manifest.files:
                    shutil.copyfile(source / entry.path, tmp / entry.path)
                shutil.copyfile(source / MANIFEST_NAME, tmp / MANIFEST_NAME)
                try:
                    load_model_dir(tmp, check_hashes=True)  # every byte of the copy checked
                except ManifestError as exc:
                    raise ModelStoreError(f"{source}: the copy does not match its manifest: {exc}") from exc
                if final.exists():  # a half-made entry from an older failure: replace it
                    shutil.rmtree(final)
                tmp.rename(final)
                added = True
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        if activate_if_none:
            state = self.state()
            if state.active is None:
                state.active = model_id
                self.save(state)
        return model_id, added
