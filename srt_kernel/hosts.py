"""Host names, IP literals and the host patterns of the network policy.

This module is the one place where a host given by anyone (an HTTP CONNECT
line, an absolute-form URL, a ``Host`` header, a SOCKS5 domain, a settings
entry) becomes a :class:`Host`.  It is pure: no sockets, no lookups.

Promises:

* :func:`parse_host` accepts a text only if it is a valid host name or IP
  literal and returns one normal form for it: lowercase ASCII (IDNA
  A-labels after UTS 46 mapping), no trailing dot, no IPv6 brackets.  Every
  spelling of an IPv4 address that ``inet_aton`` or a browser accepts
  (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) is an IP, never
  a name, and IPv6 forms that carry an IPv4 address (mapped, compatible,
  SIIT, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are folded to that IPv4
  address.  Anything else raises :class:`~srt_kernel.errors.HostError`
  before any lookup could happen.
* :func:`parse_pattern` validates one ``allowedDomains`` /
  ``deniedDomains`` entry and raises :class:`~srt_kernel.errors.PolicyError`
  naming the value and the fix; a built pattern is then matched cheaply by
  :meth:`HostPattern.matches`.
* :func:`intersect_patterns` computes the pattern allowing exactly what two
  patterns both allow, for tightening a policy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from srt_kernel.errors import HostError, PolicyError
from srt_kernel.log import get_logger
from srt_kernel.record import Record

logger = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_NAME = 253
_MAX_LABEL = 63
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_NUMBER_RE = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_PORT_RE = re.compile(r"[0-9]{1,5}")

# IPv6 prefixes whose addresses carry an IPv4 address in their bits.
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Multi-label public suffixes under which a wildcard would cover unrelated
# owners.  A small built-in list, so that no external data is needed; single
# labels (``*.com``) are refused by rule.
PUBLIC_SUFFIXES: frozenset[str] = frozenset(
    {
        "co.uk", "org.uk", "me.uk", "ltd.uk", "plc.uk", "net.uk", "ac.uk",
        "gov.uk", "nhs.uk", "police.uk", "sch.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au", "id.au",
        "co.nz", "org.nz", "net.nz", "govt.nz", "ac.nz",
        "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "ad.jp", "ed.jp",
        "co.kr", "or.kr", "go.kr", "ac.kr",
        "com.cn", "net.cn", "org.cn", "gov.cn", "edu.cn",
        "com.hk", "org.hk", "com.tw", "org.tw", "com.sg", "edu.sg",
        "co.in", "net.in", "org.in", "gov.in", "ac.in",
        "com.br", "net.br", "org.br", "gov.br",
        "com.mx", "org.mx", "com.ar", "com.co", "com.pe", "com.tr",
        "co.za", "org.za", "gov.za", "ac.za", "co.il", "org.il", "ac.il",
        "com.ru", "org.ru", "com.ua", "com.pl", "co.id", "or.id", "ac.id",
        "co.th", "in.th", "ac.th", "com.my", "com.ph", "com.vn", "com.pk",
        "com.eg", "com.sa", "com.ng", "co.ke",
        "github.io", "gitlab.io", "herokuapp.com", "appspot.com",
        "azurewebsites.net", "cloudfront.net", "blogspot.com", "vercel.app",
        "netlify.app", "pages.dev", "workers.dev", "web.app", "firebaseapp.com",
        "s3.amazonaws.com", "compute.amazonaws.com",
    }
)  # fmt: skip


class Host(Record):
    """A normalised host: exactly one of ``name`` and ``ip`` is set.

    ``name`` is lowercase ASCII (IDNA A-labels) without a trailing dot;
    ``ip`` is an address, with IPv4-carrying IPv6 forms folded to IPv4.
    """

    name: str | None = None
    ip: IPAddress | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.ip is None):
            raise ValueError("a Host has exactly one of name and ip")

    def __str__(self) -> str:
        return self.name if self.name is not None else str(self.ip)

    @property
    def is_loopback(self) -> bool:
        """A loopback address, or ``localhost`` and the names under it."""
        if self.ip is not None:
            return self.ip.is_loopback
        return is_loopback_name(self.name or "")

    def for_url(self) -> str:
        """The host as it stands in a URL or request line: IPv6 in brackets."""
        if isinstance(self.ip, ipaddress.IPv6Address):
            return f"[{self.ip}]"
        return str(self)


def fold_ip(ip: IPAddress) -> IPAddress:
    """Return the IPv4 address an IPv6 address carries, or ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    if ip in _SIIT or ip in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    # IPv4-compatible (::a.b.c.d); "::" and "::1" are IPv6's own.
    if value >> 32 == 0 and value > 1:
        return ipaddress.IPv4Address(value)
    return ip


def _parse_ipv4_number(part: str, text: str) -> int:
    try:
        if part.startswith("0x"):
            return int(part[2:], 16) if len(part) > 2 else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10)
    except ValueError:
        raise HostError(
            f"{text!r} is not a valid IPv4 address: {part!r} is not a number "
            "in its base (leading 0 means octal, 0x hexadecimal); "
            "write the address as four decimal parts like 192.0.2.1"
        ) from None


def _parse_ipv4(labels: list[str], text: str) -> ipaddress.IPv4Address:
    """Parse the inet_aton forms: 1 to 4 parts, the last one fills the rest."""
    if len(labels) > 4:
        raise HostError(
            f"{text!r} looks like an IPv4 address but has {len(labels)} parts; "
            "an IPv4 address has at most four"
        )
    numbers = [_parse_ipv4_number(p, text) for p in labels]
    *head, last = numbers
    last_bits = 8 * (4 - len(head))
    if any(n > 255 for n in head) or last >= 1 << last_bits:
        raise HostError(
            f"{text!r} looks like an IPv4 address but a part is out of range; "
            "write it as four decimal parts from 0 to 255"
        )
    value = 0
    for n in head:
        value = value << 8 | n
    value = value << last_bits | last
    return ipaddress.IPv4Address(value)


def _check_characters(text: str) -> None:
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or ch.isspace():
            raise HostError(
                f"host {text!r} contains the control or space character "
                f"{ch!r}; give the bare host name or address"
            )


def _parse_ipv6(inner: str, text: str) -> IPAddress:
    if "%" in inner:
        raise HostError(
            f"host {text!r} has an IPv6 zone id; zone ids are not supported, "
            "give a global IPv6 address"
        )
    try:
        return fold_ip(ipaddress.IPv6Address(inner))
    except ValueError:
        raise HostError(
            f"host {text!r} is not a valid IPv6 address "
            "(or a name containing ':'); give a name or an address like [2001:db8::1]"
        ) from None


def _check_label(label: str, text: str) -> None:
    if not label:
        raise HostError(f"host {text!r} has an empty label; remove the extra dot")
    if len(label) > _MAX_LABEL:
        raise HostError(
            f"host {text!r} has a label of {len(label)} characters; "
            f"DNS labels are at most {_MAX_LABEL}"
        )
    if not _LABEL_RE.fullmatch(label):
        bad = next(ch for ch in label if not _LABEL_RE.fullmatch(ch))
        raise HostError(
            f"host {text!r} contains {bad!r}, which is not allowed in a host name "
            "(letters, digits, '-', '_' and '.'); give only the host, "
            "without scheme, user, port or path"
        )
    if label.startswith("xn--"):
        import idna  # only for internationalised names: it is slow to import

        try:
            idna.decode(label)
        except idna.IDNAError:
            raise HostError(
                f"host {text!r} has the label {label!r}, which is not a valid "
                "IDNA A-label; write the name in Unicode or fix the punycode"
            ) from None


def parse_host(text: str) -> Host:
    """Normalise a host name or IP literal; raise HostError if it is not one."""
    if not isinstance(text, str):
        raise HostError(f"host {text!r} is not a string")
    if not text:
        raise HostError("the host is empty; give a host name or IP address")
    _check_characters(text)

    work = text
    if not work.isascii():
        import idna  # only for internationalised names: it is slow to import

        try:
            work = idna.uts46_remap(work, std3_rules=False, transitional=False)
        except (idna.IDNAError, UnicodeError):
            raise HostError(
                f"host {text!r} contains characters that IDNA does not allow; "
                "check the name for invisible or look-alike characters"
            ) from None
        _check_characters(work)
    work = work.lower()

    if work.startswith("["):
        if not work.endswith("]"):
            raise HostError(f"host {text!r} has an unclosed '['; write [IPv6]")
        ip = _parse_ipv6(work[1:-1], text)
        return Host(ip=ip)
    if ":" in work:
        return Host(ip=_parse_ipv6(work, text))

    if work.endswith("."):
        work = work[:-1]
    if not work:
        raise HostError(f"host {text!r} is empty once its trailing dot is removed")
    labels = work.split(".")

    # Like the WHATWG URL parser: a host whose last label is a number is an
    # IPv4 address or an error, never a name that a resolver may read as one.
    if _NUMBER_RE.fullmatch(labels[-1]):
        for label in labels:
            if not _NUMBER_RE.fullmatch(label):
                raise HostError(
                    f"host {text!r} ends in a number but is not an IPv4 address; "
                    "a name's last label cannot be numeric"
                )
        return Host(ip=_parse_ipv4(labels, text))

    encoded: list[str] = []
    for label in labels:
        if label and not label.isascii():
            import idna  # only for internationalised names: it is slow to import

            try:
                label = idna.alabel(label).decode("ascii")
            except (idna.IDNAError, UnicodeError):
                raise HostError(
                    f"host {text!r} has the label {label!r}, which IDNA cannot "
                    "encode; check the name for invalid characters"
                ) from None
        _check_label(label, text)
        encoded.append(label)
    name = ".".join(encoded)
    if len(name) > _MAX_NAME:
        raise HostError(
            f"host {text[:40]!r}... is {len(name)} characters long; "
            f"a DNS name is at most {_MAX_NAME}"
        )
    return Host(name=name)


# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    PatternKind = Literal["exact", "wildcard", "ip"]


class HostPattern(Record):
    """One entry of ``allowedDomains`` or ``deniedDomains``, validated.

    ``value`` is the name (``exact``), the suffix without ``*.``
    (``wildcard``) or the address (``ip``); ``port`` is ``None`` for any port.
    """

    text: str
    kind: PatternKind
    value: str | IPAddress
    port: int | None = None

    def matches(self, host: Host, port: int) -> bool:
        """Whether this entry covers ``host`` on ``port``."""
        if self.port is not None and self.port != port:
            return False
        if self.kind == "ip":
            return host.ip is not None and host.ip == self.value
        if host.name is None:
            return False
        if self.kind == "exact":
            return host.name == self.value
        return host.name.endswith("." + str(self.value))

    @property
    def specificity(self) -> tuple[int, int, int]:
        """A sort key, larger for more specific entries.

        Port-scoped entries first, then exact names and addresses before
        wildcards, then longer wildcard suffixes first.
        """
        scoped = 1 if self.port is not None else 0
        if self.kind == "wildcard":
            return (scoped, 0, len(str(self.value)))
        return (scoped, 1, 0)

    @property
    def is_loopback(self) -> bool:
        """Whether the entry names loopback: ``127.0.0.1:8888``, ``localhost:8888``."""
        if self.kind == "ip":
            return not isinstance(self.value, str) and self.value.is_loopback
        return is_loopback_name(str(self.value))

    def __str__(self) -> str:
        return self.text


def most_specific_first(patterns: Iterable[HostPattern]) -> list[HostPattern]:
    """Return ``patterns`` ordered most specific first (stable for ties)."""
    return sorted(patterns, key=lambda p: p.specificity, reverse=True)


def is_loopback_name(name: str) -> bool:
    """``localhost`` and the names under it, which mean this machine."""
    return name == "localhost" or name.endswith(".localhost")


def _is_local_host(host: Host) -> bool:
    return host.is_loopback or (host.ip is not None and host.ip.is_unspecified)


def _parse_port(port_text: str, text: str, field: str, source: str) -> int:
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise PolicyError(
            f"{field} entry {text!r} has the port {port_text!r}; "
            "a port is a number from 1 to 65535, as in 'api.example.com:443'",
            field=field,
            value=text,
            source=source,
        )
    return int(port_text)


def _split_port(text: str, field: str, source: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise PolicyError(
                f"{field} entry {text!r} has an unclosed '['; write an IPv6 "
                "address with a port as '[::1]:8888'",
                field=field,
                value=text,
                source=source,
            )
        rest = text[close + 1 :]
        if not rest:
            return text[: close + 1], None
        if not rest.startswith(":"):
            raise PolicyError(
                f"{field} entry {text!r} has {rest!r} after the ']'; "
                "write an IPv6 address with a port as '[::1]:8888'",
                field=field,
                value=text,
                source=source,
            )
        return text[: close + 1], _parse_port(rest[1:], text, field, source)
    if text.count(":") == 1:
        host_text, port_text = text.split(":")
        return host_text, _parse_port(port_text, text, field, source)
    return text, None


def _network(
    text: str,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """``text`` as an IP network in CIDR form (``10.0.0.0/8``), or None."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def parse_pattern(text: str, *, field: str, source: str = "") -> HostPattern:
    """Validate one policy entry; raise PolicyError naming the value and fix."""

    def fail(message: str) -> PolicyError:
        return PolicyError(message, field=field, value=text, source=source)

    if not isinstance(text, str):
        raise fail(f"{field} entry {text!r} is not a string; give a host name")
    if not text:
        raise fail(f"{field} has an empty entry; remove it or give a host name")
    if "://" in text:
        raise fail(
            f"{field} entry {text!r} has a scheme; give only the host, "
            f"as in {text.split('://', 1)[1].split('/', 1)[0]!r}"
        )
    if "/" in text:
        network = _network(text)
        if network is not None:
            first = next(iter(network.hosts()), network.network_address)
            allow = (
                ""
                if field.endswith(("deniedDomains", "--deny"))
                else f"; to allow, list each address (as '{first}')"
            )
            raise fail(
                f"{field} entry {text!r} is a network, and entries here are hosts "
                "or single addresses; to refuse every address in it, list it in "
                f"'network.deniedResolvedAddresses', which takes networks{allow}"
            )
        raise fail(
            f"{field} entry {text!r} has a path; entries are hosts, "
            f"give only {text.split('/', 1)[0]!r}"
        )
    if "@" in text:
        raise fail(
            f"{field} entry {text!r} has user information; give only the "
            f"host, as in {text.rsplit('@', 1)[1]!r}"
        )

    host_text, port = _split_port(text, field, source)

    if host_text.startswith("*."):
        suffix_text = host_text[2:]
        if "*" in suffix_text:
            raise fail(
                f"{field} entry {text!r} has a '*' after the first label; "
                "a wildcard is only a leading '*.', as in '*.example.com'"
            )
        try:
            suffix = parse_host(suffix_text)
        except HostError as exc:
            raise fail(f"{field} entry {text!r}: {exc}") from exc
        if suffix.name is None:
            raise fail(
                f"{field} entry {text!r} puts a wildcard over an IP address; "
                "list the address itself"
            )
        if "." not in suffix.name or suffix.name in PUBLIC_SUFFIXES:
            raise fail(
                f"{field} entry {text!r} covers a whole public suffix; "
                f"name a domain under it, as in '*.example.{suffix.name}'"
            )
        return HostPattern(text=text, kind="wildcard", value=suffix.name, port=port)

    if "*" in host_text:
        raise fail(
            f"{field} entry {text!r} has a '*' that is not a leading '*.'; "
            "write '*.example.com' for the names under example.com"
        )
    try:
        host = parse_host(host_text)
    except HostError as exc:
        raise fail(f"{field} entry {text!r}: {exc}") from exc

    if port is None and _is_local_host(host):
        shown = host.for_url()
        raise fail(
            f"{field} entry {text!r}: a bare loopback "
            "allow would expose the Jupyter server and every kernel; "
            f"give a port: {shown}:8888"
        )
    if host.ip is not None:
        return HostPattern(text=text, kind="ip", value=host.ip, port=port)
    assert host.name is not None
    return HostPattern(text=text, kind="exact", value=host.name, port=port)


def _join_port(a: int | None, b: int | None) -> tuple[bool, int | None]:
    if a is None:
        return True, b
    if b is None or a == b:
        return True, a
    return False, None


def _render(kind: PatternKind, value: str | IPAddress, port: int | None) -> str:
    if kind == "wildcard":
        host = f"*.{value}"
    elif isinstance(value, ipaddress.IPv6Address):
        host = f"[{value}]" if port is not None else str(value)
    else:
        host = str(value)
    return host if port is None else f"{host}:{port}"


def intersect_patterns(a: HostPattern, b: HostPattern) -> HostPattern | None:
    """The pattern allowing exactly what both ``a`` and ``b`` allow, or None."""
    ok, port = _join_port(a.port, b.port)
    if not ok:
        return None

    kind: PatternKind
    value: str | IPAddress
    if a.kind == "ip" or b.kind == "ip":
        if a.kind != b.kind or a.value != b.value:
            return None
        kind, value = "ip", a.value
    elif a.kind == "exact" or b.kind == "exact":
        exact, other = (a, b) if a.kind == "exact" else (b, a)
        name = str(exact.value)
        if not other.matches(Host(name=name), port or 0) and not (
            other.kind == "exact" and other.value == name
        ):
            return None
        kind, value = "exact", name
    else:
        sa, sb = str(a.value), str(b.value)
        if sa == sb or sa.endswith("." + sb):
            kind, value = "wildcard", sa
        elif sb.endswith("." + sa):
            kind, value = "wildcard", sb
        else:
            return None

    # Keep the user's own text when the result is one of the inputs.
    for candidate in (a, b):
        if (candidate.kind, candidate.value, candidate.port) == (kind, value, port):
            return candidate
    return HostPattern(
        text=_render(kind, value, port), kind=kind, value=value, port=port
    )
