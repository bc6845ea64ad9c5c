"""The plant view's users file: `adfm-plant passwd`, hashes, and a malformed file named by line."""

from __future__ import annotations

import base64
import io
import stat

import pytest

from adfm.plant.auth import AuthError, BasicAuth, read_users
from adfm.plant.cli import main


def _header(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_passwd_adds_and_changes_users_and_basic_auth_checks_them(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users"
    monkeypatch.setattr("sys.stdin", io.StringIO("first-password\n"))
    assert main(["passwd", "--users", str(users), "--name", "anna", "--password-stdin"]) == 0
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    monkeypatch.setattr("sys.stdin", io.StringIO("other-password\n"))
    assert main(["passwd", "--users", str(users), "--name", "ben", "--password-stdin"]) == 0
    assert sorted(read_users(users)) == ["anna", "ben"]
    assert "first-password" not in users.read_text()
    auth = BasicAuth(users)
    assert auth.check(_header("anna", "first-password")) == "anna"
    assert auth.check(_header("anna", "first-password")) == "anna"  # remembered
    assert auth.check(_header("anna", "other-password")) is None
    assert auth.check("Basic !!!") is None and auth.check(None) is None
    monkeypatch.setattr("sys.stdin", io.StringIO("changed-password\n"))
    assert main(["passwd", "--users", str(users), "--name", "anna", "--password-stdin"]) == 0
    assert auth.check(_header("anna", "first-password")) is None  # the old password no longer works
    assert auth.check(_header("anna", "changed-password")) == "anna"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["passwd", "--users", str(users), "--name", "carl", "--password-stdin"]) == 1
    assert "at least 8 characters" in capsys.readouterr().err


def test_a_malformed_users_file_is_named_with_its_line(tmp_path):
    users = tmp_path / "users"
    users.write_text("# view users\nanna:plaintext\n")
    with pytest.raises(AuthError, match=rf"{users}:2: expected name:pbkdf2_sha256"):
        BasicAuth(users)
