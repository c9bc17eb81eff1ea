"""SSRF vetting: odd address spellings, private resolutions, schemes, and properties of the parser."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.app import create_app
from service.clock import ManualClock
from service.config import ConfigError, load_settings, private_targets
from service.ssrf import (
    ALLOW_ALL,
    ALLOW_LOOPBACK,
    ALLOW_NONE,
    CachingResolver,
    PrivateTargets,
    ResolveError,
    StaticResolver,
    SystemResolver,
    Target,
    UnsafeTarget,
    address_problem,
    check_url_syntax,
    literal_ip,
    vet,
)
from tests.subscriber import Subscriber
from tests.support import auth, live_server, make_settings, signed_webhook, wait_until

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V4_B = "151.101.1.69"
PUBLIC_V6 = "2606:4700:4700::1111"

RESOLVER = StaticResolver(
    {
        "hooks.example": ["10.1.2.3"],
        "mixed.example": [PUBLIC_V4, "192.168.0.7"],
        "public.example": [PUBLIC_V4, PUBLIC_V4_B],
        "v6.example": [PUBLIC_V6],
        "metadata.example": ["169.254.169.254"],
        "mapped.example": ["::ffff:10.0.0.1"],
    }
)


def run_vet(url: str, *, allow_private: bool | PrivateTargets = False) -> Target:
    return asyncio.run(vet(url, RESOLVER, allow_private=allow_private))


def refusal(url: str) -> UnsafeTarget:
    with pytest.raises(UnsafeTarget) as caught:
        run_vet(url)
    return caught.value


# --- refused at vetting, with the right reason ---


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://2130706433/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://127.0.0.1./", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[::127.0.0.1]/", "loopback"),
        ("http://[2002:7f00:1::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link_local"),
        ("http://[fe80::1]/", "link_local"),
        ("http://[fe80::1%25eth0]/", "link_local"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1:8080/", "private"),
        ("http://100.64.0.1/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[64:ff9b::a00:1]/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://0.1.2.3/", "reserved"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "reserved"),
        ("http://240.0.0.1/", "reserved"),
        ("http://192.0.2.10/", "reserved"),
        ("http://198.51.100.1/", "reserved"),
        ("http://203.0.113.9/", "reserved"),
        ("http://198.18.0.1/", "reserved"),
        ("http://[2001:db8::1]/", "reserved"),
        ("http://[::8.8.8.8]/", "reserved"),
        ("http://hooks.example/", "private"),
        ("https://HOOKS.example./x", "private"),
        ("http://mixed.example/", "private"),
        ("http://metadata.example/", "link_local"),
        ("http://mapped.example/", "private"),
    ],
)
def test_protected_addresses_are_refused_with_their_reason(url: str, reason: str) -> None:
    assert refusal(url).reason == reason


def test_refusal_message_names_the_host_the_address_and_the_setting_that_allows_it() -> None:
    assert str(refusal("http://hooks.example/")) == (
        "hooks.example resolves to 10.1.2.3, a private-network address;"
        " set SORAHOOK_ALLOW_PRIVATE_TARGETS=hooks.example (or true) to allow it"
    )
    assert str(refusal("http://127.0.0.1:9000/")) == (
        "127.0.0.1 is a loopback address; set SORAHOOK_ALLOW_PRIVATE_TARGETS=127.0.0.1 (or true) to allow it"
    )
    assert "0x7f.1 (127.0.0.1) is a loopback address" in str(refusal("http://0x7f.1/"))
    # The suggestion keeps what is allowed now (here emulator mode's loopback default).
    with pytest.raises(UnsafeTarget) as caught:
        run_vet("http://10.0.0.5/", allow_private=ALLOW_LOOPBACK)
    assert "set SORAHOOK_ALLOW_PRIVATE_TARGETS=127.0.0.0/8,::1,10.0.0.5 (or true)" in str(caught.value)


def test_a_name_with_one_public_and_one_private_address_is_refused() -> None:
    # Either could be the one used to connect, so one bad address condemns the name.
    error = refusal("http://mixed.example/")
    assert error.reason == "private"
    assert "192.168.0.7" in str(error)


# --- URL shape ---


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://public.example/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://public.example:70/", "scheme"),
        ("ws://public.example/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("public.example/hook", "scheme"),
        ("http:///hook", "no_host"),
        ("http://user:pw@public.example/", "userinfo"),
        ("http://user@public.example/", "userinfo"),
        ("http://@public.example/", "userinfo"),
        ("http://public.example:0/", "port"),
        ("http://public.example:99999/", "invalid_url"),
        ("http://public.example\\@127.0.0.1/", "invalid_url"),
        ("http://pub lic.example/", "invalid_url"),  # a raw space: refused as written
        ("http://public.example/a\r\nX-Injected: 1", "invalid_url"),
        ("http://public.example\r\n/", "invalid_url"),
        ("http://public.example/\x00", "invalid_url"),
        ("http://public.example/\u200b", "invalid_url"),  # invisible: not printable
        ("http://[not:an:ip]/", "invalid_host"),
    ],
)
def test_malformed_or_non_http_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget) as caught:
        check_url_syntax(url)
    assert caught.value.reason == reason
    with pytest.raises(UnsafeTarget):
        run_vet(url, allow_private=True)


# --- allowed ---


def test_public_addresses_are_allowed_and_the_first_is_the_one_to_connect_to() -> None:
    assert run_vet("https://public.example/hooks?x=1") == Target(
        url="https://public.example/hooks?x=1", scheme="https", host="public.example", port=443, ip=PUBLIC_V4
    )
    assert run_vet(f"http://{PUBLIC_V4}:8080/").ip == PUBLIC_V4
    assert run_vet(f"http://[{PUBLIC_V6}]/").ip == PUBLIC_V6
    assert run_vet("http://v6.example/").ip == PUBLIC_V6
    # NAT64 and 6to4 forms of a public IPv4 address are public (DNS64 networks hand them out).
    assert run_vet("http://[64:ff9b::808:808]/").ip == "64:ff9b::808:808"
    assert run_vet("http://[2002:808:808::1]/").ip == "2002:808:808::1"


def test_odd_spelling_of_a_public_address_connects_to_the_address_itself() -> None:
    assert run_vet("http://0x5db8d822/").ip == PUBLIC_V4
    assert run_vet("http://1572395042/").ip == PUBLIC_V4


def test_allow_private_lifts_the_address_checks_but_not_the_url_checks() -> None:
    assert run_vet("http://127.1:8000/", allow_private=True).ip == "127.0.0.1"
    assert run_vet("http://hooks.example/", allow_private=True).ip == "10.1.2.3"
    assert run_vet("http://[::1]/", allow_private=True).ip == "::1"
    with pytest.raises(UnsafeTarget):
        run_vet("file:///etc/passwd", allow_private=True)


# --- SORAHOOK_ALLOW_PRIVATE_TARGETS: true, false, or a list of hosts and CIDRs ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", ALLOW_ALL), ("TRUE", ALLOW_ALL), ("1", ALLOW_ALL), ("false", ALLOW_NONE), ("off", ALLOW_NONE)],
)
def test_allow_private_targets_takes_true_or_false(text: str, expected: PrivateTargets) -> None:
    assert PrivateTargets.parse(text) == expected


def test_allow_private_targets_takes_a_list_of_hosts_and_cidrs() -> None:
    policy = PrivateTargets.parse("127.0.0.1, 10.0.0.0/8 localhost [fd00::]/8 Hooks.Example.")
    assert policy.hosts == {"localhost", "hooks.example"}
    assert [str(n) for n in policy.networks] == ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]
    assert policy.describe() == "127.0.0.1, 10.0.0.0/8, localhost, [fd00::]/8, hooks.example."
    assert run_vet("http://127.0.0.1:9000/", allow_private=policy).ip == "127.0.0.1"
    assert run_vet("http://10.200.0.1/", allow_private=policy).ip == "10.200.0.1"
    assert run_vet("http://[fd12::1]/", allow_private=policy).ip == "fd12::1"
    assert run_vet("http://hooks.example/", allow_private=policy).ip == "10.1.2.3"
    # a name is allowed by its own entry only, not by the addresses it resolves to being listed elsewhere
    assert run_vet("http://HOOKS.example./x", allow_private=PrivateTargets.parse("hooks.example")).ip
    for url, reason in [
        ("http://127.0.0.2/", "loopback"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/", "link_local"),
        ("http://mixed.example/", "private"),
    ]:
        with pytest.raises(UnsafeTarget) as caught:
            run_vet(url, allow_private=policy)
        assert caught.value.reason == reason


@pytest.mark.parametrize("text", ["10.0.0.0/33", "true,10.0.0.0/8", "300.1.1.1", "bad_host!", "http://x/"])
def test_a_bad_allow_private_targets_entry_is_named(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        PrivateTargets.parse(text)
    entry = text.split(",")[0] if text.startswith("true") else text
    assert repr(entry) in str(caught.value)
    with pytest.raises(ConfigError) as config_error:
        load_settings({"SORAHOOK_ALLOW_PRIVATE_TARGETS": text})
    assert str(config_error.value).startswith("SORAHOOK_ALLOW_PRIVATE_TARGETS ")


@pytest.mark.parametrize("text", [",", " , ,, "])
def test_an_allow_private_targets_list_of_only_separators_is_refused(text: str) -> None:
    # Likely a template whose parts were all empty: neither the default nor "false", so say so.
    with pytest.raises(ConfigError, match=r"^SORAHOOK_ALLOW_PRIVATE_TARGETS .*no host"):
        load_settings({"SORAHOOK_ALLOW_PRIVATE_TARGETS": text, "SORAHOOK_EMULATOR": "true"})


def test_emulator_mode_allows_loopback_only_by_default() -> None:
    assert private_targets({}, emulator=False) is ALLOW_NONE
    assert private_targets({}, emulator=True) is ALLOW_LOOPBACK
    assert load_settings({"SORAHOOK_EMULATOR": "true"}).allow_private_targets is ALLOW_LOOPBACK
    assert load_settings({}).allow_private_targets is ALLOW_NONE
    # an explicit value wins in either mode
    assert private_targets({"SORAHOOK_ALLOW_PRIVATE_TARGETS": "false"}, emulator=True) == ALLOW_NONE
    assert private_targets({"SORAHOOK_ALLOW_PRIVATE_TARGETS": "true"}, emulator=False) == ALLOW_ALL
    for url in (
        "http://127.0.0.1:9000/",
        "http://127.1/",
        "http://[::1]:9000/",
        "http://[::ffff:127.0.0.1]/",
    ):
        assert run_vet(url, allow_private=ALLOW_LOOPBACK).ip
    # loopback is this machine; the networks around it stay protected
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://0.0.0.0/", "http://[::127.0.0.1]/"):
        with pytest.raises(UnsafeTarget):
            run_vet(url, allow_private=ALLOW_LOOPBACK)


def test_system_resolver_resolves_localhost_which_emulator_mode_allows() -> None:
    async def go() -> None:
        target = await vet("http://localhost:9000/", SystemResolver(), allow_private=ALLOW_LOOPBACK)
        assert target.ip in ("127.0.0.1", "::1")

    asyncio.run(go())


# --- resolution failures are not refusals ---


def test_an_unresolvable_name_raises_resolve_error_not_unsafe_target() -> None:
    with pytest.raises(ResolveError) as caught:
        run_vet("http://nowhere.example/")
    assert not isinstance(caught.value, UnsafeTarget)
    assert isinstance(caught.value, OSError)


def test_system_resolver_resolves_localhost_which_is_refused() -> None:
    async def go() -> None:
        resolver = SystemResolver()
        assert set(await resolver.resolve("localhost", 80)) & {"127.0.0.1", "::1"}
        with pytest.raises(UnsafeTarget) as caught:
            await vet("http://localhost:8000/", resolver, allow_private=False)
        assert caught.value.reason == "loopback"
        with pytest.raises(ResolveError):
            await resolver.resolve("no-such-host.invalid", 80)

    asyncio.run(go())


# --- the parser and the classifier ---


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.0.0X0.01", "127.0.0.1"),
        ("10.1.258", "10.1.1.2"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::1", "::1"),
        ("hooks.example", None),
        ("08.1.2.3", None),
        ("0x", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("1.16777216", None),
        ("4294967296", None),
        ("", None),
    ],
)
def test_literal_ip_reads_hosts_the_way_inet_aton_does(host: str, ip: str | None) -> None:
    assert literal_ip(host) == ip


def _aton(text: str) -> str | None:
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        return None


_decimal = st.integers(0, 300).map(str)
_octal = st.integers(0, 300).map(lambda n: "0" + format(n, "o"))
_hex = st.tuples(st.integers(0, 300), st.booleans()).map(
    lambda t: ("0X" if t[1] else "0x") + format(t[0], "x")
)
_junk = st.text(alphabet="0123456789abcdefxX", min_size=1, max_size=5)
_part = st.one_of(_decimal, _octal, _hex, _junk)


@given(st.lists(_part, min_size=4, max_size=4))
def test_literal_ip_agrees_with_inet_aton_on_dotted_quads(parts: list[str]) -> None:
    text = ".".join(parts)
    assert literal_ip(text) == _aton(text)


@given(st.lists(_part, min_size=1, max_size=3), st.integers(0, 2**32))
def test_literal_ip_agrees_with_inet_aton_on_short_forms(parts: list[str], last: int) -> None:
    text = ".".join([*parts[:-1], str(last)])
    assert literal_ip(text) == _aton(text)


@given(st.integers(0x7F000000, 0x7FFFFFFF), st.sampled_from(["{:d}", "0x{:x}", "0X{:X}", "0{:o}"]))
def test_every_loopback_address_spelled_as_one_number_is_refused(number: int, spelling: str) -> None:
    host = spelling.format(number)
    assert literal_ip(host) == str(ipaddress.IPv4Address(number))
    with pytest.raises(UnsafeTarget) as caught:
        run_vet(f"http://{host}/")
    assert caught.value.reason == "loopback"


@given(st.integers(0, 2**32 - 1))
def test_ipv4_is_public_exactly_when_ipaddress_says_global_and_not_multicast(number: int) -> None:
    address = ipaddress.IPv4Address(number)
    assert (address_problem(str(address)) is None) == (address.is_global and not address.is_multicast)


@given(st.integers(0, 2**32 - 1))
def test_ipv4_mapped_ipv6_is_judged_by_the_ipv4_address_it_carries(number: int) -> None:
    dotted = str(ipaddress.IPv4Address(number))
    assert address_problem(f"::ffff:{dotted}") == address_problem(dotted)
    assert address_problem(f"64:ff9b::{dotted}") == address_problem(dotted)


@given(st.integers(0, 2**128 - 1))
def test_ipv6_classification_never_lets_a_non_global_address_through(number: int) -> None:
    address = ipaddress.IPv6Address(number)
    if address_problem(str(address)) is None:
        embedded = address.ipv4_mapped or address.sixtofour
        if address in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(number & 0xFFFFFFFF)
        assert address.is_global or (embedded is not None and embedded.is_global)
        assert not address.is_multicast


# --- the sender's resolver cache ---


class _Scripted:
    """Answers from a script, one entry per call (an exception entry is raised); counts calls; can be held."""

    def __init__(self, *answers: list[str] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls += 1
        await self.gate.wait()
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_cached_answers_last_ttl_seconds_and_are_vetted_on_every_use() -> None:
    async def go() -> None:
        clock = ManualClock()
        inner = _Scripted([PUBLIC_V4], ["10.0.0.5"])
        cached = CachingResolver(inner, ttl=10, now=clock.now)
        url = "http://hooks.example:8080/hook"
        for _ in range(3):
            target = await vet(url, cached, allow_private=False)
            assert target.ip == PUBLIC_V4
        assert inner.calls == 1
        clock.advance(10.5)  # expired: asked again, and the new private answer is refused
        with pytest.raises(UnsafeTarget):
            await vet(url, cached, allow_private=False)
        assert inner.calls == 2

    asyncio.run(go())


def test_a_failed_lookup_is_not_remembered() -> None:
    async def go() -> None:
        inner = _Scripted(ResolveError("temporary failure"), [PUBLIC_V4])
        cached = CachingResolver(inner, ttl=10, now=ManualClock().now)
        with pytest.raises(ResolveError):
            await cached.resolve("hooks.example", 443)
        assert await cached.resolve("hooks.example", 443) == [PUBLIC_V4]
        assert inner.calls == 2

    asyncio.run(go())


def test_concurrent_lookups_of_one_name_share_one_call_and_survive_a_waiter_leaving() -> None:
    async def go() -> None:
        inner = _Scripted([PUBLIC_V4])
        inner.gate.clear()
        cached = CachingResolver(inner, ttl=10, now=ManualClock().now)
        waiters = [asyncio.create_task(cached.resolve("hooks.example", 443)) for _ in range(5)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one send timed out: the others still get the shared answer
        inner.gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1:] == [[PUBLIC_V4]] * 4
        assert inner.calls == 1

    asyncio.run(go())


# --- the policy at subscribe time and again at delivery time, through the real service ---


class _Names:
    """A resolver whose table a test changes between subscribing and delivering."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.table:
            return self.table[host]
        ip = literal_ip(host)
        if ip is None:
            raise ResolveError(f"cannot resolve {host}")
        return [ip]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("policy", "url", "allowed"),
    [
        (ALLOW_LOOPBACK, "http://127.0.0.1:9000/hook", True),
        (ALLOW_LOOPBACK, "http://local.test:9000/hook", True),
        (ALLOW_LOOPBACK, "http://10.0.0.7/hook", False),
        (ALLOW_NONE, "http://127.0.0.1:9000/hook", False),
        (PrivateTargets.parse("10.0.0.0/8"), "http://10.0.0.7/hook", True),
        (PrivateTargets.parse("10.0.0.0/8"), "http://127.0.0.1:9000/hook", False),
    ],
)
async def test_subscribe_time_check_follows_the_policy_and_names_the_setting(
    tmp_path: Path, policy: PrivateTargets, url: str, allowed: bool
) -> None:
    settings = make_settings(tmp_path, allow_private_targets=policy)
    resolver = _Names({"local.test": ["127.0.0.1"]})
    async with live_server(create_app(settings, resolver=resolver, start_workers=False)) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post("/v1/subscriptions", json={"url": url}, headers=auth())
    if allowed:
        assert response.status_code == 201, response.text
    else:
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "invalid_url" and error["param"] == "url"
        assert "set SORAHOOK_ALLOW_PRIVATE_TARGETS=" in error["message"] and "(or true)" in error["message"]


@pytest.mark.anyio
async def test_delivery_time_check_follows_the_policy(tmp_path: Path) -> None:
    # Emulator mode's loopback default: a loopback subscriber is delivered to; a name that was public when
    # subscribed and resolves to a private-network address at delivery is refused without being sent to.
    subscriber = Subscriber()
    settings = make_settings(tmp_path, allow_private_targets=ALLOW_LOOPBACK)
    resolver = _Names({"moved.test": [PUBLIC_V4], "localhost": ["127.0.0.1"]})
    async with (
        live_server(subscriber.app()) as sub_url,
        live_server(create_app(settings, resolver=resolver)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        port = httpx.URL(sub_url).port
        ids = []
        for url in (f"http://localhost:{port}/local", f"http://moved.test:{port}/moved"):
            created = await client.post("/v1/subscriptions", json={"url": url}, headers=auth())
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        resolver.table["moved.test"] = ["10.0.0.7"]
        body, headers = signed_webhook(settings.webhook_secrets[0], "video.completed", "video_loop")
        assert (await client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200

        async def refused() -> list[dict[str, Any]]:
            response = await client.get(
                "/v1/deliveries", params={"subscription_id": ids[1], "limit": "100"}, headers=auth()
            )
            return [d for d in response.json()["data"] if d["attempts"]]

        [delivery] = await wait_until(refused)
        assert delivery["attempts"][0]["error"] == "unsafe target: private"

        async def delivered() -> bool:
            return bool(subscriber.on("/local"))

        await wait_until(delivered)
        assert subscriber.on("/moved") == []
