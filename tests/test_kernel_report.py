"""Block reports, without any IO: each fix is one that works where the cell ran.

The refusals are made by the proxy's own decision core, so a fix here is
checked against the rule texts the proxy really writes.
"""

from __future__ import annotations

import ipaddress

import pytest

from srt_kernel import policy as pol
from srt_kernel.hosts import parse_host, parse_pattern
from srt_kernel.kernel.report import (
    METADATA,
    Advice,
    file_block,
    network_block,
    output_block,
)
from srt_kernel.proxy.decision import check_address, decide_host

CTX = pol.Context(home="/home/u", base_dir="/home/u/proj")
SETTINGS = "~/.srt-settings.json"


def resolve(settings: object) -> pol.Policy:
    layer = pol.parse_layer(settings, source="settings.json", context=CTX, trusted=True)
    return pol.resolve(CTX, [layer])


def tighten(base: pol.Policy, metadata: object) -> pol.Policy:
    layer = pol.parse_layer(
        metadata, source="notebook metadata (a.ipynb)", context=CTX, trusted=False
    )
    return pol.tighten(base, layer)


BASE = resolve(
    {
        "network": {"allowedDomains": ["allowed.test", "other.test"]},
        "filesystem": {"denyWrite": ["/home/u/proj/locked"]},
    }
)
KERNEL = Advice(settings=SETTINGS, base=BASE, policy=BASE)
MAGIC = Advice(settings=SETTINGS, magic=True)


# -- network ----------------------------------------------------------------


def test_an_allowed_name_on_loopback_gets_the_proxys_own_fix() -> None:
    # The proxy refuses a name that resolves to loopback; its 403 says to
    # allow the address with its port, and so must the report.
    host = parse_host("allowed.test")
    decision = check_address(
        BASE.network, host, 50055, ipaddress.ip_address("127.0.0.1")
    )
    assert decision.fix == (
        "if that is intended, add '127.0.0.1:50055' to network.allowedDomains"
    )
    block = network_block(
        "allowed.test", 50055, decision.rule, str(decision.address), KERNEL
    )
    assert block.why == "resolved to 127.0.0.1 (loopback)"
    assert block.fix == (
        'if you mean to reach it, add "127.0.0.1:50055" to "network.allowedDomains" '
        "in your settings (~/.srt-settings.json) and restart the kernel"
    )
    magic = network_block("allowed.test", 443, decision.rule, "::1", MAGIC)
    assert magic.fix == (
        "if you mean to reach it, add --allow [::1]:443 to the %%sandbox line"
    )


@pytest.mark.parametrize(
    ("rule", "advice", "fix"),
    [
        (
            "the name lookup failed (name 'allowed.test' could not be resolved)",
            MAGIC,
            "allowed.test is allowed but has no address here: check the name and "
            "this machine's DNS, or give it an address in "
            '"network.hostAddresses" (for example {"allowed.test": "192.0.2.7"}) '
            "in your settings (~/.srt-settings.json)",
        ),
        (
            "the name has no address",
            KERNEL,
            "allowed.test is allowed but has no address here: check the name and "
            "this machine's DNS, or give it an address in "
            '"network.hostAddresses" (for example {"allowed.test": "192.0.2.7"}) '
            "in your settings (~/.srt-settings.json) and restart the kernel",
        ),
    ],
)
def test_an_allowed_name_without_address_points_at_dns(
    rule: str, advice: Advice, fix: str
) -> None:
    assert network_block("allowed.test", 50055, rule, None, advice).fix == fix


def test_the_proxys_lookup_failure_becomes_a_dns_fix() -> None:
    # The proxy's own gate, with a resolver that knows no name (no DNS).
    import asyncio

    from srt_kernel.audit import AuditEvent, AuditLog
    from srt_kernel.proxy.http import Gate
    from srt_kernel.proxy.resolver import StaticResolver

    events: list[AuditEvent] = []
    audit = AuditLog()
    audit.subscribe(events.append)
    magic = pol.with_options(
        resolve({}),
        allow=[parse_pattern("allowed.test:50055", field="--allow")],
    )
    gate = Gate(magic.network, audit, StaticResolver({}))
    verdict = asyncio.run(gate.authorize("connect", parse_host("allowed.test"), 50055))
    assert verdict.lookup_failed
    [event] = events
    block = network_block(event.host, event.port, event.rule, event.address, MAGIC)
    assert block.render() == (
        "- network: allowed.test port 50055\n"
        "  why: the name lookup failed (name 'allowed.test' is not in the static "
        "host table)\n"
        "  to allow: allowed.test is allowed but has no address here: check the "
        "name and this machine's DNS, or give it an address in "
        '"network.hostAddresses" (for example {"allowed.test": "192.0.2.7"}) in '
        "your settings (~/.srt-settings.json)"
    )


def test_not_allowed_names_the_settings_file_in_use() -> None:
    rule = decide_host(BASE.network, parse_host("new.test"), 8080).rule
    assert network_block("new.test", 8080, rule, None, KERNEL).fix == (
        'add "new.test:8080" to "network.allowedDomains" in your settings '
        "(~/.srt-settings.json) and restart the kernel; if this notebook's "
        '"sandbox" metadata lists allowedDomains, add it there too'
    )
    assert network_block("new.test", 8080, rule, None, MAGIC).fix == (
        "add --allow new.test:8080 to the %%sandbox line"
    )


def test_the_cells_own_no_network_is_named() -> None:
    # %%sandbox --no-network in the kernel: the kernel allows the host
    closed = pol.Layer(source="%%sandbox in the cell", allowed_domains=())
    advice = Advice(settings=SETTINGS, base=BASE, policy=BASE, cell=closed)
    assert network_block(
        "allowed.test", 80, "not in allowedDomains", None, advice
    ).fix == (
        "this cell's own %%sandbox --no-network cuts it off from the network: "
        "remove that line"
    )
    # the same in plain IPython
    no_net = Advice(settings=SETTINGS, magic=True, no_network=True)
    assert network_block(
        "allowed.test", 80, "not in allowedDomains", None, no_net
    ).fix == (
        "this cell's --no-network option cuts it off from the network: drop it "
        "(and add --allow allowed.test to the %%sandbox line if your settings do "
        "not allow it)"
    )


def test_metadata_that_narrows_the_network_is_named() -> None:
    narrowed = tighten(BASE, {"network": {"allowedDomains": ["allowed.test"]}})
    advice = Advice(settings=SETTINGS, base=BASE, policy=narrowed)
    rule = decide_host(narrowed.network, parse_host("other.test"), 80).rule
    assert network_block("other.test", 80, rule, None, advice).fix == (
        f'{METADATA} limits "network.allowedDomains": add "other.test" there'
    )


def test_invalid_metadata_points_at_the_metadata() -> None:
    advice = Advice(settings=SETTINGS, base=BASE, policy=BASE, closed=METADATA)
    fix = (
        'fix this notebook\'s "sandbox" metadata first (the note above names the '
        "problem); until then cells run with no network and no writes"
    )
    assert (
        network_block("allowed.test", 80, "not in allowedDomains", None, advice).fix
        == fix
    )
    closed_fs = pol.replace(BASE.filesystem, allow_write=())
    block = file_block("write", "/home/u/proj/x.txt", closed_fs, (), advice)
    assert block is not None and block.fix == fix


# -- files ------------------------------------------------------------------


def test_metadata_that_narrows_writes_is_named() -> None:
    narrowed = tighten(BASE, {"filesystem": {"allowWrite": ["./out"]}})
    advice = Advice(settings=SETTINGS, base=BASE, policy=narrowed)
    block = file_block("write", "/home/u/proj/x.txt", narrowed.filesystem, (), advice)
    assert block is not None
    assert block.why == (
        "outside every folder this code may write (allowWrite: /home/u/proj/out)"
    )
    assert block.fix == (
        f'{METADATA} limits "filesystem.allowWrite" to /home/u/proj/out: add '
        '"/home/u/proj" there and restart the kernel'
    )
    # outside your settings too: both places
    outside = file_block("write", "/srv/x.txt", narrowed.filesystem, (), advice)
    assert outside is not None and outside.fix == (
        'add "/srv/x.txt" to "filesystem.allowWrite" in your settings '
        "(~/.srt-settings.json) and restart the kernel; this notebook's "
        '"sandbox" metadata limits "filesystem.allowWrite" too: add it there'
    )


def test_plain_ipython_fixes_are_the_magics_options() -> None:
    fs = BASE.filesystem
    write = file_block("write", "/srv/x.txt", fs, (), MAGIC)
    assert (
        write is not None
        and write.fix == "add --write /srv/x.txt to the %%sandbox line"
    )
    read = file_block("missing", "/home/u/.ssh/id_rsa", fs, (), MAGIC)
    assert read is not None
    assert read.fix == "add --allow-read /home/u/.ssh/id_rsa to the %%sandbox line"
    # settings are read for each %%sandbox cell: nothing to restart
    assert output_block(["<script>"], MAGIC).fix == (
        '"output.allowActiveContent": true in your settings '
        "(~/.srt-settings.json) lets it through, for every notebook"
    )


def test_kernel_file_fixes_name_the_settings_file_in_use() -> None:
    fs = BASE.filesystem
    denied = file_block("write", "/home/u/proj/locked/a", fs, (), KERNEL)
    assert denied is not None and denied.fix == (
        'remove /home/u/proj/locked from "filesystem.denyWrite" in your settings '
        "(~/.srt-settings.json) and restart the kernel"
    )
    read = file_block("missing", "/home/u/.ssh/id_rsa", fs, (), KERNEL)
    assert read is not None and read.fix == (
        'add "/home/u/.ssh/id_rsa" to "filesystem.allowRead", or remove '
        "/home/u/.ssh from denyRead, in your settings (~/.srt-settings.json) and "
        "restart the kernel"
    )


@pytest.mark.parametrize(
    ("host", "port", "entry"),
    [
        ("::1", 8080, '"[::1]:8080"'),
        ("2001:db8::1", 8443, '"[2001:db8::1]:8443"'),
        ("2001:db8::1", 443, '"[2001:db8::1]:443"'),
        ("127.0.0.1", 80, '"127.0.0.1:80"'),
        ("localhost", 443, '"localhost:443"'),
        ("example.com", 443, '"example.com"'),
        ("example.com", 8080, '"example.com:8080"'),
    ],
)
def test_the_entry_to_add_is_valid_and_no_wider_than_needed(
    host: str, port: int, entry: str
) -> None:
    fix = network_block(host, port, "not in allowedDomains").fix
    assert fix.startswith(f"add {entry} to ")
    # and it parses as an entry that allows exactly this host and port
    pattern = parse_pattern(entry.strip('"'), field="allowedDomains")
    assert pattern.matches(parse_host(host), port)
    assert pattern.port in (port, None) and (pattern.port == port or port in (80, 443))


@pytest.mark.parametrize(
    ("path", "why", "fix"),
    [
        # a file high up: the file itself, not "/" or the home folder
        ("/evil.txt", "outside every folder", 'add "/evil.txt" to'),
        ("/home/u/notes.txt", "outside every folder", 'add "/home/u/notes.txt" to'),
        # deeper down: its folder
        ("/data/out/deep/x.csv", "outside every folder", 'add "/data/out/deep" to'),
        # below a read-denied folder: nothing to add
        (
            "/home/u/.ssh/authorized_keys",
            'below /home/u/.ssh, which is read-denied ("filesystem.denyRead")',
            "nothing to add: sandboxed code never writes where it may not read",
        ),
    ],
)
def test_a_write_fix_opens_no_more_than_it_must(path: str, why: str, fix: str) -> None:
    fs = pol.FilesystemPolicy(
        allow_write=("/home/u/proj",), deny_read=("/home/u/.ssh",)
    )
    block = file_block("write", path, fs, ())
    assert block is not None
    assert block.why.startswith(why)
    assert block.fix.startswith(fix)
