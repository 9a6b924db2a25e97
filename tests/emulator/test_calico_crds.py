"""The three Calico IPReservation CRD variants validate as a real server would (SOURCE.txt)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from kube_emulator.schema import check_format
from kube_emulator.testing import Emulator

from .conftest import Http, admin_ssl

CRD_PATH = "/apis/crd.projectcalico.org/v1/ipreservations"
V3_PATH = "/apis/projectcalico.org/v3/ipreservations"


def reservation(cidrs: list[str], api_version: str = "crd.projectcalico.org/v1") -> dict[str, object]:
    return {
        "apiVersion": api_version,
        "kind": "IPReservation",
        "metadata": {"name": "r"},
        "spec": {"reservedCIDRs": cidrs},
    }


@pytest.fixture(params=["latest", "v3.32.1", "v3.31"])
async def variant(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Http]]:
    async with Emulator(calico="both", calico_variant=request.param) as emu, aiohttp.ClientSession() as s:
        yield request.param, Http(emu.url, s, admin_ssl(emu))


# (entries, accepted by latest, by v3.32.1, by v3.31)
CASES = [
    (["10.0.0.1/32", "fd00::1/128"], True, True, True),
    (["10.0.0.1/32", "10.0.0.1/32"], False, False, True),
    (["10.0.0.3"], False, True, True),
    (["garbage"], False, True, True),
    ([], True, True, True),
]


@pytest.mark.parametrize(("entries", "latest", "v3321", "v331"), CASES)
async def test_variant_validation(
    variant: tuple[str, Http], entries: list[str], latest: bool, v3321: bool, v331: bool
) -> None:
    name, http = variant
    expected = {"latest": latest, "v3.32.1": v3321, "v3.31": v331}[name]
    s, body, _ = await http.post(CRD_PATH, reservation(entries))
    assert (s == 201) is expected, body
    if not expected:
        assert s == 422 and body["reason"] == "Invalid" and body["details"]["causes"]
    # The v3 CRD (calico-apiserver stand-in) is the strict one whatever the variant.
    s, body, _ = await http.post(V3_PATH, reservation(entries, "projectcalico.org/v3"))
    assert (s == 201) is latest, body


async def test_duplicate_and_bare_ip_messages() -> None:
    async with Emulator(calico="crd", calico_variant="latest") as emu, aiohttp.ClientSession() as session:
        http = Http(emu.url, session, admin_ssl(emu))
        s, body, _ = await http.post(CRD_PATH, reservation(["10.0.0.1/32", "10.0.0.1/32", "10.0.0.3"]))
    assert s == 422
    fields = {c["field"]: c for c in body["details"]["causes"]}
    assert fields["spec.reservedCIDRs[1]"]["reason"] == "FieldValueDuplicate"
    assert fields["spec.reservedCIDRs[2]"]["message"].endswith('must be of type cidr: "10.0.0.3"')
    assert body["message"].startswith('IPReservation.crd.projectcalico.org "r" is invalid: [')


async def test_empty_list_kept_and_json_patch_append(variant: tuple[str, Http]) -> None:
    _, http = variant
    s, created, _ = await http.post(CRD_PATH, reservation([]))
    assert s == 201 and created["spec"]["reservedCIDRs"] == []
    ops = [{"op": "add", "path": "/spec/reservedCIDRs/-", "value": "10.0.0.7/32"}]
    s, body, _ = await http.patch(f"{CRD_PATH}/r", ops, "application/json-patch+json")
    assert s == 200 and body["spec"]["reservedCIDRs"] == ["10.0.0.7/32"]


async def test_append_duplicate_rejected_by_set_lists(variant: tuple[str, Http]) -> None:
    name, http = variant
    await http.post(CRD_PATH, reservation(["10.0.0.7/32"]))
    ops = [{"op": "add", "path": "/spec/reservedCIDRs/-", "value": "10.0.0.7/32"}]
    s, _, _ = await http.patch(f"{CRD_PATH}/r", ops, "application/json-patch+json")
    assert s == (200 if name == "v3.31" else 422)


async def test_v3_requires_spec() -> None:
    async with Emulator(calico="v3") as emu, aiohttp.ClientSession() as s:
        http = Http(emu.url, s, admin_ssl(emu))
        status, body, _ = await http.post(
            V3_PATH,
            {"apiVersion": "projectcalico.org/v3", "kind": "IPReservation", "metadata": {"name": "x"}},
        )
        assert status == 422 and body["details"]["causes"][0]["field"] == "spec"
        status, _, _ = await http.get("/apis/crd.projectcalico.org/v1")
        assert status == 404  # only the v3 API is served in this mode


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("10.0.0.1/32", True),
        ("10.0.0.0/8", True),
        ("10.0.0.1/24", True),
        ("fd00::1/128", True),
        ("10.0.0.1", False),
        ("garbage", False),
        ("10.0.0.1/33", False),
        ("fd00::1/129", False),
        ("/32", False),
        ("10.0.0.1/", False),
        ("010.0.0.1/32", True),
        ("10.0.0.1/+3", False),
    ],
)
def test_cidr_format_follows_go(value: str, ok: bool) -> None:
    assert check_format("cidr", value) is ok
