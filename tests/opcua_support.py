"""Helpers for the OPC UA tests: certificates, users, and a client that finds the station's vision
system by the Machine Vision type definitions only (never by adfm's node ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MV_URI = "http://opcfoundation.org/UA/MachineVision"
VISION_SYSTEM_TYPE = 1003  # VisionSystemType in the published nodeset (NodeIds.csv)
RESULT_READY_EVENT_TYPE = 1024
CLIENT_URI = "urn:adfm:test:mes-client"


async def client_certificate(folder: Path, name: str = "mes-client") -> tuple[Path, Path]:
    """A client application's self-signed certificate (DER) and key (PEM)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.der", folder / f"{name}.key.pem"
    await setup_self_signed_certificate(key, cert, CLIENT_URI, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"commonName": name})
    return cert, key


def add_user(pki: Path, name: str, password: str | None, roles: list[str] = (), cert: Path | None = None) -> None:
    """A user as `adfm-appliance opcua-user --dir PKI --name NAME --roles …` makes it (a password, or
    none and an identity certificate)."""
    import os
    import subprocess
    import sys

    from tests.line_support import REPO

    cmd = [sys.executable, "-m", "adfm.appliance.cli", "opcua-user", "--dir", str(pki), "--name", name,
           "--password-stdin" if password is not None else "--no-password", "--roles", ",".join(roles)]
    if cert is not None:
        cmd += ["--cert", str(cert)]
    out = subprocess.run(cmd, input=(password or "") + "\n", capture_output=True, text=True, timeout=60,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert f"user {name}: roles" in out.stdout


async def find_vision_systems(client: Any) -> list[Any]:
    """Every object under Objects whose type definition is MachineVision's VisionSystemType."""
    from asyncua import ua

    mv = await client.get_namespace_index(MV_URI)
    want = ua.NodeId(VISION_SYSTEM_TYPE, mv)
    found = []
    for node in await client.nodes.objects.get_children(nodeclassmask=ua.NodeClass.Object):
        if await node.read_type_definition() == want:
            found.append(node)
    return found


async def method(node: Any, mv: int, *path: str) -> tuple[Any, Any]:
    """(parent object, method node) by Machine Vision browse names under `node`."""
    parent = node
    for p in path[:-1]:
        parent = await parent.get_child(f"{mv}:{p}")
    return parent, await parent.get_child(f"{mv}:{path[-1]}")
