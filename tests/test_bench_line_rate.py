"""bench/line_rate.py's station config overrides (`--set KEY=VALUE`, the hook output options such as
MQTT use) and its reading of the handshake's output-block writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def line_rate(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    sys.modules.pop("line_rate", None)
    import line_rate

    return line_rate


def test_set_overrides_nested_keys_with_yaml_values_and_names_bad_ones(line_rate):
    cfg = {"plc": {"modbus": {"poll_ms": 5}}}
    for text in ("plc.modbus.poll_ms=20", "mqtt={host: 127.0.0.1, port: 1883}", "line.margin_ms=40.5"):
        line_rate.apply_override(cfg, *line_rate.parse_set(text))
    assert cfg == {"plc": {"modbus": {"poll_ms": 20}}, "mqtt": {"host": "127.0.0.1", "port": 1883},
                   "line": {"margin_ms": 40.5}}
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        line_rate.parse_set("plc.modbus.poll_ms")
    with pytest.raises(SystemExit, match="'poll_ms' is not a section"):
        line_rate.apply_override(cfg, "plc.modbus.poll_ms.x", 1)


def test_handshake_writes_are_read_as_the_first_block_showing_each_seq(line_rate):
    class Log:
        def events(self):
            block = lambda seqs, t: {"ev": "write", "t": t, "fc": 16, "address": 100,  # noqa: E731
                                     "values": [1, 0, len(seqs), 0, 1, 0, 0, 0]
                                     + [w for s in seqs for w in (s & 0xFFFF, s >> 16, 0, 0, 0, 1, 1, 0)]}
            return [block([7], 1.0), block([7, 8], 2.0), block([8], 3.0), block([8, 70000], 4.0)]

    assert line_rate._written(Log(), "handshake") == {7: 1.0, 8: 2.0, 70000: 4.0}
