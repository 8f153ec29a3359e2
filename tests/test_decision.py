"""Table tests of the pure decision core (no sockets)."""

from __future__ import annotations

import ipaddress

import pytest

from srt_kernel.hosts import parse_host
from srt_kernel.proxy.decision import (
    address_category,
    block_message,
    check_address,
    choose_address,
    decide_host,
)
from tests.conftest_proxy import NetworkPolicy, policy

POLICY = policy(
    allowed=[
        "allowed.test",
        "*.wild.test",
        "port.test:443",
        "127.0.0.1:8888",
        "192.0.2.7",
        "[2001:db8::5]:443",
    ],
    denied=["deny.wild.test", "*.bad.wild.test", "198.51.100.9"],
    denied_resolved=["203.0.113.0/24", "2001:db8:dead::/48"],
)


@pytest.mark.parametrize(
    ("host", "port", "allowed", "rule", "fix"),
    [
        # exact names and case
        ("allowed.test", 80, True, "allowedDomains entry 'allowed.test'", ""),
        ("ALLOWED.TEST.", 80, True, "allowedDomains entry 'allowed.test'", ""),
        (
            "other.test",
            80,
            False,
            "not in allowedDomains",
            "add 'other.test' to network.allowedDomains",
        ),
        # wildcards, deny before allow
        ("a.wild.test", 80, True, "allowedDomains entry '*.wild.test'", ""),
        ("a.b.wild.test", 80, True, "allowedDomains entry '*.wild.test'", ""),
        ("wild.test", 80, False, "not in allowedDomains", ""),
        ("evilwild.test", 80, False, "not in allowedDomains", ""),
        (
            "deny.wild.test",
            80,
            False,
            "deniedDomains entry 'deny.wild.test'",
            "remove 'deny.wild.test' from network.deniedDomains",
        ),
        ("x.bad.wild.test", 80, False, "deniedDomains entry '*.bad.wild.test'", ""),
        # ports
        ("port.test", 443, True, "allowedDomains entry 'port.test:443'", ""),
        (
            "port.test",
            22,
            False,
            "allowedDomains allows port.test only on port 443",
            "add 'port.test:22' to network.allowedDomains",
        ),
        # IP literals in any spelling
        ("127.0.0.1", 8888, True, "allowedDomains entry '127.0.0.1:8888'", ""),
        ("0x7f000001", 8888, True, "allowedDomains entry '127.0.0.1:8888'", ""),
        ("::ffff:127.0.0.1", 8888, True, "allowedDomains entry '127.0.0.1:8888'", ""),
        (
            "127.0.0.1",
            8889,
            False,
            "allowedDomains allows 127.0.0.1 only on port",
            "add '127.0.0.1:8889' to network.allowedDomains (that port of this "
            "machine); a server started inside the sandbox is reached without "
            "the proxy, as with curl --noproxy '*'",
        ),
        (
            "localhost",
            3000,
            False,
            "not in allowedDomains",
            "add 'localhost:3000' to network.allowedDomains (that port",
        ),
        ("127.0.0.2", 80, False, "not in allowedDomains", "add '127.0.0.2:80'"),
        ("192.0.2.7", 1234, True, "allowedDomains entry '192.0.2.7'", ""),
        ("198.51.100.9", 80, False, "deniedDomains entry '198.51.100.9'", ""),
        ("[2001:db8::5]", 443, True, "allowedDomains entry '[2001:db8::5]:443'", ""),
        ("[::1]", 80, False, "not in allowedDomains", "add '[::1]:80'"),
    ],
)
def test_decide_host(host: str, port: int, allowed: bool, rule: str, fix: str) -> None:
    decision = decide_host(POLICY, parse_host(host), port)
    assert decision.allowed is allowed
    assert decision.rule.startswith(rule)
    assert fix in decision.fix
    assert bool(decision.fix) is not allowed


@pytest.mark.parametrize(
    ("address", "port", "allowed", "rule"),
    [
        # special kinds are refused for a name
        ("127.0.0.1", 80, False, "resolved to 127.0.0.1 (loopback)"),
        ("127.8.9.10", 80, False, "resolved to 127.8.9.10 (loopback)"),
        ("::1", 80, False, "resolved to ::1 (loopback)"),
        ("::ffff:127.0.0.1", 80, False, "resolved to 127.0.0.1 (loopback)"),
        ("0.0.0.0", 80, False, "resolved to 0.0.0.0 (unspecified)"),
        ("0.1.2.3", 80, False, "resolved to 0.1.2.3 (unspecified)"),
        ("::", 80, False, "resolved to :: (unspecified)"),
        ("169.254.1.1", 80, False, "(link-local)"),
        ("fe80::1", 80, False, "(link-local)"),
        ("224.0.0.1", 80, False, "(multicast)"),
        ("ff02::1", 80, False, "(multicast)"),
        ("255.255.255.255", 80, False, "(broadcast)"),
        # cloud metadata endpoints
        ("169.254.169.254", 80, False, "(cloud metadata service)"),
        ("::ffff:169.254.169.254", 80, False, "(cloud metadata service)"),
        ("100.100.100.200", 80, False, "(Alibaba Cloud metadata)"),
        ("168.63.129.16", 80, False, "(Azure wire server)"),
        ("192.0.0.192", 80, False, "(Oracle Cloud metadata)"),
        ("fd00:ec2::254", 80, False, "(AWS instance services (IPv6))"),
        # deniedResolvedAddresses and deny entries for addresses
        ("203.0.113.5", 80, False, "in deniedResolvedAddresses 203.0.113.0/24"),
        ("2001:db8:dead::1", 80, False, "in deniedResolvedAddresses"),
        ("198.51.100.9", 80, False, "deniedDomains entry '198.51.100.9'"),
        # this host's own address
        ("192.0.2.99", 80, False, "(an address of this host)"),
        # an address listed itself is allowed, with its port only
        ("127.0.0.1", 8888, True, "allowedDomains entry '127.0.0.1:8888'"),
        ("::ffff:127.0.0.1", 8888, True, "allowedDomains entry '127.0.0.1:8888'"),
        ("192.0.2.7", 80, True, "allowedDomains entry '192.0.2.7'"),
        # ordinary addresses
        ("192.0.2.1", 80, True, "resolved to 192.0.2.1"),
        ("2001:db8::1", 80, True, "resolved to 2001:db8::1"),
    ],
)
def test_check_address(address: str, port: int, allowed: bool, rule: str) -> None:
    host = parse_host("allowed.test")
    local = {ipaddress.ip_address("192.0.2.99")}
    decision = check_address(POLICY, host, port, ipaddress.ip_address(address), local)
    assert decision.allowed is allowed
    assert rule in decision.rule
    if not allowed:
        assert "network." in decision.fix


def test_choose_address_skips_refused_and_never_picks_them() -> None:
    host = parse_host("allowed.test")
    addresses = [ipaddress.ip_address(a) for a in ("127.0.0.1", "192.0.2.1")]
    decision = choose_address(POLICY, host, 80, addresses)
    assert decision.allowed and decision.address == ipaddress.ip_address("192.0.2.1")

    refused = [ipaddress.ip_address(a) for a in ("169.254.169.254", "127.0.0.1")]
    decision = choose_address(POLICY, host, 80, refused)
    assert not decision.allowed
    assert decision.rule == "resolved to 169.254.169.254 (cloud metadata service)"

    assert not choose_address(POLICY, host, 80, []).allowed


def test_address_category_is_none_for_public_addresses() -> None:
    assert address_category(ipaddress.ip_address("192.0.2.1")) is None
    assert address_category(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) == (
        "cloud metadata service"
    )


def test_block_message_names_host_port_rule_fix() -> None:
    decision = decide_host(POLICY, parse_host("other.test"), 443)
    assert decision.message() == (
        "srt-kernel blocked the connection to other.test port 443: "
        "not in allowedDomains. To allow it, add 'other.test' to "
        "network.allowedDomains."
    )
    assert block_message("x.test", 1, "r", "") == (
        "srt-kernel blocked the connection to x.test port 1: r."
    )


def test_rule_names_its_source() -> None:
    sourced = NetworkPolicy(
        allowed=POLICY.allowed,
        denied=POLICY.denied,
        sources=(("deny.wild.test", "/home/u/.srt-settings.json"),),
    )
    decision = decide_host(sourced, parse_host("deny.wild.test"), 80)
    assert decision.rule == (
        "deniedDomains entry 'deny.wild.test' (from /home/u/.srt-settings.json)"
    )


def test_empty_policy_refuses_everything() -> None:
    empty = NetworkPolicy()
    for text in ("allowed.test", "127.0.0.1", "[::1]", "a.wild.test"):
        assert not decide_host(empty, parse_host(text), 80).allowed
