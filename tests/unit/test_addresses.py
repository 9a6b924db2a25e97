"""Host CIDRs written to Calico and record names derived from IPs."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions.addresses import AddressError, host_cidr, ip_from_record_name, ip_of, record_name

# DNS-1123 subdomain, as Kubernetes validates object names (written here independently of the code).
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize(
    ("entry", "cidr"),
    [
        ("10.0.0.1", "10.0.0.1/32"),
        ("10.0.0.1/32", "10.0.0.1/32"),
        ("FD00::0001", "fd00::1/128"),
        ("fd00:0:0:0:0:0:0:1/128", "fd00::1/128"),
        ("2001:DB8:0:0:A:0:0:1", "2001:db8::a:0:0:1/128"),  # RFC 5952: first longest zero run
        ("::ffff:10.0.0.1", "10.0.0.1/32"),  # Go (and Calico) read an IPv4-mapped address as IPv4
        ("::ffff:10.0.0.1/128", "10.0.0.1/32"),
        ("::1.2.3.4", "::102:304/128"),  # IPv4-compatible stays IPv6, in hex on every Python version
    ],
)
def test_host_cidr_is_canonical(entry: str, cidr: str) -> None:
    assert host_cidr(entry) == cidr
    assert ip_of(entry) == cidr.split("/")[0]


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "garbage",
        "10.0.0.256",
        "10.0.0",
        "010.0.0.1",  # leading zeros are ambiguous (octal in some parsers)
        "10.0.0.0/24",
        "10.0.0.1/31",
        "fd00::/64",
        "fd00::1/127",
        "10.0.0.1/",
        "10.0.0.1/x",
        "10.0.0.1/32/32",
        "fe80::1%eth0",
        "fe80::1%eth0/128",
        " 10.0.0.1",
        "10.0.0.1 ",
        "fd00:::1",
    ],
)
def test_anything_but_a_host_is_rejected(entry: str) -> None:
    with pytest.raises(AddressError):
        host_cidr(entry)
    with pytest.raises(AddressError):
        ip_of(entry)


def test_non_strings_are_rejected() -> None:
    with pytest.raises(AddressError, match="must be a string"):
        host_cidr(167772161)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("10.244.1.7", "10.244.1.7"),
        ("fd00::7", "fd00--7"),
        ("::1", "0--1"),
        ("fd00::", "fd00--0"),
        ("::", "0--0"),
        ("FD00:0:0:0:0:0:0:7", "fd00--7"),
        ("2001:db8:1:2:3:4:5:6", "2001-db8-1-2-3-4-5-6"),
        ("10.244.1.7/32", "10.244.1.7"),
    ],
)
def test_record_names_follow_the_documented_rule(ip: str, name: str) -> None:
    assert record_name(ip) == name
    assert ip_from_record_name(name) == ip_of(ip)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "web-0",
        "fd00-0-0-0-0-0-0-7",  # a valid IP, but not the compressed spelling record_name writes
        "FD00--7",
        "fd00--7-",
        "-fd00--7",
        "0-0--1",
        "10.244.1.7/32",
        "10.244.001.7",
        "0--0--1",
        "fe80--1%eth0",
    ],
)
def test_names_record_name_never_produces_are_refused(name: str) -> None:
    with pytest.raises(AddressError):
        ip_from_record_name(name)


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@settings(max_examples=500)
@given(addresses)
def test_record_names_are_valid_and_invertible(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    name = record_name(str(address))
    assert len(name) <= 253
    assert DNS1123_SUBDOMAIN.fullmatch(name), name
    ip = ip_from_record_name(name)
    assert ip == ip_of(str(address))
    # The canonical IP is the same address (IPv4-mapped ones become their IPv4 address).
    mapped = getattr(address, "ipv4_mapped", None)
    assert ipaddress.ip_address(ip) == (mapped or address)


@settings(max_examples=200)
@given(st.lists(addresses, min_size=2, max_size=20))
def test_record_name_is_injective(batch: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    canonical = {ip_of(str(a)) for a in batch}
    assert len({record_name(ip) for ip in canonical}) == len(canonical)


@settings(max_examples=300)
@given(addresses)
def test_host_cidr_is_idempotent_and_a_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    cidr = host_cidr(str(address))
    assert host_cidr(cidr) == cidr
    network = ipaddress.ip_network(cidr)
    assert network.num_addresses == 1
    assert cidr == cidr.lower()
