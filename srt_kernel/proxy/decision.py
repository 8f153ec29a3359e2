"""The proxy's policy decisions, free of IO.

Two steps decide a connection, as design section 5 orders them:

1. :func:`decide_host` judges the host and port as the client named them:
   ``deniedDomains`` first, then ``allowedDomains``, else deny.
2. :func:`check_address` judges the address a name resolved to (once) and
   that the proxy will dial: it refuses loopback, link-local, unspecified,
   multicast and broadcast addresses, this host's own addresses, cloud
   metadata endpoints and ``deniedResolvedAddresses``, unless that exact
   address (on that port, if the entry has one) is itself in
   ``allowedDomains``.

Every :class:`Decision` names its rule and, for a refusal, the fix;
:func:`block_message` renders them as the one sentence that the proxy's 403
body, the audit log and the kernel's block report all show.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence
from typing import Protocol

from srt_kernel.hosts import Host, HostPattern, IPAddress, fold_ip
from srt_kernel.log import get_logger
from srt_kernel.record import Record

logger = get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance metadata and platform services, reachable from inside a VM
# without credentials.  Each is refused even if the network range around it
# is not otherwise special.
METADATA_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.IPv4Network("169.254.169.254/32"), "cloud metadata service"),
    (ipaddress.IPv4Network("169.254.170.2/32"), "AWS ECS task metadata"),
    (ipaddress.IPv4Network("169.254.169.123/32"), "AWS time service"),
    (ipaddress.IPv4Network("169.254.0.23/32"), "Tencent Cloud metadata"),
    (ipaddress.IPv4Network("100.100.100.200/32"), "Alibaba Cloud metadata"),
    (ipaddress.IPv4Network("168.63.129.16/32"), "Azure wire server"),
    (ipaddress.IPv4Network("192.0.0.192/32"), "Oracle Cloud metadata"),
    (ipaddress.IPv6Network("fd00:ec2::/32"), "AWS instance services (IPv6)"),
    (ipaddress.IPv6Network("fd20:ce::254/128"), "GCP metadata (IPv6)"),
)

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class NetworkRules(Protocol):
    """The fields of ``srt_kernel.policy.NetworkPolicy`` that decisions read."""

    @property
    def allowed(self) -> tuple[HostPattern, ...]: ...

    @property
    def denied(self) -> tuple[HostPattern, ...]: ...

    @property
    def denied_resolved(self) -> tuple[IPNetwork, ...]: ...

    @property
    def sources(self) -> tuple[tuple[str, str], ...]: ...


class Decision(Record):
    """The outcome of judging one connection.

    ``rule`` names what decided (``"allowedDomains entry 'a.test'"``,
    ``"not in allowedDomains"``, ``"resolved to 127.0.0.1 (loopback)"``);
    ``fix`` says how to allow it (empty when allowed); ``address`` is the
    address the proxy dials, once known.
    """

    allowed: bool
    host: Host
    port: int
    rule: str
    fix: str = ""
    address: IPAddress | None = None

    def message(self) -> str:
        """The sentence shown to the user for this decision."""
        return block_message(self.host, self.port, self.rule, self.fix)


def block_message(host: Host | str, port: int, rule: str, fix: str) -> str:
    """One sentence naming the host, port, rule and fix of a refusal."""
    text = f"srt-kernel blocked the connection to {host} port {port}: {rule}."
    if fix:
        text += f" To allow it, {fix}."
    return text


def _source(policy: NetworkRules, pattern: HostPattern) -> str:
    for text, where in policy.sources:
        if text == pattern.text and where:
            return f" (from {where})"
    return ""


def _entry_for(host: Host, port: int) -> str:
    if host.ip is not None:
        return f"{host.for_url()}:{port}"
    return str(host)


def _first_match(
    patterns: Sequence[HostPattern], host: Host, port: int
) -> HostPattern | None:
    best: HostPattern | None = None
    for pattern in patterns:
        if pattern.matches(host, port) and (
            best is None or pattern.specificity > best.specificity
        ):
            best = pattern
    return best


def decide_host(policy: NetworkRules, host: Host, port: int) -> Decision:
    """Judge ``host:port`` by the deny and allow entries (no lookup)."""
    denied = _first_match(policy.denied, host, port)
    if denied is not None:
        return Decision(
            allowed=False,
            host=host,
            port=port,
            rule=f"deniedDomains entry {denied.text!r}{_source(policy, denied)}",
            fix=f"remove {denied.text!r} from network.deniedDomains",
        )

    allowed = _first_match(policy.allowed, host, port)
    if allowed is not None:
        return Decision(
            allowed=True,
            host=host,
            port=port,
            rule=f"allowedDomains entry {allowed.text!r}",
            address=host.ip,
        )

    on_other_port = [
        p for p in policy.allowed if p.port is not None and p.matches(host, p.port)
    ]
    entry = _entry_for(host, port)
    if host.is_loopback:
        fix = (
            f"add '{host.for_url()}:{port}' to network.allowedDomains (that port "
            "of this machine); a server started inside the sandbox is reached "
            "without the proxy, as with curl --noproxy '*'"
        )
    elif on_other_port:
        fix = f"add '{host.for_url()}:{port}' to network.allowedDomains"
    elif host.ip is not None:
        fix = f"add '{entry}' (or '{host.for_url()}') to network.allowedDomains"
    else:
        fix = f"add '{entry}' to network.allowedDomains"
    if on_other_port:
        ports = ", ".join(sorted({str(p.port) for p in on_other_port}))
        return Decision(
            allowed=False,
            host=host,
            port=port,
            rule=f"allowedDomains allows {host} only on port {ports}",
            fix=fix,
        )
    return Decision(
        allowed=False, host=host, port=port, rule="not in allowedDomains", fix=fix
    )


def address_category(
    address: IPAddress, local_addresses: Collection[IPAddress] = ()
) -> str | None:
    """Why ``address`` is never dialled for a name, or None if it may be."""
    address = fold_ip(address)
    for network, label in METADATA_NETWORKS:
        if address in network:
            return label
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK
    ):
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address == _BROADCAST:
        return "broadcast"
    if address in {fold_ip(a) for a in local_addresses}:
        return "an address of this host"
    return None


def check_address(
    policy: NetworkRules,
    host: Host,
    port: int,
    address: IPAddress,
    local_addresses: Collection[IPAddress] = (),
) -> Decision:
    """Judge the address that an allowed ``host`` resolved to.

    An address listed itself in ``allowedDomains`` (with this port, if the
    entry has one) is allowed whatever its kind.
    """
    address = fold_ip(address)
    as_host = Host(ip=address)
    entry = f"{as_host.for_url()}:{port}"

    denied = _first_match([p for p in policy.denied if p.kind == "ip"], as_host, port)
    if denied is not None:
        return Decision(
            allowed=False,
            host=host,
            port=port,
            rule=f"resolved to {address}, deniedDomains entry {denied.text!r}",
            fix=f"remove {denied.text!r} from network.deniedDomains",
            address=address,
        )

    listed = _first_match([p for p in policy.allowed if p.kind == "ip"], as_host, port)
    if listed is not None:
        return Decision(
            allowed=True,
            host=host,
            port=port,
            rule=f"resolved to {address}, allowedDomains entry {listed.text!r}",
            address=address,
        )

    category = address_category(address, local_addresses)
    if category is not None:
        return Decision(
            allowed=False,
            host=host,
            port=port,
            rule=f"resolved to {address} ({category})",
            fix=f"if that is intended, add '{entry}' to network.allowedDomains",
            address=address,
        )

    for network in policy.denied_resolved:
        if address.version == network.version and address in network:
            return Decision(
                allowed=False,
                host=host,
                port=port,
                rule=f"resolved to {address}, in deniedResolvedAddresses {network}",
                fix=(
                    f"remove '{network}' from network.deniedResolvedAddresses "
                    f"or add '{entry}' to network.allowedDomains"
                ),
                address=address,
            )

    return Decision(
        allowed=True,
        host=host,
        port=port,
        rule=f"resolved to {address}",
        address=address,
    )


def choose_address(
    policy: NetworkRules,
    host: Host,
    port: int,
    addresses: Sequence[IPAddress],
    local_addresses: Collection[IPAddress] = (),
) -> Decision:
    """Pick the first acceptable address of a lookup, or the first refusal.

    Refused addresses are never dialled; when every address is refused the
    decision reports the first one.
    """
    if not addresses:
        return Decision(
            allowed=False,
            host=host,
            port=port,
            rule="the name has no address",
            fix="check the spelling of the name",
        )
    first_refusal: Decision | None = None
    for address in addresses:
        decision = check_address(policy, host, port, address, local_addresses)
        if decision.allowed:
            return decision
        first_refusal = first_refusal or decision
    assert first_refusal is not None
    return first_refusal
