"""`adfm-review`'s arguments: endpoints, keys, journal, and clear refusals."""

from __future__ import annotations

import pytest

from adfm.appliance.review.cli import UsageError, build_app, build_parser, control_for, load_curve, main
from adfm.appliance.review.sources import JournalSource, LiveSource
from tests.appliance_fakes import make_keys


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("publish, control", [("tcp://10.0.0.5:5560", "tcp://10.0.0.5:5561"),
                                              ("tcp://station:5556", "tcp://station:5557"),
                                              ("tcp://[::1]:7000", "tcp://[::1]:7001")])
def test_control_endpoint_is_the_next_port(publish, control):
    assert control_for(publish) == control


@pytest.mark.parametrize("publish", ["ipc:///run/adfm/bus", "tcp://host:*", "host:5560"])
def test_control_endpoint_that_cannot_be_derived_asks_for_control(publish):
    with pytest.raises(UsageError, match="pass --control"):
        control_for(publish)


def test_live_app_uses_the_outbox_in_the_state_dir(tmp_path):
    app = build_app(parse("--connect", "tcp://127.0.0.1:5560", "--operator", "anna", "--state-dir", str(tmp_path),
                          "--images", str(tmp_path / "journal")))
    src = app.source
    assert isinstance(src, LiveSource)
    assert (src.publish, src.control, src.curve) == ("tcp://127.0.0.1:5560", "tcp://127.0.0.1:5561", None)
    assert src.outbox.path == tmp_path / "verdicts.sqlite" and app.operator == "anna"
    src.outbox.close()


def test_keys_folder_from_adfm_appliance_keys_is_understood(tmp_path):
    made = make_keys(tmp_path / "keys", ["review", "mes"])
    client_dir = tmp_path / "on-the-client"  # what a client machine holds: server.key and its own pair
    client_dir.mkdir()
    (client_dir / "server.key").write_bytes(made.server_public.read_bytes())
    for secret in made.client_secrets.values():
        (client_dir / secret.name).write_bytes(secret.read_bytes())
    curve = load_curve(parse("--connect", "tcp://h:1", "--keys", str(client_dir)))
    assert curve is not None and curve.server_public == made.server_public.read_bytes().split(b'"')[1]
    other = load_curve(parse("--connect", "tcp://h:1", "--keys", str(client_dir), "--client-name", "mes"))
    assert other.keys.public != curve.keys.public
    with pytest.raises(UsageError, match=r"no client key 'tui'.*adfm-appliance client-key --dir"):
        load_curve(parse("--connect", "tcp://h:1", "--keys", str(client_dir), "--client-name", "tui"))
    with pytest.raises(UsageError, match="both --server-key and --client-key"):
        load_curve(parse("--connect", "tcp://h:1", "--server-key", str(made.server_public)))
    with pytest.raises(UsageError, match="key file not found"):
        load_curve(parse("--connect", "tcp://h:1", "--server-key", str(tmp_path / "nope.key"),
                         "--client-key", str(made.client_secrets["review"])))


def test_journal_app_is_read_only(tmp_path):
    from adfm.appliance.journal.store import Journal

    Journal(tmp_path / "j", "st1").close()
    app = build_app(parse("--journal", str(tmp_path / "j"), "--operator", "anna"))
    assert isinstance(app.source, JournalSource) and app.source.read_only


@pytest.mark.parametrize(
    "argv, message",
    [([], "give --connect ENDPOINT"),
     (["--journal", "/nonexistent/journal"], "no journal here"),
     (["--connect", "tcp://h:1", "--operator", " "], "no operator name"),
     (["--connect", "tcp://h:1", "--history", "0"], "--history must be"),
     (["--connect", "ipc:///x"], "pass --control")],
)
def test_bad_arguments_exit_2_with_the_reason(argv, message, capsys, tmp_path):
    assert main([*argv, "--state-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_connect_and_journal_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["--connect", "tcp://h:1", "--journal", "/x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_shift_changes_are_times_of_day(tmp_path, capsys):
    from datetime import time

    args = parse("--journal", str(tmp_path), "--shifts", "22:00, 06:00,14:30")
    assert args.shifts == (time(6), time(14, 30), time(22))
    with pytest.raises(SystemExit):
        parse("--journal", str(tmp_path), "--shifts", "6am")
    assert "'6am' is not a time of day (HH:MM)" in capsys.readouterr().err
