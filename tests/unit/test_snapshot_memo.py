"""The watched IPReservation's versions parsed incrementally: same Snapshot, work only for what changed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_pending import record

from capo_operator.decisions import pending
from capo_operator.kube import calico
from capo_operator.kube.calico import ParseMemo, snapshot_of

_ENTRIES = st.sampled_from(
    [
        *("10.0.0.1/32", "10.0.0.1", "10.0.0.2/32", "10.0.0.3/32", "fd00::7/128", "fd00::07/128"),
        *("10.1.0.0/16", "not-an-ip", "10.0.0.300/32", "10.0.0.0/255.0.0.0"),
    ]
)
_VALUES = st.sampled_from(
    [pending.encode(record("10.0.0.1")), pending.encode(record("10.0.0.2")), "[1,", "{}"]
)
_ANNOTATIONS = st.dictionaries(
    st.sampled_from([pending.key("10.0.0.1"), pending.key("10.0.0.2"), "capo.io/managed-by"]), _VALUES
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(_ENTRIES, max_size=8), _ANNOTATIONS), min_size=1, max_size=6))
def test_a_memo_gives_what_a_fresh_parse_gives_for_every_version(
    versions: list[tuple[list[str], Any]],
) -> None:
    memo = ParseMemo()
    for entries, notes in versions:
        assert snapshot_of(entries, notes, "7", memo) == snapshot_of(entries, notes, "7")


def test_a_new_version_decodes_only_its_new_pending_details(monkeypatch: Any) -> None:
    ips = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)]
    annotations = {pending.key(ip): pending.encode(record(ip)) for ip in ips}
    memo = ParseMemo()
    snapshot_of([f"{ip}/32" for ip in ips], annotations, "1", memo)

    decoded: list[str] = []
    parsed: list[str] = []
    real_decode, real_ip_of = pending.decode, calico.ip_of
    monkeypatch.setattr(pending, "decode", lambda k, v: decoded.append(k) or real_decode(k, v))
    monkeypatch.setattr(calico, "ip_of", lambda e: parsed.append(e) or real_ip_of(e))
    new = "10.9.9.9"
    snap = snapshot_of(
        [f"{ip}/32" for ip in [*ips, new]],
        {**annotations, pending.key(new): pending.encode(record(new))},
        "2",
        memo,
    )
    assert decoded == [pending.key(new)] and parsed == [f"{new}/32"]
    assert len(snap.pending) == 301 and len(snap.ips) == 301
    # A changed value is decoded again; a removed one is forgotten.
    annotations[pending.key(ips[0])] = pending.encode(record(ips[0], trigger="eviction"))
    snap = snapshot_of([f"{ip}/32" for ip in ips], annotations, "3", memo)
    assert snap.pending[ips[0]].trigger == "eviction" and new not in snap.pending
    assert pending.key(new) not in memo.pending
