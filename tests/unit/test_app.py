"""Process wiring without a cluster: which settings need a restart, and the live config reload."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fakes import Harness, eventually, make_harness, make_ns, make_pod, make_record

from capo_operator import app
from capo_operator.config import Config, LeaderElection, parse_config
from capo_operator.serving.certs import ReloadingWebhookServer

GOOD = """\
apiVersion: config.capo.io/v1
kind: CapoConfig
ipReserveMaxCount: 300
ipReserveTime: 40m
"""


def test_restart_needed_names_the_settings_read_once() -> None:
    old = Config()
    assert app.restart_needed(old, old) == []
    assert app.restart_needed(old, replace(old, ip_reserve_max_count=5, strict_mode=True)) == []

    new = replace(
        old,
        webhook_port=9444,
        metrics_bind_address=":9090",
        health_probe_bind_address=":9091",
        leader_election=LeaderElection(resource_name="other"),
        ip_reservation_name="mine",
        calico_api_group="projectcalico.org",
    )
    assert app.restart_needed(old, new) == [
        "webhook.port",
        "metrics.bindAddress",
        "health.healthProbeBindAddress",
        "leaderElection",
        "ipReservationName",
        "calicoAPIGroup",
    ]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "capo_config.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
async def watching(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    monkeypatch.setattr(app, "CONFIG_POLL_SECONDS", 0.005)
    h = make_harness(parse_config(GOOD), config_text=GOOD)
    task = asyncio.create_task(app.watch_config_file(h.op.reloader, config_file))
    await asyncio.sleep(0.01)  # the watcher has taken its first digest
    yield h
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_good_new_file_is_applied(watching: Harness, config_file: Path) -> None:
    h = watching
    config_file.write_text(GOOD.replace("300", "5").replace("40m", "2h"))

    await eventually(lambda: h.op.config.current.ip_reserve_max_count == 5)

    assert h.op.config.current.ip_reserve_time == timedelta(hours=2)
    assert h.sample("capo_config_reloads_total", result="success") == 1
    assert h.sample("capo_config_last_reload_successful") == 1
    assert h.sample("ip_reserve_count_max") == 5
    reloaded = h.events.with_reason("ConfigReloaded")
    assert len(reloaded) == 1 and not reloaded[0].warning
    assert (reloaded[0].ref.kind, reloaded[0].ref.name, reloaded[0].ref.namespace) == (
        "Pod",
        "capo-0",
        "capo-system",
    )


async def test_a_bad_file_is_refused_and_the_last_good_config_stays(
    watching: Harness, config_file: Path
) -> None:
    h = watching
    before = h.op.config.current
    config_file.write_text(GOOD.replace("40m", "forty minutes"))

    await eventually(lambda: h.sample("capo_config_reloads_total", result="failure") == 1)

    assert h.op.config.current is before
    assert h.sample("capo_config_last_reload_successful") == 0
    rejected = h.events.with_reason("ConfigRejected")
    assert len(rejected) == 1 and rejected[0].warning
    assert "ipReserveTime" in rejected[0].message

    # Fixed again: applied, and the gauge recovers.
    config_file.write_text(GOOD.replace("300", "7"))
    await eventually(lambda: h.op.config.current.ip_reserve_max_count == 7)
    assert h.sample("capo_config_last_reload_successful") == 1


async def test_an_unchanged_or_vanished_file_is_not_reloaded(watching: Harness, config_file: Path) -> None:
    h = watching
    config_file.write_text(GOOD)  # same content, new mtime
    config_file.unlink()  # a ConfigMap swap in progress
    await asyncio.sleep(0.03)
    config_file.write_text(GOOD)
    await asyncio.sleep(0.03)

    assert h.sample("capo_config_reloads_total", result="success") == 0
    assert h.sample("capo_config_reloads_total", result="failure") == 0
    assert h.events.posted == []


def test_the_configmap_and_the_file_apply_one_edit_once() -> None:
    # The ConfigMap watch sees an edit first; a minute later the kubelet swaps the file in.
    h = make_harness(parse_config(GOOD), config_text=GOOD)
    reloader = h.op.reloader
    edited = GOOD.replace("300", "9")
    reloader.offer(edited, "ConfigMap capo-system/capo-config key capo_config.yaml")
    reloader.offer(edited, "/etc/capo/capo_config.yaml")
    assert h.op.config.current.ip_reserve_max_count == 9
    assert h.sample("capo_config_reloads_total", result="success") == 1
    assert [e.message.split(" from ")[1] for e in h.events.with_reason("ConfigReloaded")] == [
        "ConfigMap capo-system/capo-config key capo_config.yaml"
    ]


async def test_a_reload_says_which_settings_wait_for_a_restart(watching: Harness, config_file: Path) -> None:
    h = watching
    config_file.write_text(GOOD + "webhook:\n  port: 9444\n")

    await eventually(lambda: h.op.config.current.webhook_port == 9444)

    message = h.events.with_reason("ConfigReloaded")[0].message
    assert "webhook.port apply after a restart" in message


def test_kopf_settings_leave_the_webhook_configuration_to_the_manifests(tmp_path: Path) -> None:
    settings = app.kopf_settings(Config(webhook_port=9555), tmp_path / "c", tmp_path / "k")
    assert settings.admission.managed is None
    assert settings.admission.server is not None
    assert settings.admission.server.port == 9555
    assert settings.posting.enabled is False


def test_webhook_server_reloads_a_renewed_certificate_in_place(tmp_path: Path) -> None:
    # Kopf's stock server restarts its listener when the files change and refuses connections
    # meanwhile; the reloading one keeps the socket (its behaviour is tested in test_certs.py).
    settings = app.kopf_settings(Config(), tmp_path / "c", tmp_path / "k")
    assert isinstance(settings.admission.server, ReloadingWebhookServer)
    assert settings.admission.server.certfile == str(tmp_path / "c")
    assert settings.admission.server.pkeyfile == str(tmp_path / "k")


def test_webhook_server_listens_on_every_address_family(tmp_path: Path) -> None:
    settings = app.kopf_settings(Config(), tmp_path / "c", tmp_path / "k")
    assert settings.admission.server.addr in (None, "::")


# -- the composition root ---------------------------------------------------------------------


async def test_a_reloaded_config_reaches_the_webhook_the_safety_net_and_the_releaser() -> None:
    # The parts read the one LiveConfig that `assemble` handed them: none keeps a stale copy.
    h = make_harness(parse_config(GOOD), config_text=GOOD, leading=True)
    h.add_ns(make_ns("db"))
    h.op.reloader.offer(GOOD.replace("40m", "2h").replace("300", "1"), "/etc/capo/capo_config.yaml")

    warnings: list[str] = []
    await h.op.admission.review(make_pod(), operation="delete", dry_run=False, warnings=warnings)
    await h.op.reserver.follower.flush()
    assert warnings == [] and h.records.items["10.0.0.1"].hold == timedelta(hours=2)

    evicted = make_pod("db-1", uid="u1", ips=("10.0.0.2",), phase="Failed", reason="Evicted")
    task = asyncio.create_task(h.op.safety_net.run())
    h.op.safety_net.pod_terminated(evicted)
    await eventually(lambda: "10.0.0.2" in h.records.items)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert h.records.items["10.0.0.2"].hold == timedelta(hours=2)

    await h.op.releaser.pass_once()  # ipReserveMaxCount is 1 now: the older hold goes
    assert set(h.records.items) == {"10.0.0.2"}
    assert h.sample("capo_releases_total", reason="cap") == 1


def leader(h: Harness) -> float | None:
    return h.metrics.registry.get_sample_value("leader_election_master_status", {"name": "capo"})


def test_losing_leadership_drops_the_queued_manual_releases() -> None:
    h = make_harness()
    op = h.op
    op.leadership_changed(True, "capo")
    assert leader(h) == 1
    op.watchers.record_deleted(make_record("10.0.0.7"))  # a person deleted the record
    assert op.manual_releases == {"10.0.0.7"}
    assert op.releaser.manual_releases is op.manual_releases  # what the leader's pass takes out

    op.leadership_changed(False, "capo")
    assert op.manual_releases == set() and not op.leadership.leading
    assert leader(h) == 0
    op.watchers.record_deleted(make_record("10.0.0.8"))  # a standby queues nothing
    assert op.manual_releases == set()


def test_the_kopf_memo_carries_the_admission_flow_and_the_login_credentials() -> None:
    h = make_harness()
    memo = h.op.memo
    # Kopf hands each handler a shallow copy: it must share the live parts, not snapshot them.
    copied = copy.copy(memo)
    assert copied.admission is h.op.admission and copied.credentials is memo.credentials
    assert copied.admission.config is h.op.config
