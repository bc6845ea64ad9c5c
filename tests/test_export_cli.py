"""`adfm-export` command line: every option documented, errors as exit codes with a message."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from adfm.export import cli


def test_help_documents_every_option(capsys) -> None:
    parser = cli.build_parser()
    options = [a for a in parser._actions if a.option_strings and "--help" not in a.option_strings]
    assert {o.option_strings[0] for o in options} >= {
        "--base", "--adapter", "--out", "--quant", "--mmproj-type", "--prompt-version", "--min-pixels",
        "--max-pixels", "--no-verify", "--verify-tokens", "--agreement-floor", "--verify-images",
    }
    for action in options:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in options:
        assert action.option_strings[0] in text
    for quant in ("f16", "q8_0", "q4_k_m", "q5_k_m"):
        assert quant in text


def test_unknown_quant_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--base", str(tmp_path), "--out", str(tmp_path / "o"), "--quant", "q2_k"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'q2_k'" in capsys.readouterr().err


def test_export_error_is_exit_1_with_message(tmp_path: Path, capsys) -> None:
    rc = cli.main(["--base", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "adfm-export: error: base model directory not found" in err
    assert "[1/7] checking inputs" in err
