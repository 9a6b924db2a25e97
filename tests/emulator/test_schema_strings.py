"""The fast path for lists of plain strings reports exactly what the full validation reports."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from kube_emulator import schema as S

ITEM_SCHEMAS = st.fixed_dictionaries(
    {"type": st.just("string")},
    optional={
        "format": st.sampled_from(["cidr", "ipv4", "ip", "date-time"]),
        "maxLength": st.integers(0, 20),
        "minLength": st.integers(0, 5),
        "pattern": st.sampled_from(["^[0-9./:a-f]*$", "/32$", "^10\\."]),
    },
)
VALUES = st.one_of(
    st.text(max_size=24),
    st.builds(
        lambda a, b, n: f"10.{a}.{b}.1/{n}", st.integers(0, 300), st.integers(0, 9), st.integers(0, 40)
    ),
    st.sampled_from(["10.0.0.1/32", "fd00::1/128", "10.0.0.1", "2026-12-01T17:00:00Z"]),
)


@given(ITEM_SCHEMAS, st.lists(VALUES, max_size=6))
def test_plain_string_lists_validate_as_item_by_item(items: dict[str, Any], values: list[str]) -> None:
    fast: list[Any] = []
    S._validate_array(values, {"type": "array", "items": items}, "spec.list", fast)
    slow: list[Any] = []
    for i, value in enumerate(values):
        S._validate(value, items, f"spec.list[{i}]", slow)
    assert [(e.field, e.kind, e.message) for e in fast] == [(e.field, e.kind, e.message) for e in slow]
