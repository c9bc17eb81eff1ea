"""URL and address vetting against SSRF, with an injectable DNS resolver."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

__all__ = [
    "ALLOW_ALL",
    "ALLOW_LOOPBACK",
    "ALLOW_NONE",
    "ALLOW_VARIABLE",
    "CachingResolver",
    "PrivateTargets",
    "ResolveError",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
    "Target",
    "UnsafeTarget",
    "address_problem",
    "check_url_syntax",
    "literal_ip",
    "vet",
]


class ResolveError(OSError):
    """A host name did not resolve. Transient as far as delivery is concerned: it is retried."""


class UnsafeTarget(Exception):
    """A URL that must not be called: a bad scheme or shape, or an address on a protected network.

    `reason` is a short code from a closed set (safe as a metric label, and the 422 reason);
    `str(exc)` is a sentence for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """Return the IP addresses `host` resolves to, best first; raise ResolveError on failure."""
        ...


class SystemResolver:
    """The operating system's resolver, through the event loop's getaddrinfo."""

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ResolveError(f"cannot resolve {host}: no addresses")
        return addresses


class CachingResolver:
    """Another resolver's answers, remembered for `ttl` seconds (successful lookups only).

    The sender resolves the host of every delivery: through the system resolver that is a thread-pool
    getaddrinfo, often a DNS query, per delivery, thousands a second for a busy subscriber. Remembered
    answers are vetted like fresh ones on every send, and the connection still goes to the address that
    was vetted; a name that moves takes effect within `ttl`. Concurrent lookups of one name share one
    call; a failed lookup is not remembered (the next send asks again).
    """

    def __init__(
        self, inner: Resolver, *, ttl: float, now: Callable[[], float], max_names: int = 4096
    ) -> None:
        self._inner, self._ttl, self._now, self._max_names = inner, ttl, now, max_names
        self._answers: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[str]]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        key = (host, port)
        known = self._answers.get(key)
        # (an expiry more than `ttl` ahead means the clock was set back: ask again rather than trust it)
        if known is not None and 0 < known[0] - self._now() <= self._ttl:
            return list(known[1])
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(key))
            pending.add_done_callback(_retrieved)  # no "exception never retrieved" if every waiter left
            self._pending[key] = pending
        # shield: one waiter giving up (its send timed out) must not cancel the lookup the others share
        return list(await asyncio.shield(pending))

    async def _lookup(self, key: tuple[str, int]) -> list[str]:
        try:
            addresses = await self._inner.resolve(*key)
        finally:
            del self._pending[key]
        if len(self._answers) >= self._max_names:
            self._answers.clear()
        self._answers[key] = (self._now() + self._ttl, list(addresses))
        return addresses


def _retrieved(future: asyncio.Future[list[str]]) -> None:
    if not future.cancelled():
        future.exception()


class StaticResolver:
    """A fixed table of names for tests; IP literals resolve to themselves, anything else fails."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self._table = {name.lower().rstrip("."): list(ips) for name, ips in table.items()}

    async def resolve(self, host: str, port: int) -> list[str]:
        name = host.lower().rstrip(".")
        if name in self._table:
            return list(self._table[name])
        ip = literal_ip(host)
        if ip is not None:
            return [ip]
        raise ResolveError(f"cannot resolve {host}: not in the static table")


@dataclass(frozen=True)
class Target:
    """A vetted URL and the one address it may be connected to."""

    url: str
    scheme: str
    host: str  # as it goes in the Host header and TLS SNI: lower-case, IDNA-encoded, no brackets
    port: int
    ip: str  # the address that was checked and must be connected to


# --- addresses ---

_PRIVATE_V4 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")

_DESCRIPTIONS = {
    "loopback": "a loopback address",
    "private": "a private-network address",
    "link_local": "a link-local address",
    "multicast": "a multicast address",
    "reserved": "a reserved or special-purpose address",
    "unspecified": "the unspecified address",
    "invalid": "not a valid IP address",
}


def _ipv4_problem(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip in _THIS_NETWORK:
        return "reserved"  # 0.0.0.0/8: Linux connects 0.x.x.x to the local host
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in network for network in _PRIVATE_V4):
        return "private"  # RFC 1918 and carrier-grade NAT (100.64.0.0/10)
    if not ip.is_global:
        return "reserved"  # broadcast, 240/4, documentation, benchmarking, IETF protocol ranges
    return None


def _ipv6_problem(ip: ipaddress.IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    # Forms that carry an IPv4 address inside: judge the IPv4 address they lead to.
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return _ipv4_problem(mapped)
    if ip in _NAT64:
        # DNS64 networks synthesise these for public IPv4 sites, so a public embedded address is fine.
        return _ipv4_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _IPV4_COMPATIBLE:
        # Deprecated IPv4-compatible form (::a.b.c.d): never a legitimate target.
        return _ipv4_problem(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)) or "reserved"
    sixtofour = ip.sixtofour
    if sixtofour is not None:
        problem = _ipv4_problem(sixtofour)
        if problem is not None:
            return problem
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip in _UNIQUE_LOCAL or ip in _SITE_LOCAL or ip in _NAT64_LOCAL:
        return "private"
    if not ip.is_global or ip.is_reserved:
        return "reserved"  # documentation, Teredo, ORCHID, discard-only, unassigned ranges
    return None


@functools.lru_cache(maxsize=4096)  # pure, and called on every send with a handful of addresses
def address_problem(ip: str) -> str | None:
    """The reason code why `ip` must not be connected to, or None when it is a public address."""
    canonical = literal_ip(ip)
    if canonical is None:
        return "invalid"
    address = ipaddress.ip_address(canonical.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_problem(address)
    return _ipv6_problem(address)


# --- literal hosts ---

_PART = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _ipv4_part(text: str) -> int | None:
    if _PART.fullmatch(text) is None:
        return None
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text)


@functools.lru_cache(maxsize=4096)
def literal_ip(host: str) -> str | None:
    """The canonical IP address `host` spells, or None when it is a name.

    IPv4 is read the way inet_aton reads it (and so the way getaddrinfo, curl and browsers do):
    one to four parts, each decimal, octal (leading 0) or hex (0x), the last filling the remaining
    bytes; "2130706433", "0x7f.1", "0177.0.0.1" and "127.1" are all 127.0.0.1. IPv6 may be
    bracketed and carry a zone ("fe80::1%eth0", "%25" URL-encoded).
    """
    text = host.strip()
    try:
        socket.inet_pton(socket.AF_INET, text)
        return text  # the common case, already canonical (inet_pton refuses leading zeros)
    except OSError:
        pass
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        address, _, zone = text.partition("%")
        if zone.startswith("25"):
            zone = zone[2:]
        try:
            ip6 = ipaddress.IPv6Address(address)
        except ValueError:
            return None
        return f"{ip6}%{zone}" if zone else str(ip6)
    if text.endswith("."):
        text = text[:-1]  # "127.0.0.1." is the same host to a browser
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_ipv4_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    *leading, last = numbers
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return str(ipaddress.IPv4Address(number))


# --- which non-public destinations are allowed ---

ALLOW_VARIABLE = "SORAHOOK_ALLOW_PRIVATE_TARGETS"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class PrivateTargets:
    """The non-public destinations a URL may lead to (SORAHOOK_ALLOW_PRIVATE_TARGETS); public ones always may.

    `everything` lifts the address checks altogether. Otherwise an address is allowed when it lies in one
    of `networks` (an IPv4-mapped IPv6 address counts as the IPv4 address it connects to), or when the URL
    names one of `hosts`, whatever that name resolves to. The URL checks (scheme, host shape, no
    credentials) are never lifted. `entries` is the list as written, for messages and the start-up log.
    """

    everything: bool = False
    networks: tuple[_Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PrivateTargets:
        """`true`, `false`, or hosts and CIDRs separated by commas or spaces; ValueError names a bad entry."""
        raw = text.strip().lower()
        if raw in _TRUE:
            return ALLOW_ALL
        if raw in _FALSE or not raw:
            return ALLOW_NONE
        networks: list[_Network] = []
        hosts: list[str] = []
        entries = tuple(part for part in raw.replace(",", " ").split() if part)
        if not entries:  # only separators: a list whose parts were all left empty
            raise ValueError(
                f"holds no host or CIDR in {text!r}; give true, false or a list of hosts and CIDRs"
            )
        for entry in entries:
            if entry in _TRUE or entry in _FALSE:
                raise ValueError(f"takes true, false or a list of hosts and CIDRs, not {entry!r} in a list")
            try:
                networks.append(ipaddress.ip_network(entry.replace("[", "").replace("]", ""), strict=False))
                continue
            except ValueError:
                pass
            name = entry.rstrip(".")
            if (
                "/" in name
                or _HOST_NAME.fullmatch(name) is None
                or name.replace(".", "").isdigit()  # "300.1.1.1" is a bad address, not a name
            ):
                raise ValueError(f"holds {entry!r}, which is neither a host name, an IP address nor a CIDR")
            hosts.append(name)
        return cls(networks=tuple(networks), hosts=frozenset(hosts), entries=entries)

    def allows(self, host: str, address: str) -> bool:
        """Whether `address`, which URL host `host` led to, may be connected to despite not being public."""
        if self.everything:
            return True
        if host.rstrip(".") in self.hosts:
            return True
        if not self.networks:
            return False
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == n.version and c in n for c in candidates for n in self.networks)

    def describe(self) -> str:
        """One phrase for the start-up log."""
        if self.everything:
            return "every address (true)"
        return ", ".join(self.entries) if self.entries else "none (only public addresses)"

    def suggestion(self, entry: str) -> str:
        """The setting that would allow `entry` too, keeping what is allowed now."""
        return ",".join(dict.fromkeys((*self.entries, entry)))


ALLOW_NONE = PrivateTargets()
ALLOW_ALL = PrivateTargets(everything=True, entries=("true",))
# Emulator mode's default: this machine only (127.0.0.0/8 and ::1), not the private networks around it.
ALLOW_LOOPBACK = PrivateTargets(
    networks=(ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128")),
    entries=("127.0.0.0/8", "::1"),
)


def _policy(allow_private: bool | PrivateTargets) -> PrivateTargets:
    if isinstance(allow_private, PrivateTargets):
        return allow_private
    return ALLOW_ALL if allow_private else ALLOW_NONE


# --- URLs ---

_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_\-.]*[a-z0-9_])?\.?")


@functools.lru_cache(maxsize=4096)  # subscription URLs repeat on every send; failures are not cached
def _parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL, or UnsafeTarget."""
    # A raw CR/LF, tab, space or other control character would be quoted, dropped or split by whatever
    # parses the URL next, so the URL called would not be the URL stored: refused as written.
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise UnsafeTarget("invalid_url", "URL must not contain spaces or control characters (CR, LF, tab…)")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise UnsafeTarget("invalid_url", f"not a valid URL: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        shown = scheme or "no scheme"
        raise UnsafeTarget("scheme", f"URL must use http or https, not {shown}")
    raw_host = parsed.raw_host
    if not raw_host:
        raise UnsafeTarget("no_host", "URL has no host")
    # yarl drops an empty "@"; look at the text as written too, so no spelling of userinfo gets through.
    written_authority = re.split(r"[/?#]", url.partition("//")[2], maxsplit=1)[0]
    if parsed.raw_user is not None or parsed.raw_password is not None or "@" in written_authority:
        raise UnsafeTarget("userinfo", "URL must not carry a user name or password")
    host = raw_host.lower()
    if ":" not in host and _HOST_NAME.fullmatch(host) is None:
        raise UnsafeTarget("invalid_host", f"URL host {raw_host!r} is not a valid host name")
    if ":" in host and literal_ip(host) is None:
        raise UnsafeTarget("invalid_host", f"URL host {raw_host!r} is not a valid IPv6 address")
    port = parsed.port
    if port is None or not 0 < port < 65536:
        raise UnsafeTarget("port", f"URL port {port} is out of range")
    return scheme, host, port


def check_url_syntax(url: str) -> None:
    """Raise UnsafeTarget unless `url` is an absolute http(s) URL with a host and no credentials."""
    _parse(url)


async def vet(url: str, resolver: Resolver, *, allow_private: bool | PrivateTargets) -> Target:
    """Resolve `url`'s host and return the address to connect to.

    Refuses (UnsafeTarget) when any address the host resolves to is not public and `allow_private`
    (True: all; a PrivateTargets: those it allows) does not allow it: a name with one public and one
    private address could be steered to either. A failed lookup raises ResolveError, which callers
    treat as transient.
    """
    scheme, host, port = _parse(url)
    literal = literal_ip(host)
    addresses = [literal] if literal is not None else await resolver.resolve(host, port)
    if not addresses:
        raise ResolveError(f"cannot resolve {host}: no addresses")
    policy = _policy(allow_private)
    if not policy.everything:
        for address in addresses:
            problem = address_problem(address)
            if problem is not None and (problem == "invalid" or not policy.allows(host, address)):
                if literal is None:
                    where = f"{host} resolves to {address},"
                else:
                    where = f"{host} is" if host == address else f"{host} ({address}) is"
                described = _DESCRIPTIONS.get(problem, problem)
                # An address as written is allowed by itself; a name by its name (its addresses may move).
                entry = address.split("%", 1)[0] if literal is not None else host.rstrip(".")
                raise UnsafeTarget(
                    problem,
                    f"{where} {described}; set {ALLOW_VARIABLE}={policy.suggestion(entry)} (or true)"
                    " to allow it",
                )
    ip = literal_ip(addresses[0])
    if ip is None:
        raise ResolveError(f"cannot resolve {host}: resolver returned {addresses[0]!r}")
    return Target(url=url, scheme=scheme, host=host, port=port, ip=ip)
