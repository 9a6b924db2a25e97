"""IP and CIDR parsing with Go's lenient rules (``netutils.ParseIPSloppy``/``ParseCIDRSloppy``)."""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip_sloppy(text: str) -> IPAddress | None:
    """Parse like Go's pre-1.17 net.ParseIP: IPv4 octets may have leading zeros (read as decimal)."""
    if not text or "%" in text:
        return None
    if ":" not in text:
        parts = text.split(".")
        if len(parts) != 4:
            return None
        octets = []
        for part in parts:
            if not part.isdigit() or not part.isascii() or len(part) > 3:
                return None
            value = int(part)
            if value > 255:
                return None
            octets.append(value)
        return ipaddress.IPv4Address(".".join(str(o) for o in octets))
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def parse_cidr_sloppy(text: str) -> IPNetwork | None:
    """Parse like Go's net.ParseCIDR: ``ip/prefix`` required; host bits may be set."""
    addr, sep, prefix = text.partition("/")
    if not sep or not prefix.isdigit() or not prefix.isascii():
        return None
    ip = parse_ip_sloppy(addr)
    if ip is None:
        return None
    bits = int(prefix)
    if bits > ip.max_prefixlen:
        return None
    return ipaddress.ip_network(f"{ip}/{bits}", strict=False)


def parse_cidr_or_ip(text: str) -> IPNetwork | None:
    """What Calico accepts in a reservation entry: a CIDR or a bare IP (a host network)."""
    if "/" in text:
        return parse_cidr_sloppy(text)
    ip = parse_ip_sloppy(text)
    if ip is None:
        return None
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
