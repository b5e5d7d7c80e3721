"""Outgoing HTTP to addresses users choose (URL previews, push gateways):
which IP addresses may be connected to, and a resolver that enforces it.

Server-side request forgery is stopped at the address actually connected
to: a literal IP in a URL is checked before anything is sent
(`AddressPolicy.allows_host`), and host names are resolved by
`CheckingResolver`, which drops the addresses the policy refuses, so the
address checked is the address connected to (no DNS rebinding). Refused
are non-public addresses (private, loopback, link-local, CGNAT, multicast,
reserved, documentation ranges, and IPv4 addresses embedded in IPv6 ones
that are any of these) and the configured blacklist; only the configured
whitelist lets a range through.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(OSError):
    """Every address of a host is one that may not be connected to."""


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
    if embedded is None and address in _NAT64:
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return embedded


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast; an IPv4 address inside an IPv6 one is judged as that IPv4 address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    return address.is_global and not address.is_multicast


class AddressPolicy:
    """Which IP addresses may be connected to: public ones not in `blacklist`,
    and those in `whitelist` whatever they are."""

    def __init__(self, blacklist: list[str], whitelist: list[str]) -> None:
        self.blacklist = [ipaddress.ip_network(n, strict=False) for n in blacklist]
        self.whitelist = [ipaddress.ip_network(n, strict=False) for n in whitelist]

    def allows(self, address: IPAddress) -> bool:
        if any(address in net for net in self.whitelist):
            return True
        embedded = _embedded_ipv4(address)
        if any(a in net for net in self.blacklist for a in (address, embedded) if a is not None):
            return False
        return is_public(address)

    def allows_host(self, host: str) -> bool:
        """For a literal IP (as a URL's host), whether it is allowed; a host name
        passes here, its addresses being checked as it is resolved."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True
        return self.allows(address)


class CheckingResolver(AbstractResolver):
    """Resolves host names to the allowed addresses only (BlockedAddress if none is)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [
            r for r in found
            if self.policy.allows(ipaddress.ip_address(r["host"].split("%", 1)[0]))
        ]
        if not allowed:
            raise BlockedAddress(f"{host} resolves only to addresses that may not be connected to")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def checking_connector(policy: AddressPolicy, *, limit: int = 100) -> aiohttp.TCPConnector:
    """A connector whose host names resolve to the addresses `policy` allows only
    (literal IPs bypass resolvers: check them with `allows_host` first)."""
    return aiohttp.TCPConnector(resolver=CheckingResolver(policy), limit=limit, use_dns_cache=False)


def was_blocked(err: aiohttp.ClientConnectorError) -> bool:
    """Whether a connection failed because the host's addresses were refused."""
    return isinstance(err.os_error, BlockedAddress)
