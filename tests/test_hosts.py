"""Table tests of host normalisation, policy entries, matching, intersection."""

from __future__ import annotations

import ipaddress

import pytest

from srt_kernel.errors import HostError, PolicyError
from srt_kernel.hosts import (
    Host,
    HostPattern,
    intersect_patterns,
    most_specific_first,
    parse_host,
    parse_pattern,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
FIELD = "network.allowedDomains"


def name(text: str) -> Host:
    return Host(name=text)


def ip(text: str) -> Host:
    return Host(ip=ipaddress.ip_address(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # case and trailing dots
        ("Example.COM", name("example.com")),
        ("example.com.", name("example.com")),
        ("ALLOWED.Test.", name("allowed.test")),
        ("a_b.test", name("a_b.test")),
        ("x-y.test", name("x-y.test")),
        # IDNA: Unicode to A-labels, UTS 46 mapping of full-width forms
        ("bücher.de", name("xn--bcher-kva.de")),
        ("BÜCHER.de", name("xn--bcher-kva.de")),
        ("xn--bcher-kva.de", name("xn--bcher-kva.de")),
        ("ＥＸａｍｐｌｅ。ｃｏｍ", name("example.com")),
        # IPv4 in every spelling inet_aton accepts
        ("127.0.0.1", ip("127.0.0.1")),
        ("2130706433", ip("127.0.0.1")),
        ("0x7f000001", ip("127.0.0.1")),
        ("0X7F000001", ip("127.0.0.1")),
        ("0177.0.0.1", ip("127.0.0.1")),
        ("0177.0000.0.01", ip("127.0.0.1")),
        ("127.1", ip("127.0.0.1")),
        ("127.0.1", ip("127.0.0.1")),
        ("0x7f.1", ip("127.0.0.1")),
        ("0x7f.0.0x0.1", ip("127.0.0.1")),
        ("169.254.43518", ip("169.254.169.254")),
        ("0xa9fea9fe", ip("169.254.169.254")),
        ("0", ip("0.0.0.0")),
        ("127.0.0.1.", ip("127.0.0.1")),
        ("１２７.０.０.１", ip("127.0.0.1")),
        # IPv6, brackets removed, IPv4-carrying forms folded
        ("::1", ip("::1")),
        ("[::1]", ip("::1")),
        ("[2001:DB8::1]", ip("2001:db8::1")),
        ("::ffff:127.0.0.1", ip("127.0.0.1")),
        ("[::ffff:7f00:1]", ip("127.0.0.1")),
        ("::ffff:169.254.169.254", ip("169.254.169.254")),
        ("::127.0.0.1", ip("127.0.0.1")),
        ("::ffff:0:127.0.0.1", ip("127.0.0.1")),
        ("64:ff9b::a9fe:a9fe", ip("169.254.169.254")),
        ("2002:7f00:1::", ip("127.0.0.1")),
        ("::", ip("::")),
        ("fd00:ec2::254", ip("fd00:ec2::254")),
    ],
)
def test_parse_host_normalises(text: str, expected: Host) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # empty and dots
        "",
        ".",
        "..",
        "a..b",
        ".a",
        "a.b..",
        # NUL, control characters, spaces
        "a\x00b.test",
        "allowed.test\x00.evil.test",
        "a\r\nb",
        "a\tb",
        "a b",
        " a",
        "a\x7f",
        # URL pieces that are not a host
        "a/b",
        "a@b",
        "u:p@b",
        "a%2eb",
        "a:80",
        "a?b",
        "a#b",
        "a\\b",
        "*.a.test",
        # IPv6 zone ids and bad IPv6
        "fe80::1%eth0",
        "[fe80::1%25eth0]",
        "[::1",
        "[a.test]",
        "1:2:3:4:5:6:7:8:9",
        # numeric last label that is not IPv4
        "1.2.3.256",
        "256.1.1.1",
        "1.2.3.4.5",
        "08.0.0.1",
        "127.0.0.0x1ff",
        "example.123",
        "0x100000000",
        # label and name length
        "a" * 64 + ".test",
        ("a" * 63 + ".") * 4 + "test",
        # invalid IDNA
        "xn--zz.test",
        "a\u200db.test",
    ],
)
def test_parse_host_refuses(text: str) -> None:
    with pytest.raises(HostError) as info:
        parse_host(text)
    assert repr(text)[:20] in str(info.value) or not text


@pytest.mark.parametrize(
    ("text", "kind", "value", "port"),
    [
        # exact names, with and without a port
        ("api.example.com", "exact", "api.example.com", None),
        ("API.Example.com.:443", "exact", "api.example.com", 443),
        ("bücher.de", "exact", "xn--bcher-kva.de", None),
        # wildcards
        ("*.example.com", "wildcard", "example.com", None),
        ("*.wild.test:8080", "wildcard", "wild.test", 8080),
        # IP literals, loopback only with a port
        ("192.0.2.1", "ip", V4("192.0.2.1"), None),
        ("127.0.0.1:8888", "ip", V4("127.0.0.1"), 8888),
        ("2130706433:8888", "ip", V4("127.0.0.1"), 8888),
        ("[::1]:8888", "ip", V6("::1"), 8888),
        ("2001:db8::1", "ip", V6("2001:db8::1"), None),
        ("[2001:db8::1]", "ip", V6("2001:db8::1"), None),
        ("[::ffff:192.0.2.1]:80", "ip", V4("192.0.2.1"), 80),
        ("localhost:8888", "exact", "localhost", 8888),
        ("1.2.3.4:65535", "ip", V4("1.2.3.4"), 65535),
    ],
)
def test_parse_pattern_accepts(
    text: str, kind: str, value: object, port: int | None
) -> None:
    pattern = parse_pattern(text, field=FIELD)
    assert (pattern.text, pattern.kind, pattern.value, pattern.port) == (
        text,
        kind,
        value,
        port,
    )


# A network in deniedDomains would, with only its address kept, deny one
# address; the error sends it to deniedResolvedAddresses, which takes networks.
@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        (
            "network.deniedDomains",
            "10.0.0.0/8",
            "network.deniedDomains entry '10.0.0.0/8' is a network, and entries "
            "here are hosts or single addresses; to refuse every address in it, "
            "list it in 'network.deniedResolvedAddresses', which takes networks",
        ),
        (
            "network.allowedDomains",
            "fd00::/8",
            "network.allowedDomains entry 'fd00::/8' is a network, and entries "
            "here are hosts or single addresses; to refuse every address in it, "
            "list it in 'network.deniedResolvedAddresses', which takes networks; "
            "to allow, list each address (as 'fd00::1')",
        ),
    ],
)
def test_a_network_entry_points_at_denied_resolved_addresses(
    field: str, text: str, message: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_pattern(text, field=field)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # empty, scheme, path, user-info
        ("", "empty entry"),
        ("https://x.test", "has a scheme"),
        ("x.test/y", "has a path"),
        ("u@x.test", "user information"),
        # wildcards in the wrong place or over a public suffix
        ("*", "leading '*.'"),
        ("*example.com", "leading '*.'"),
        ("a.*.com", "leading '*.'"),
        ("*.*.example.com", "after the first label"),
        ("*.com", "public suffix"),
        ("*.test", "public suffix"),
        ("*.co.uk", "public suffix"),
        ("*.CO.UK.", "public suffix"),
        ("*.github.io", "public suffix"),
        ("*.192.0.2.1", "over an IP address"),
        # bad ports
        ("x.test:0", "from 1 to 65535"),
        ("x.test:65536", "from 1 to 65535"),
        ("x.test:ab", "from 1 to 65535"),
        ("x.test:", "from 1 to 65535"),
        ("x.test:+80", "from 1 to 65535"),
        ("x.test:٨٠", "from 1 to 65535"),
        ("[::1]8888", "after the ']'"),
        # bare loopback
        ("127.0.0.1", "give a port: 127.0.0.1:8888"),
        ("127.1", "give a port: 127.0.0.1:8888"),
        ("0x7f000001", "give a port: 127.0.0.1:8888"),
        ("localhost", "give a port: localhost:8888"),
        ("api.localhost", "give a port"),
        ("[::1]", "give a port: [::1]:8888"),
        ("::ffff:127.0.0.1", "give a port: 127.0.0.1:8888"),
        ("0.0.0.0", "give a port"),
        # host grammar
        ("a b.test", "space character"),
        ("a\x00.test", "control"),
        ("a..test", "empty label"),
    ],
)
def test_parse_pattern_refuses(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_pattern(text, field=FIELD, source="settings.json")
    error = info.value
    assert fragment in str(error)
    assert (error.field, error.value, error.source) == (FIELD, text, "settings.json")
    assert str(error).startswith("settings.json: ")


@pytest.mark.parametrize(
    ("pattern", "host", "port", "expected"),
    [
        # exact names, case and trailing dot already folded by parse_host
        ("allowed.test", "ALLOWED.test.", 80, True),
        ("allowed.test", "a.allowed.test", 80, False),
        ("allowed.test", "allowed.test.evil.test", 80, False),
        # wildcards: strictly under the suffix
        ("*.wild.test", "a.wild.test", 80, True),
        ("*.wild.test", "a.b.wild.test", 443, True),
        ("*.wild.test", "A.WILD.TEST", 80, True),
        ("*.wild.test", "wild.test", 80, False),
        ("*.wild.test", "evilwild.test", 80, False),
        ("*.wild.test", "wild.test.evil.test", 80, False),
        # ports
        ("allowed.test:443", "allowed.test", 443, True),
        ("allowed.test:443", "allowed.test", 22, False),
        ("*.wild.test:443", "a.wild.test", 22, False),
        # IPs after folding; names never match IPs and back
        ("127.0.0.1:8888", "2130706433", 8888, True),
        ("127.0.0.1:8888", "::ffff:127.0.0.1", 8888, True),
        ("127.0.0.1:8888", "127.0.0.1", 8889, False),
        ("192.0.2.1", "192.0.2.1", 1, True),
        ("192.0.2.1", "192.0.2.2", 1, False),
        ("[::1]:8888", "::1", 8888, True),
        ("1.2.3.4", "1.2.3.4.nip.test", 80, False),
        ("localhost:8888", "127.0.0.1", 8888, False),
    ],
)
def test_matches(pattern: str, host: str, port: int, expected: bool) -> None:
    assert parse_pattern(pattern, field=FIELD).matches(parse_host(host), port) is (
        expected
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # exact with exact
        ("a.test", "a.test", "a.test"),
        ("a.test", "b.test", None),
        # exact with wildcard
        ("x.wild.test", "*.wild.test", "x.wild.test"),
        ("*.wild.test", "x.y.wild.test", "x.y.wild.test"),
        ("wild.test", "*.wild.test", None),
        # wildcard with wildcard: the deeper one if nested
        ("*.wild.test", "*.a.wild.test", "*.a.wild.test"),
        ("*.a.wild.test", "*.wild.test", "*.a.wild.test"),
        ("*.a.wild.test", "*.b.wild.test", None),
        ("*.wild.test", "*.wild.test", "*.wild.test"),
        # IPs
        ("192.0.2.1", "192.0.2.1", "192.0.2.1"),
        ("192.0.2.1", "192.0.2.2", None),
        ("192.0.2.1", "a.test", None),
        # ports: None with p is p, p with p is p, p with q is nothing
        ("a.test", "a.test:443", "a.test:443"),
        ("a.test:443", "a.test:443", "a.test:443"),
        ("a.test:443", "a.test:80", None),
        ("*.wild.test:443", "*.a.wild.test", "*.a.wild.test:443"),
        ("[2001:db8::1]", "[2001:db8::1]:80", "[2001:db8::1]:80"),
        ("x.wild.test:80", "*.wild.test:443", None),
    ],
)
def test_intersect(a: str, b: str, expected: str | None) -> None:
    pa, pb = parse_pattern(a, field=FIELD), parse_pattern(b, field=FIELD)
    result = intersect_patterns(pa, pb)
    if expected is None:
        assert result is None
        return
    want = parse_pattern(expected, field=FIELD)
    assert result is not None
    assert (result.kind, result.value, result.port) == (
        want.kind,
        want.value,
        want.port,
    )
    # Symmetric.
    other = intersect_patterns(pb, pa)
    assert other is not None
    assert (other.kind, other.value, other.port) == (
        result.kind,
        result.value,
        result.port,
    )


def test_specificity_orders_most_specific_first() -> None:
    texts = ["*.wild.test", "a.wild.test", "*.b.wild.test", "a.wild.test:443"]
    ordered = most_specific_first(parse_pattern(t, field=FIELD) for t in texts)
    assert [p.text for p in ordered] == [
        "a.wild.test:443",
        "a.wild.test",
        "*.b.wild.test",
        "*.wild.test",
    ]


def test_host_str_and_url_form() -> None:
    assert str(parse_host("[::1]")) == "::1"
    assert parse_host("[::1]").for_url() == "[::1]"
    assert parse_host("127.1").for_url() == "127.0.0.1"
    assert str(parse_host("a.test")) == "a.test"
    with pytest.raises(ValueError):
        Host()
    assert isinstance(parse_pattern("a.test", field=FIELD), HostPattern)
