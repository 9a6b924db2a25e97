"""IP addresses as Calico and the ReservedIP records need them.

Calico parses IPReservation entries with Go's `net.ParseCIDR` / `net.ParseIP` (libcalico-go's
`ParseCIDROrIP`), so what we accept is what Go accepts, no more:
- addresses: dotted-quad IPv4 without leading zeros (Go >= 1.17), IPv6 in any RFC 4291 form
  (hex groups of at most 4 digits, one `::`, an embedded dotted quad at the end); no zone
  (`%eth0`), no whitespace, no other spelling (`0x0a.0.0.1`, `10.1`);
- prefix lengths: ASCII decimal digits only (leading zeros allowed, as Go's `dtoi` reads them),
  at most the address's bit length, which is 128 for an IPv4-mapped IPv6 address; never a
  netmask (`10.0.0.0/255.0.0.0` is valid for Python's `ipaddress`, not for Go);
- an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address to Go; as a host we store
  it as such (`10.0.0.1/32`).
Python's `ipaddress` already matches Go on addresses except for zones; prefixes are checked here.
"""

from __future__ import annotations

import functools
import ipaddress


class AddressError(ValueError):
    """Not an IP address or not a host CIDR."""


def _canonical(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str):
        raise AddressError(f"an IP address must be a string, got {type(text).__name__} {text!r}")
    if not text:
        raise AddressError("empty IP address")
    if "%" in text:
        # A zone index is meaningless to Calico and Go's CIDR parser rejects it.
        raise AddressError(f"{text!r}: zone indexes are not allowed")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise AddressError(f"{text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Go (Calico) treats ::ffff:a.b.c.d as the IPv4 address itself, so store it as such.
        return address.ipv4_mapped
    return address


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    text = address.compressed
    if isinstance(address, ipaddress.IPv6Address) and "." in text:
        # Some Python versions write an embedded dotted quad (e.g. "::1.2.3.4"); keep pure hex so the
        # canonical text, and the record name derived from it, do not depend on the Python version.
        head, _, quad = text.rpartition(":")
        packed = int(ipaddress.IPv4Address(quad))
        text = ipaddress.IPv6Address(f"{head}:{packed >> 16:x}:{packed & 0xFFFF:x}").compressed
    return text


def _prefix(entry: str, prefix: str, bits: int) -> int:
    """Go's `dtoi` on the part after '/': decimal ASCII digits, at most `bits`."""
    if not (prefix.isascii() and prefix.isdigit()):
        raise AddressError(f"{entry!r}: prefix length {prefix!r} is not a decimal number")
    length = int(prefix)
    if length > bits:
        raise AddressError(f"{entry!r}: prefix length {length} is longer than {bits} bits")
    return length


def _parse_entry(entry: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(entry, str):
        raise AddressError(f"an IP address must be a string, got {type(entry).__name__} {entry!r}")
    ip, slash, prefix = entry.partition("/")
    address = _canonical(ip)
    if slash:
        bits = ipaddress.ip_address(ip).max_prefixlen  # 128 for ::ffff:a.b.c.d, as in Go
        if _prefix(entry, prefix, bits) != bits:
            raise AddressError(f"{entry!r} is a network wider than one host (expected /{bits})")
    return address


def parse_calico_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPReservation entry as Calico reads it (Go's ParseCIDR for `ip/len`, else ParseIP as a
    host): the network it covers, host bits cleared (Go's ParseCIDR accepts them set).
    AddressError for anything Go refuses; those entries break Calico IPAM."""
    if not isinstance(entry, str):
        raise AddressError(f"an IPReservation entry must be a string, got {type(entry).__name__} {entry!r}")
    ip, slash, prefix = entry.partition("/")
    _canonical(ip)  # the Go rules on the address (zone, spelling)
    address = ipaddress.ip_address(ip)
    length = _prefix(entry, prefix, address.max_prefixlen) if slash else address.max_prefixlen
    return ipaddress.ip_network((address, length), strict=False)


def host_cidr(ip: str) -> str:
    """Canonical host CIDR for an IP: "10.0.0.1" -> "10.0.0.1/32", "FD00::0001" -> "fd00::1/128".
    Also accepts an existing host CIDR ("10.0.0.1/32"). Raises AddressError for anything else
    (garbage, a network wider than one host, an empty string, a zone index).
    An IPv4-mapped IPv6 address ("::ffff:10.0.0.1") becomes the IPv4 host ("10.0.0.1/32"), as Go sees it."""
    text, bits = _entry(ip)
    return f"{text}/{bits}"


def ip_of(entry: str) -> str:
    """The canonical IP of a host CIDR or bare IP entry ("10.0.0.1/32" -> "10.0.0.1").
    AddressError otherwise."""
    return _entry(entry)[0]


def _entry(entry: str) -> tuple[str, int]:
    if isinstance(entry, str):
        return _cached_entry(entry)
    address = _parse_entry(entry)  # raises AddressError for a non-string
    text = _text(address)
    # The canonical text is usually the entry itself: keep one string, not two, per cached IP.
    return (entry if text == entry else text), address.max_prefixlen


@functools.lru_cache(maxsize=1 << 16)
def _cached_entry(entry: str) -> tuple[str, int]:
    # The leader re-reads every entry of the IPReservation each pass (1,000 entries took 13 ms of the
    # event loop, reviews waiting behind it); parsed once, a pass costs well under a millisecond.
    address = _parse_entry(entry)
    text = _text(address)
    # The canonical text is usually the entry itself: keep one string, not two, per cached IP.
    return (entry if text == entry else text), address.max_prefixlen


def record_name(ip: str) -> str:
    """ReservedIP object name for an IP (see docs/architecture.md): IPv4 as is; IPv6 compressed,
    ':' -> '-', a leading/trailing '-' padded with '0'. Injective, and always a valid DNS-1123 subdomain.
    Accepts a bare IP or a host CIDR; names are derived from the canonical IP (see ip_of)."""
    text = ip_of(ip)
    if ":" not in text:
        return text
    name = text.replace(":", "-")
    # '::' at either end would give a leading or trailing '-', which a DNS-1123 name may not have.
    if name.startswith("-"):
        name = "0" + name
    if name.endswith("-"):
        name += "0"
    return name


def ip_from_record_name(name: str) -> str:
    """Inverse of record_name. AddressError if the name is not one record_name produces."""
    if not isinstance(name, str) or not name:
        raise AddressError(f"{name!r} is not a ReservedIP record name")
    candidate = name.replace("-", ":") if "-" in name else name
    try:
        ip = ip_of(candidate)
    except AddressError:
        raise AddressError(f"{name!r} is not a ReservedIP record name") from None
    # Only the exact canonical spelling is a record name: "fd00-0-0-0-0-0-0-7" or "10.0.0.1/32" are not.
    if record_name(ip) != name:
        raise AddressError(f"{name!r} is not a ReservedIP record name (expected {record_name(ip)!r})")
    return ip
