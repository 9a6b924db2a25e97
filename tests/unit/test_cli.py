"""The command line: version, help, check-config, and `run` refusing a bad config before any I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from capo_operator import __version__, cli

DATA = Path(__file__).parent / "data"
GOOD = DATA / "capo_config.yaml"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"capo-operator {__version__}\n"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "check-config", "version"):
        assert command in out


def test_run_help_lists_flags_and_their_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--namespace", "--identity", "--certs", "CAPO_CONFIG", "POD_NAMESPACE"):
        assert flag in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_check_config_accepts_a_capo_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(GOOD)]) == 0
    out = capsys.readouterr().out
    assert f"{GOOD}: valid" in out
    assert "ipReserveMaxCount: 300" in out
    assert "ipReserveTime: 40m" in out


def test_check_config_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("apiVersion: config.capo.io/v1\nkind: CapoConfig\nsyncPeriod: 10m\n")
    assert cli.main(["check-config", str(path)]) == 0
    assert "warning: syncPeriod" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("ipReserveTime: soon\n", "ipReserveTime"),
        ("ipReserveMaxCount: 0\n", "ipReserveMaxCount"),
        ("leaderElection:\n  leaseDuration: 5s\n", "leaderElection.leaseDuration"),
        ("ipReserveTme: 40m\n", "ipReserveTme"),
    ],
)
def test_check_config_rejects_a_bad_file_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    assert cli.main(["check-config", str(path)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"config field '{field}'" in captured.err


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_run_with_an_invalid_config_exits_2_before_touching_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("ipReserveMaxCount: 300\nipReleasePeriod: 2h\n")

    async def no_cluster(*_: object, **__: object) -> None:
        raise AssertionError("run() must not connect with an invalid config")

    from capo_operator.kube.credentials import Credentials

    monkeypatch.setattr(Credentials, "load", no_cluster)
    monkeypatch.delenv("CAPO_CONFIG", raising=False)

    assert cli.main(["run", "--config", str(path)]) == 2

    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "config field 'ipReleasePeriod'" in err
    assert "must not exceed ipReserveTime" in err


def test_run_reads_the_config_path_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("webhook:\n  port: 99999\n")
    monkeypatch.setenv("CAPO_CONFIG", str(path))

    assert cli.main(["run"]) == 2

    err = capsys.readouterr().err
    assert str(path) in err and "config field 'webhook.port'" in err
