"""The sticky webhook's claim and the leader's hand-over, against in-memory stores."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

from fakes import NOW, STS, make_harness, make_ns, make_pod, make_record

from capo_operator.decisions import pending
from capo_operator.decisions.record import PodRef, Record
from capo_operator.decisions.sticky import CLAIM_ANNOTATION, IP_ADDRS_ANNOTATION, Claim, ReleasePolicy


def held(ip: str, *, pod: str = "db-0", uid: str = "old-uid", **kw: Any) -> Record:
    base = make_record(ip, pod=PodRef("db", pod, uid, "node-1"), owner=STS)
    return replace(base, sticky=True, release_policy=ReleasePolicy.TTL, resource_version="1", **kw)


def body(name: str = "db-0", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "db",
            "labels": {"statefulset.kubernetes.io/pod-name": name},
            "annotations": {"capo.io/sticky": "true", **(annotations or {})},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "db",
                    "uid": "sts-uid",
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


async def test_claims_the_hold_and_answers_the_patch() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5"))
    h.add_record(held("fd00::5"))
    warnings: list[str] = []
    ops = await h.op.sticky.on_create(body(), dry_run=False, warnings=warnings)
    adds = {op["path"]: op["value"] for op in ops}
    assert json.loads(adds["/metadata/annotations/cni.projectcalico.org~1ipAddrs"]) == ["10.0.0.5", "fd00::5"]
    token = adds["/metadata/annotations/capo.io~1sticky-claim"]
    assert {r.claim.token for r in h.records.items.values() if r.claim} == {token}
    assert h.sample("capo_sticky_claims_total", outcome="claimed") == 1 and warnings == []
    assert [p.reason for p in h.events.posted] == ["StickyIPClaimed", "StickyIPClaimed"]


async def test_dry_run_writes_no_claim() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5"))
    ops = await h.op.sticky.on_create(body(), dry_run=True, warnings=[])
    assert ops and all(r.claim is None for r in h.records.items.values())
    assert h.journal.ops("records.claim") == []
    assert h.sample("capo_sticky_claims_total", outcome="dry-run") == 1


async def test_a_lost_half_of_a_dual_stack_claim_gives_the_other_half_back() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5"))
    h.add_record(held("fd00::5"))
    # Another claim won fd00::5 after our view was taken: its resourceVersion moved on.
    h.records.items["fd00--5"] = replace(h.records.items["fd00--5"], resource_version="7")
    ops = await h.op.sticky.on_create(body(), dry_run=False, warnings=[])
    assert ops == []
    assert all(r.claim is None for r in h.records.items.values()), "all or nothing"
    # Each attempt that won the IPv4 half gave it back.
    assert len(h.journal.ops("records.clear_claim")) == len(
        [c for c in h.journal if c[0] == "records.claim" and c[1][0] == "10.0.0.5"]
    )
    assert h.sample("capo_sticky_claims_total", outcome="conflict") >= 1


async def test_pool_race_moves_on_to_the_next_hold() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    rs = replace(STS, kind="ReplicaSet", name="web-5d4f")
    first = replace(
        held("10.0.0.1", pod="web-5d4f-a", uid="a"), owner=rs, reserved_at=NOW - timedelta(hours=1)
    )
    second = replace(held("10.0.0.2", pod="web-5d4f-b", uid="b"), owner=rs)
    h.add_record(first)
    h.add_record(second)
    h.records.items["10.0.0.1"] = replace(first, resource_version="9")  # lost to a concurrent claim
    pod = body("web-5d4f-new")
    pod["metadata"]["ownerReferences"][0].update(kind="ReplicaSet", name="web-5d4f")
    ops = await h.op.sticky.on_create(pod, dry_run=False, warnings=[])
    adds = {op["path"]: op["value"] for op in ops}
    assert json.loads(adds["/metadata/annotations/cni.projectcalico.org~1ipAddrs"]) == ["10.0.0.2"]


async def test_trouble_fails_open_with_a_warning() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5"))
    h.records.fail("claim", RuntimeError("apiserver unavailable"))
    warnings: list[str] = []
    assert await h.op.sticky.on_create(body(), dry_run=False, warnings=warnings) == []
    assert warnings and "gets a new one" in warnings[0]
    assert h.sample("capo_sticky_claims_total", outcome="error") == 1


async def test_not_sticky_or_hands_off_or_in_use() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5"))
    plain = body()
    del plain["metadata"]["annotations"]["capo.io/sticky"]
    assert await h.op.sticky.on_create(plain, dry_run=False, warnings=[]) == []
    own = body(annotations={IP_ADDRS_ANNOTATION: '["10.0.0.9"]'})
    assert await h.op.sticky.on_create(own, dry_run=False, warnings=[]) == []
    h.add_holder("10.0.0.5", "someone")
    assert await h.op.sticky.on_create(body(), dry_run=False, warnings=[]) == []
    assert h.sample("capo_sticky_claims_total", outcome="no-hold") == 1
    assert h.journal.ops("records.claim") == []


async def test_hand_over() -> None:
    h = make_harness()
    run = h.add_record(held("10.0.0.1", pod="db-0", claim=Claim("t1", NOW)))
    other = h.add_record(held("10.0.0.2", pod="db-1", claim=Claim("t2", NOW)))
    h.add_pod(make_pod("db-0", ips=("10.0.0.1",), annotations={CLAIM_ANNOTATION: "t1"}))
    h.add_pod(make_pod("db-1", ips=("10.0.0.77",), annotations={CLAIM_ANNOTATION: "t2"}))
    reclaimed = await h.op.sticky.settle_claims(dict(h.records.items), NOW)
    assert reclaimed == {run.name}
    assert h.records.items[other.name].claim is None, "came up with another IP: claim cleared"
    assert h.records.items[run.name].claim is not None
    assert h.sample("capo_sticky_claims_total", outcome="other-ip") == 1
    assert "StickyClaimCleared" in [p.reason for p in h.events.posted]


async def test_a_hold_whose_record_is_still_on_its_way_is_claimed_from_the_ipreservation() -> None:
    """The delete webhook answered after the Calico append; its record follows later. A pod
    recreated in between finds the reservation's details there and creates the record claimed."""
    h = make_harness()
    h.add_ns(make_ns())
    announced = held("10.0.0.5")
    await h.calico.append(["10.0.0.5"], {"10.0.0.5": pending.encode(announced)})
    ops = await h.op.sticky.on_create(body(), dry_run=False, warnings=[])
    adds = {op["path"]: op["value"] for op in ops}
    assert json.loads(adds["/metadata/annotations/cni.projectcalico.org~1ipAddrs"]) == ["10.0.0.5"]
    created = h.records.items["10.0.0.5"]
    assert (
        created.claim is not None
        and created.claim.token == adds["/metadata/annotations/capo.io~1sticky-claim"]
    )
    assert created.sticky and created.pod == announced.pod
    # The follower's own create comes second and leaves the claimed record alone.
    assert await h.records.create(announced) is False


async def test_a_pending_hold_of_another_identity_or_in_use_is_not_taken() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    other = held("10.0.0.6", pod="db-1")
    await h.calico.append(["10.0.0.6"], {"10.0.0.6": pending.encode(other)})
    assert await h.op.sticky.on_create(body(), dry_run=False, warnings=[]) == []
    assert h.journal.ops("records.create") == []


async def test_the_old_incarnation_still_in_the_cache_does_not_block_a_statefulset_pod() -> None:
    """The StatefulSet controller recreates db-0 the moment the old one is gone from the API; this
    replica's cache may still list the old one with the IP for a moment."""
    h = make_harness()
    h.add_ns(make_ns())
    h.add_record(held("10.0.0.5", uid="old-uid"))
    h.add_pod(make_pod("db-0", uid="old-uid", ips=("10.0.0.5",)))
    assert await h.op.sticky.on_create(body(), dry_run=False, warnings=[]) != []
    # A pod of another name using the IP does block it.
    h2 = make_harness()
    h2.add_ns(make_ns())
    h2.add_record(held("10.0.0.5", uid="old-uid"))
    h2.add_holder("10.0.0.5", "someone-else")
    assert await h2.op.sticky.on_create(body(), dry_run=False, warnings=[]) == []


def test_pending_details_keep_a_sticky_records_policy() -> None:
    sticky_record = replace(held("10.0.0.5"), release_policy=ReleasePolicy.NEVER, resource_version=None)
    back = pending.decode(pending.key("10.0.0.5"), pending.encode(sticky_record))
    assert back.sticky and back.release_policy is ReleasePolicy.NEVER
    plain = make_record("10.0.0.6")
    encoded = pending.encode(plain)
    assert len(json.loads(encoded)) == 14  # unchanged for every other record
    assert not pending.decode(pending.key("10.0.0.6"), encoded).sticky


async def test_a_pending_reservation_of_a_pod_that_was_not_sticky_is_not_taken() -> None:
    h = make_harness()
    h.add_ns(make_ns())
    plain = replace(held("10.0.0.5"), sticky=False, resource_version=None)
    await h.calico.append(["10.0.0.5"], {"10.0.0.5": pending.encode(plain)})
    assert await h.op.sticky.on_create(body(), dry_run=False, warnings=[]) == []
    assert h.sample("capo_sticky_claims_total", outcome="no-hold") == 1


async def test_a_quiet_leader_still_hands_over_when_the_claiming_pod_starts() -> None:
    """The release pass plans only when something it depends on changed: the claiming pod is a new
    pod no record refers to by uid, so its start must count as such a change."""
    h = make_harness(leading=True)
    h.add_ns(make_ns("db"))
    claimed = h.add_record(held("10.0.0.1", claim=Claim("t1", NOW)))
    releaser = h.op.releaser
    for _ in range(4):  # until a pass has nothing to do
        h.journal.clear()
        await releaser.pass_once()
        if not h.journal:
            break
    assert claimed.name in h.records.items, "the hold stays while no pod carries the claim"

    h.add_pod(make_pod("db-0", "db", uid="new-uid", ips=("10.0.0.1",), annotations={CLAIM_ANNOTATION: "t1"}))
    await releaser.pass_once()

    assert claimed.name not in h.records.items
    assert h.sample("capo_releases_total", reason="reclaimed") == 1
