"""Sticky IPs, pure decisions: opt-in, release policy, identity, which hold a new pod may claim,
the pod patch, the hand-over, and the planner's kept holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.config import Config, ConfigError, Sticky, parse_config
from capo_operator.decisions import planner
from capo_operator.decisions.sticky import (
    CLAIM_ANNOTATION,
    IP_ADDRS_ANNOTATION,
    Choice,
    Claim,
    ClaimantView,
    Held,
    Identity,
    Outcome,
    Pick,
    ReleasePolicy,
    choose,
    hand_over,
    hands_off,
    identity_of,
    ordinal,
    patch_for,
    pick,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(minutes=2)
REDIS0 = Identity("db", "StatefulSet", "redis-0")
WEB = Identity("app", "Deployment", "web")


# -- opt-in and policy ---------------------------------------------------------------------------


def test_annotation_opts_in_and_out() -> None:
    config = Config()
    assert choose({"capo.io/sticky": "true"}, config, selected=False) == Choice(True, ReleasePolicy.TTL)
    assert not choose({"capo.io/sticky": "false"}, config, selected=True).sticky
    assert not choose({}, config, selected=True).sticky  # default off


def test_config_default_applies_to_selected_pods_only() -> None:
    config = Config(sticky=Sticky(default=True))
    assert choose({}, config, selected=True).sticky
    assert not choose({}, config, selected=False).sticky
    assert not choose({"capo.io/sticky": "false"}, config, selected=True).sticky


@pytest.mark.parametrize(
    ("value", "policy"),
    [("ttl", ReleasePolicy.TTL), ("immutable", ReleasePolicy.IMMUTABLE), (" Never ", ReleasePolicy.NEVER)],
)
def test_release_policy(value: str, policy: ReleasePolicy) -> None:
    choice = choose({"capo.io/sticky": "true", "capo.io/release-policy": value}, Config(), selected=True)
    assert choice.policy is policy and choice.warning is None


def test_bad_release_policy_falls_back_to_ttl_with_a_warning() -> None:
    choice = choose({"capo.io/sticky": "true", "capo.io/release-policy": "forever"}, Config(), selected=True)
    assert choice.sticky and choice.policy is ReleasePolicy.TTL
    assert choice.warning is not None and "'forever'" in choice.warning and "using ttl" in choice.warning


def test_bad_sticky_value_is_reported() -> None:
    choice = choose({"capo.io/sticky": "yes"}, Config(), selected=True)
    assert not choice.sticky and choice.warning is not None and "capo.io/sticky" in choice.warning


def test_config_section_parses_and_refuses_bad_values() -> None:
    config = parse_config(
        "sticky:\n  default: true\n  nodeAffinityWeight: 0\n  maxKeptHolds: 5\n  claimTimeout: 30s\n"
    )
    assert config.sticky == Sticky(True, 0, 5, timedelta(seconds=30))
    with pytest.raises(ConfigError) as err:
        parse_config("sticky:\n  nodeAffinityWeight: 101\n")
    assert err.value.field == "sticky.nodeAffinityWeight" and "between 0 (off) and 100" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("sticky:\n  claimTimeout: 1s\n")
    assert err.value.field == "sticky.claimTimeout"
    with pytest.raises(ConfigError) as err:
        parse_config("sticky:\n  defualt: true\n")
    assert "did you mean 'default'" in str(err.value)


# -- identity ------------------------------------------------------------------------------------


def test_identity() -> None:
    assert identity_of("db", "redis-0", "StatefulSet", "redis") == REDIS0
    assert identity_of("app", "web-5d4f-x7k2q", "ReplicaSet", "web-5d4f") == WEB
    assert identity_of("app", "", "ReplicaSet", "web-5d4f") == WEB  # generateName: no name yet
    assert identity_of("app", "job-x", "Job", "job") == Identity("app", "Job", "job")
    assert identity_of("app", "bare", None, None) is None
    assert ordinal("redis-12") == 12 and ordinal("redis") is None and ordinal("redis-a") is None


# -- pick ----------------------------------------------------------------------------------------


def held(name: str, ip: str, identity: Identity = REDIS0, uid: str = "old", **kw: Any) -> Held:
    kw.setdefault("reserved_at", NOW - timedelta(minutes=5))
    return Held(name=name, ip=ip, identity=identity, pod_uid=uid, node=kw.pop("node", "node-1"), **kw)


def test_statefulset_pod_gets_its_own_ips_dual_stack() -> None:
    holds = [
        held("a", "10.0.0.5"),
        held("b", "fd00::5"),
        held("c", "10.0.0.6", Identity("db", "StatefulSet", "redis-1")),
    ]
    got = pick(holds, REDIS0, now=NOW, in_use=set(), claim_timeout=TIMEOUT)
    assert got is not None and got.ips == ("10.0.0.5", "fd00::5") and got.node == "node-1"


def test_no_claim_for_an_ip_in_use_or_freshly_claimed() -> None:
    hold = held("a", "10.0.0.5")
    assert pick([hold], REDIS0, now=NOW, in_use={"10.0.0.5"}, claim_timeout=TIMEOUT) is None
    fresh = held("a", "10.0.0.5", claim=Claim("t", NOW - timedelta(seconds=30)))
    assert pick([fresh], REDIS0, now=NOW, in_use=set(), claim_timeout=TIMEOUT) is None
    stale = held("a", "10.0.0.5", claim=Claim("t", NOW - timedelta(minutes=3)))
    assert pick([stale], REDIS0, now=NOW, in_use=set(), claim_timeout=TIMEOUT) is not None


def test_a_half_claimed_former_pod_is_passed_over() -> None:
    holds = [
        held("a", "10.0.0.5", WEB, "p1", claim=Claim("t", NOW)),
        held("b", "fd00::5", WEB, "p1"),
        held("c", "10.0.0.7", WEB, "p2", reserved_at=NOW - timedelta(minutes=1)),
    ]
    got = pick(holds, WEB, now=NOW, in_use=set(), claim_timeout=TIMEOUT)
    assert got is not None and got.ips == ("10.0.0.7",)


def test_pool_order_oldest_first_statefulset_newest_first() -> None:
    old, new = NOW - timedelta(hours=1), NOW - timedelta(minutes=1)
    pool = [
        held("a", "10.0.0.1", WEB, "p1", reserved_at=new),
        held("b", "10.0.0.2", WEB, "p2", reserved_at=old),
    ]
    assert pick(pool, WEB, now=NOW, in_use=set(), claim_timeout=TIMEOUT).ips == ("10.0.0.2",)  # type: ignore[union-attr]
    ss = [held("a", "10.0.0.1", uid="p1", reserved_at=new), held("b", "10.0.0.2", uid="p2", reserved_at=old)]
    assert pick(ss, REDIS0, now=NOW, in_use=set(), claim_timeout=TIMEOUT).ips == ("10.0.0.1",)  # type: ignore[union-attr]


ips_v4 = st.integers(1, 40).map(lambda i: f"10.0.0.{i}")
ips_v6 = st.integers(1, 40).map(lambda i: f"fd00::{i:x}")
identities = st.sampled_from([REDIS0, WEB, Identity("db", "StatefulSet", "redis-1")])
claims = st.one_of(st.none(), st.integers(0, 400).map(lambda s: Claim("tok", NOW - timedelta(seconds=s))))
holds_strategy = st.lists(
    st.builds(
        lambda i, ip, ident, uid, age, claim: Held(
            f"r{i}", ip, ident, uid, "n", NOW - timedelta(seconds=age), claim
        ),
        st.integers(0, 10_000),
        st.one_of(ips_v4, ips_v6),
        identities,
        st.sampled_from(["p1", "p2", "p3"]),
        st.integers(0, 10_000),
        claims,
    ),
    max_size=12,
    unique_by=lambda h: h.ip,
)


@settings(max_examples=300, deadline=None)
@given(holds_strategy, identities, st.sets(st.one_of(ips_v4, ips_v6), max_size=5))
def test_pick_properties(holds: list[Held], identity: Identity, in_use: set[str]) -> None:
    got = pick(holds, identity, now=NOW, in_use=in_use, claim_timeout=TIMEOUT)
    if got is None:
        # Nothing eligible: every former pod of this identity has an IP in use or a fresh claim.
        for uid in {h.pod_uid for h in holds if h.identity == identity}:
            group = [h for h in holds if h.identity == identity and h.pod_uid == uid]
            assert any(h.ip in in_use or (h.claim and not h.claim.stale(NOW, TIMEOUT)) for h in group)
        return
    assert 1 <= len(got.holds) <= 2
    assert len({":" in ip for ip in got.ips}) == len(got.ips)  # at most one per family
    assert len({h.pod_uid for h in got.holds}) == 1  # one former pod's addresses
    for h in got.holds:
        assert h.identity == identity and h.ip not in in_use
        assert h.claim is None or h.claim.stale(NOW, TIMEOUT)


# -- the patch -----------------------------------------------------------------------------------


pods_strategy = st.fixed_dictionaries(
    {
        "metadata": st.one_of(
            st.just({"name": "redis-0"}),
            st.just({"name": "redis-0", "annotations": {"a/b": "c"}}),
        ),
        "spec": st.one_of(
            st.just({}),
            st.just({"affinity": {}}),
            st.just({"affinity": {"podAntiAffinity": {}}}),
            st.just({"affinity": {"nodeAffinity": {}}}),
            st.just(
                {
                    "affinity": {
                        "nodeAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {"weight": 1, "preference": {"matchExpressions": []}}
                            ]
                        }
                    }
                }
            ),
        ),
    }
)


@settings(max_examples=100, deadline=None)
@given(pods_strategy, st.integers(0, 100), st.sampled_from([("10.0.0.5",), ("10.0.0.5", "fd00::5")]))
def test_patch_applies_and_sets_exactly_what_calico_reads(
    pod: dict[str, Any], weight: int, ips: tuple[str, ...]
) -> None:
    the_pick = Pick(tuple(held(f"r{i}", ip) for i, ip in enumerate(ips)), "node-7")
    out = jsonpatch.apply_patch(pod, patch_for(pod, the_pick, "tok", affinity_weight=weight))
    annotations = out["metadata"]["annotations"]
    assert json.loads(annotations[IP_ADDRS_ANNOTATION]) == list(ips)
    assert annotations[CLAIM_ANNOTATION] == "tok"
    assert annotations.get("a/b", "c") == "c"  # others kept
    terms = ((out["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution"
    ) or []
    ours = [t for t in terms if t["preference"]["matchExpressions"]]
    if weight == 0:
        assert ours == []
    else:
        assert ours == [
            {
                "weight": weight,
                "preference": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-7"]}
                    ]
                },
            }
        ]
    assert len(terms) - len(ours) == len(
        ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution"
        )
        or []
    )


def test_user_addressing_wins() -> None:
    assert hands_off({"cni.projectcalico.org/ipAddrs": '["10.0.0.1"]'}) is not None
    assert hands_off({"cni.projectcalico.org/ipv4pools": '["p"]'}) is not None
    assert hands_off({"other": "x"}) is None


# -- hand-over -----------------------------------------------------------------------------------


def test_hand_over_outcomes() -> None:
    claimed = [
        held("run", "10.0.0.1", claim=Claim("t1", NOW)),
        held("other", "10.0.0.2", claim=Claim("t2", NOW)),
        held("gone", "10.0.0.3", claim=Claim("t3", NOW)),
        held("wait", "10.0.0.4", claim=Claim("t4", NOW)),
        held("lapsed", "10.0.0.5", claim=Claim("t5", NOW - timedelta(minutes=5))),
        held("young", "10.0.0.6", claim=Claim("t6", NOW - timedelta(seconds=5))),
    ]
    claimants = {
        "t1": [ClaimantView("redis-0", ("10.0.0.1",), False)],
        "t2": [ClaimantView("redis-0", ("10.0.0.99",), False)],
        "t3": [ClaimantView("redis-0", (), True)],
        "t4": [ClaimantView("redis-0", (), False)],
    }
    got = {h.name: h.outcome for h in hand_over(claimed, claimants, now=NOW, claim_timeout=TIMEOUT)}
    assert got == {
        "run": Outcome.RECLAIMED,
        "other": Outcome.OTHER_IP,
        "gone": Outcome.POD_GONE,
        "lapsed": Outcome.LAPSED,
    }


# -- planner: kept holds -------------------------------------------------------------------------


def view(
    name: str, policy: str = "ttl", *, age: timedelta = timedelta(hours=2), **kw: Any
) -> planner.RecordView:
    reserved = NOW - age
    return planner.RecordView(
        name=name,
        ip=kw.pop("ip", "10.1.0." + str(abs(hash(name)) % 250 + 1)),
        pod_uid=kw.pop("pod_uid", "gone-" + name),
        namespace=kw.pop("namespace", "db"),
        owner_uid=kw.pop("owner_uid", "ss-uid"),
        reserved_at=reserved,
        expires_at=reserved + timedelta(minutes=40),
        hold=timedelta(minutes=40),
        default_policy=True,
        release_policy=policy,
        **kw,
    )


def reasons(p: planner.Plan) -> dict[str, str]:
    return {r.name: r.reason for r in p.releases}


def test_kept_holds_ignore_ttl_and_the_count_cap() -> None:
    records = [view("ttl"), view("imm", "immutable"), view("nev", "never")]
    p = planner.plan(records, now=NOW, max_count=1, alive_pod_uids=())
    assert reasons(p) == {"ttl": "expired"}
    young = [view(f"t{i}", age=timedelta(minutes=1)) for i in range(2)] + [view("imm", "immutable")]
    assert reasons(planner.plan(young, now=NOW, max_count=2, alive_pod_uids=())) == {}


def test_kept_cap_releases_the_oldest_kept_holds() -> None:
    records = [
        view("a", "never", age=timedelta(hours=3)),
        view("b", "immutable"),
        view("c", "never", age=timedelta(hours=1)),
    ]
    p = planner.plan(records, now=NOW, max_count=100, alive_pod_uids=(), kept_max_count=2)
    assert reasons(p) == {"a": "kept-cap"}


def test_immutable_ends_with_the_workload_or_a_scale_down_never_does_not() -> None:
    records = [
        view("imm-0", "immutable", ordinal=0),
        view("imm-2", "immutable", ordinal=2),
        view("nev-2", "never", ordinal=2),
    ]
    p = planner.plan(records, now=NOW, max_count=10, alive_pod_uids=(), owner_replicas={"ss-uid": 2})
    assert reasons(p) == {"imm-2": "scaled-down"}
    p = planner.plan(records, now=NOW, max_count=10, alive_pod_uids=(), gone_owner_uids={"ss-uid"})
    assert reasons(p) == {"imm-0": "owner-deleted", "imm-2": "owner-deleted"}
    p = planner.plan(records, now=NOW, max_count=10, alive_pod_uids=(), gone_namespaces={"db"})
    assert set(reasons(p)) == {"imm-0", "imm-2"}


def test_reclaimed_records_are_released_whatever_their_policy() -> None:
    records = [view("a", "never"), view("b", age=timedelta(minutes=1))]
    p = planner.plan(records, now=NOW, max_count=10, alive_pod_uids=(), reclaimed={"a", "b"})
    assert reasons(p) == {"a": "reclaimed", "b": "reclaimed"}


# -- the record ----------------------------------------------------------------------------------


def test_record_carries_policy_and_claim() -> None:
    from capo_operator.decisions.policy import Owner
    from capo_operator.decisions.record import PodRef, Record, RecordError

    record = Record(
        ip="10.0.0.5",
        pod=PodRef("db", "redis-0", "u1", "node-1"),
        owner=Owner("apps/v1", "StatefulSet", "redis", "ss-uid"),
        trigger="delete",
        reserved_at=NOW,
        expires_at=NOW + TIMEOUT,
        hold=TIMEOUT,
        policy="ipReserveTime=2m",
        sticky=True,
        release_policy=ReleasePolicy.IMMUTABLE,
        claim=Claim("tok", NOW, "redis-0"),
    )
    body = record.to_body()
    assert body["spec"]["releasePolicy"] == "immutable" and body["spec"]["claim"]["token"] == "tok"
    back = Record.from_body(body)
    assert back == record
    assert back.identity == REDIS0
    assert back.view().kept and back.view().ordinal == 0
    held_ = back.held()
    assert held_ is not None and held_.claim == Claim("tok", NOW, "redis-0")
    body["spec"]["releasePolicy"] = "forever"
    with pytest.raises(RecordError, match=r"spec\.releasePolicy"):
        Record.from_body(body)
    plain = Record.from_body(
        {
            **body,
            "spec": {k: v for k, v in body["spec"].items() if k not in ("sticky", "releasePolicy", "claim")},
        }
    )
    assert not plain.sticky and plain.identity is None and not plain.view().kept
