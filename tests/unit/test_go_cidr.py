"""IPReservation entries against Go's `net.ParseCIDR` / `net.ParseIP` rules, which Calico uses.

Go (>= 1.17, netip-based since 1.22): IPv4 octets without leading zeros; no zone in a CIDR or in
ParseIP; prefix lengths in decimal ASCII digits (Go's dtoi: leading zeros read as decimal), at most
the address's bit length (128 for an IPv4-mapped IPv6 address); no netmask form; no whitespace.
Python's `ipaddress` accepts netmask and hostmask prefixes and zones, which Go refuses.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capo_operator.decisions.addresses import AddressError, host_cidr, ip_of, parse_calico_entry

ACCEPTED = [
    ("10.0.0.1", "10.0.0.1/32"),
    ("10.0.0.1/32", "10.0.0.1/32"),
    ("10.0.0.0/8", "10.0.0.0/8"),
    ("10.1.2.3/8", "10.0.0.0/8"),  # host bits set: Go keeps the IP and masks the network
    ("10.0.0.0/08", "10.0.0.0/8"),  # dtoi reads leading zeros in the prefix
    ("10.0.0.1/0032", "10.0.0.1/32"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("255.255.255.255", "255.255.255.255/32"),
    ("fd00::1", "fd00::1/128"),
    ("FD00:0:0:0:0:0:0:1/128", "fd00::1/128"),
    ("1::2:3:4:5:6:7", "1:0:2:3:4:5:6:7/128"),  # '::' standing for one group
    ("::1.2.3.4/128", "::102:304/128"),  # IPv4-compatible: an IPv6 address
    ("::ffff:10.0.0.1/128", "::ffff:a00:1/128"),  # mapped: 128 bits long as a CIDR
    ("::ffff:10.0.0.1/100", "::ffff:0:0/100"),
    ("2001:db8::/32", "2001:db8::/32"),
]

REFUSED = [
    ("", "empty"),
    ("10.0.0.0/255.0.0.0", "netmask prefix"),
    ("10.0.0.0/0.255.255.255", "hostmask prefix"),
    ("010.0.0.1", "leading zero (Go >= 1.17)"),
    ("10.0.0.01/32", "leading zero"),
    ("::ffff:010.0.0.1", "leading zero in an embedded IPv4"),
    ("fe80::1%eth0", "zone (ParseIP)"),
    ("fe80::1%eth0/128", "zone (ParseCIDR)"),
    (" 10.0.0.1", "leading space"),
    ("10.0.0.1 ", "trailing space"),
    ("10.0.0.1/ 32", "space in the prefix"),
    ("10.0.0.1/32\n", "newline"),
    ("10.0.0.1/", "empty prefix"),
    ("10.0.0.1/+32", "signed prefix"),
    ("10.0.0.1/-1", "negative prefix"),
    ("10.0.0.1/33", "prefix too long"),
    ("fd00::1/129", "prefix too long"),
    ("::ffff:10.0.0.1/129", "prefix too long for a mapped address"),
    ("10.0.0.1/32/32", "two slashes"),
    ("10.1", "short IPv4"),
    ("0x0a.0.0.1", "hex octet"),
    ("10.0.0.256", "octet out of range"),
    ("fd00::1::2", "two ellipses"),
    ("fd00:00001::", "five hex digits"),
    ("1:2:3:4:5:6:7:8::", "ellipsis standing for no group"),
    ("\uff11\uff10.0.0.1", "non-ASCII (fullwidth) digits"),
    ("10.0.0.1/\uff13\uff12", "non-ASCII (fullwidth) prefix"),
]


@pytest.mark.parametrize(("entry", "network"), ACCEPTED)
def test_go_accepts(entry: str, network: str) -> None:
    assert parse_calico_entry(entry) == ipaddress.ip_network(network)


@pytest.mark.parametrize(("entry", "why"), REFUSED)
def test_go_refuses(entry: str, why: str) -> None:
    with pytest.raises(AddressError):
        parse_calico_entry(entry)
    with pytest.raises(AddressError):
        host_cidr(entry)


def test_non_strings_are_a_clear_error() -> None:
    with pytest.raises(AddressError, match="must be a string"):
        parse_calico_entry(["10.0.0.1"])  # type: ignore[arg-type]


# -- properties ---------------------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@given(ipv4, st.integers(0, 32), st.integers(0, 3))
def test_any_ipv4_cidr_is_read_as_go_reads_it(
    address: ipaddress.IPv4Address, length: int, zeros: int
) -> None:
    entry = f"{address}/{'0' * zeros}{length}"
    assert parse_calico_entry(entry) == ipaddress.IPv4Network((address, length), strict=False)


@given(ipv4, st.integers(0, 3), st.integers(1, 2))
def test_a_leading_zero_in_any_octet_is_refused(
    address: ipaddress.IPv4Address, octet: int, zeros: int
) -> None:
    parts = str(address).split(".")
    parts[octet] = "0" * zeros + parts[octet]
    with pytest.raises(AddressError):
        parse_calico_entry(".".join(parts))


@given(ipv4, st.integers(1, 32))
def test_a_netmask_prefix_is_refused(address: ipaddress.IPv4Address, length: int) -> None:
    mask = ipaddress.IPv4Network(f"0.0.0.0/{length}").netmask
    assert ipaddress.ip_network(f"{address}/{mask}", strict=False)  # Python takes it...
    with pytest.raises(AddressError):
        parse_calico_entry(f"{address}/{mask}")  # ...Go does not


@given(st.one_of(ipv4, ipv6), st.data())
def test_whitespace_anywhere_is_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    entry = f"{address}/{address.max_prefixlen}"
    at = data.draw(st.integers(0, len(entry)))
    space = data.draw(st.sampled_from([" ", "\t", "\n", "\r", "\u00a0"]))
    with pytest.raises(AddressError):
        parse_calico_entry(entry[:at] + space + entry[at:])


@given(ipv6, st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), st.booleans())
def test_a_zone_is_refused(address: ipaddress.IPv6Address, zone: str, with_prefix: bool) -> None:
    entry = f"{address}%{zone}" + ("/128" if with_prefix else "")
    with pytest.raises(AddressError):
        parse_calico_entry(entry)


@given(ipv6, st.sampled_from(["compressed", "exploded", "upper"]))
def test_every_ipv6_spelling_is_the_same_canonical_host(
    address: ipaddress.IPv6Address, spelling: str
) -> None:
    text = {
        "compressed": address.compressed,
        "exploded": address.exploded,
        "upper": address.exploded.upper(),
    }[spelling]
    cidr = host_cidr(text)
    assert host_cidr(cidr) == cidr  # canonical output is a fixed point
    assert parse_calico_entry(cidr).num_addresses == 1
    if address.ipv4_mapped is None:
        assert cidr == f"{address.compressed}/128"  # RFC 5952, as Go's String() writes it
        assert parse_calico_entry(text) == ipaddress.IPv6Network(address)


@given(ipv4, st.integers(0, 128))
def test_ipv4_mapped_addresses(address: ipaddress.IPv4Address, length: int) -> None:
    """Go gives ::ffff:a.b.c.d a 128-bit length as a CIDR; as a host it is the IPv4 address."""
    mapped = f"::ffff:{address}"
    assert parse_calico_entry(f"{mapped}/{length}").prefixlen == length
    assert host_cidr(mapped) == host_cidr(f"{mapped}/128") == f"{address}/32"
    if length != 128:
        with pytest.raises(AddressError):
            host_cidr(f"{mapped}/{length}")  # wider than one host


# An independent reading of Go's IPv4 rules: octets 0-255 without leading zeros, decimal prefix.
GO_IPV4_CIDR = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:/[0-9]+)?"
)


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789./", max_size=22))
def test_ipv4_texts_agree_with_the_go_rules(text: str) -> None:
    go_accepts = GO_IPV4_CIDR.fullmatch(text) is not None and (
        "/" not in text or int(text.split("/")[1]) <= 32
    )
    try:
        parse_calico_entry(text)
    except AddressError:
        assert not go_accepts, text
    else:
        assert go_accepts, text


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789abcdefABCDEF.:/%xX +-", max_size=48))
def test_anything_is_either_a_network_or_a_clear_error(text: str) -> None:
    try:
        network = parse_calico_entry(text)
    except AddressError as exc:
        assert str(exc)
        return
    # What is accepted round-trips, and hosts agree with host_cidr/ip_of.
    if network.prefixlen == network.max_prefixlen:
        assert ipaddress.ip_address(ip_of(text)) in network or network.network_address.ipv4_mapped is not None
