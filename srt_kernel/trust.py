"""What a notebook may grant itself: approvals and ceilings.

A notebook's ``"sandbox"`` metadata is written by whoever wrote the
notebook, an LLM or a stranger.  Without approval it may only tighten the
user's baseline.  It widens the baseline only when the user approved
exactly what it asks for (``srt-kernel trust NOTEBOOK``), and never beyond
a ceiling set by an administrator (``/etc/srt-kernel/ceiling.json``) or by
the user (``"notebookCeiling"`` in their settings).

An approval is recorded with a hash of the request, in srt-kernel's data
folder, which the sandbox can neither read nor write; any change to the
request voids it.  Jupyter's notary signature plays no part: the Jupyter
server signs any notebook without outputs at its first autosave.

The policy arithmetic here is pure; :class:`ApprovalStore` is the IO edge.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from pathlib import Path

from srt_kernel import policy as pol
from srt_kernel.errors import PolicyError
from srt_kernel.hosts import HostPattern, intersect_patterns
from srt_kernel.record import Record, replace

# Not typing.TYPE_CHECKING: importing typing costs the kernel's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: The documented administrator ceiling file.
SYSTEM_CEILING = Path("/etc/srt-kernel/ceiling.json")


def request_hash(metadata: object) -> str:
    """A stable hash of a notebook's ``"sandbox"`` metadata."""
    import hashlib  # here: it loads OpenSSL, which the kernel's start need not wait for

    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Widening(Record):
    """What a request asks for beyond the baseline, in plain words."""

    hosts: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hosts or self.writes or self.reads or self.env or self.flags)

    def lines(self) -> list[str]:
        out = [f"reach {h} over the network" for h in self.hosts]
        out += [f"write files below {w}" for w in self.writes]
        out += [f"read {r}, which your settings deny" for r in self.reads]
        out += [f"see the environment variable {e}" for e in self.env]
        out += list(self.flags)
        return out


def widening(base: pol.Policy, layer: pol.Layer) -> Widening:
    """What ``layer`` asks for that ``base`` does not already allow."""
    hosts = tuple(
        p.text
        for p in layer.allowed_domains or ()
        if not any(intersect_patterns(p, a) == p for a in base.network.allowed)
    )
    writes = tuple(
        w for w in layer.allow_write or () if not base.filesystem.writable(w)
    )
    reads = tuple(r for r in layer.allow_read or () if not base.filesystem.readable(r))
    env = tuple(e for e in layer.env_allow or () if e not in base.env_allow)
    flags: list[str] = []
    if layer.allow_all_unix_sockets and not base.network.allow_all_unix_sockets:
        flags.append("open Unix sockets (lifts the seccomp ban on AF_UNIX)")
    if layer.allow_local_binding and not base.network.allow_local_binding:
        flags.append("listen on local ports")
    return Widening(hosts, writes, reads, env, tuple(flags))


def cap(
    layer: pol.Layer, ceiling: pol.Layer | None, base: pol.Policy | None = None
) -> tuple[pol.Layer, list[str]]:
    """``layer`` limited to ``ceiling``; also what the ceiling cut, in words.

    The ceiling limits what a notebook is granted beyond ``base``: an entry
    that ``base`` already allows every notebook, approved or not, is kept.
    """
    if ceiling is None:
        return layer, []
    cut: list[str] = []
    allowed = layer.allowed_domains
    if allowed is not None and ceiling.allowed_domains is not None:
        kept = []
        for p in allowed:
            if base is not None and _host_granted(base, p):
                kept.append(p)
                continue
            inside = [
                q
                for c in ceiling.allowed_domains
                if (q := intersect_patterns(p, c)) is not None
            ]
            if inside == [p] or p in inside:
                kept.append(p)
            else:
                kept.extend(inside)
                cut.append(f"reach {p.text} (beyond the ceiling)")
        allowed = tuple(dict.fromkeys(kept))
    granted_write = base.filesystem.writable if base is not None else _never
    granted_read = base.filesystem.readable if base is not None else _never
    writes = _paths_within(
        layer.allow_write, ceiling.allow_write, granted_write, "write below", cut
    )
    reads = _paths_within(
        layer.allow_read, ceiling.allow_read, granted_read, "read", cut
    )
    env = layer.env_allow
    if env is not None and ceiling.env_allow is not None:
        granted_env = base.env_allow if base is not None else ()
        beyond = [e for e in env if e not in ceiling.env_allow and e not in granted_env]
        cut += [f"see {e} (beyond the ceiling)" for e in beyond]
        env = tuple(e for e in env if e not in beyond)
    sockets = layer.allow_all_unix_sockets
    if (
        sockets
        and ceiling.allow_all_unix_sockets is not True
        and not (base is not None and base.network.allow_all_unix_sockets)
    ):
        cut.append("open Unix sockets (beyond the ceiling)")
        sockets = None
    return (
        replace(
            layer,
            allowed_domains=allowed,
            allow_write=writes,
            allow_read=reads,
            env_allow=env,
            allow_all_unix_sockets=sockets,
        ),
        cut,
    )


def _host_granted(base: pol.Policy, pattern: HostPattern) -> bool:
    """Whether ``base`` allows everything ``pattern`` names."""
    return any(intersect_patterns(pattern, a) == pattern for a in base.network.allowed)


def _never(_path: str) -> bool:
    return False


def _paths_within(
    asked: tuple[str, ...] | None,
    roots: tuple[str, ...] | None,
    granted: Callable[[str], bool],
    verb: str,
    cut: list[str],
) -> tuple[str, ...] | None:
    """The asked paths below some ceiling root or ``granted`` already; the
    others noted in ``cut``."""
    if asked is None or roots is None:
        return asked
    kept = []
    for path in asked:
        if granted(path) or any(pol.is_within(path, root) for root in roots):
            kept.append(path)
        else:
            cut.append(f"{verb} {path} (beyond the ceiling)")
    return tuple(kept)


def apply_notebook(
    base: pol.Policy,
    layer: pol.Layer,
    *,
    approved: bool,
    ceiling: pol.Layer | None,
) -> tuple[pol.Policy, list[str]]:
    """The notebook's policy, and notes about what it did not get.

    Unapproved: ``base`` tightened by the layer.  Approved: the same, plus
    what the layer asks beyond ``base`` within the ceiling.  So the notebook
    gets what it asked for, no more, and approving never takes away what
    ``base`` grants the notebook unapproved.
    """
    notes: list[str] = []
    if approved:
        capped, cut = cap(layer, ceiling, base)
        notes += [f"{layer.source} asks to {c}; it was not granted." for c in cut]
        unapproved = pol.tighten(base, layer)
        result = pol.widen(unapproved, replace(capped, warnings=()))
        result = replace(
            result,
            notes=tuple(n for n in result.notes if "was not granted" not in n),
        )
        return result, notes
    result = pol.tighten(base, layer)
    return result, notes


def load_ceiling(
    user_ceiling: object | None, context: pol.Context, system: Path = SYSTEM_CEILING
) -> pol.Layer | None:
    """The ceiling in force: the administrator's, narrowed by the user's.

    Both are documents in the settings shape; only their allow keys matter.
    """
    from srt_kernel.locations import read_settings_file

    layers: list[pol.Layer] = []
    if system.exists():
        layers.append(read_settings_file(system, context, named=False))
    if user_ceiling is not None:
        layers.append(
            pol.parse_layer(
                user_ceiling, source="notebookCeiling", context=context, trusted=True
            )
        )
    if not layers:
        return None
    result = layers[0]
    for other in layers[1:]:
        result = _intersect_ceilings(result, other)
    return result


def _intersect_ceilings(a: pol.Layer, b: pol.Layer) -> pol.Layer:
    def both_hosts(x: Any, y: Any) -> Any:
        if x is None:
            return y
        if y is None:
            return x
        return tuple(
            q for p in x for r in y if (q := intersect_patterns(p, r)) is not None
        )

    def both_paths(x: Any, y: Any) -> Any:
        if x is None:
            return y
        if y is None:
            return x
        return tuple(p for p in x if any(pol.is_within(p, q) for q in y)) + tuple(
            q for q in y if any(pol.is_within(q, p) for p in x) and q not in x
        )

    return replace(
        a,
        source=f"{a.source} and {b.source}",
        allowed_domains=both_hosts(a.allowed_domains, b.allowed_domains),
        allow_write=both_paths(a.allow_write, b.allow_write),
        allow_read=both_paths(a.allow_read, b.allow_read),
        env_allow=None
        if a.env_allow is None and b.env_allow is None
        else tuple(
            e
            for e in (a.env_allow or b.env_allow or ())
            if (a.env_allow is None or e in a.env_allow)
            and (b.env_allow is None or e in b.env_allow)
        ),
        allow_all_unix_sockets=bool(a.allow_all_unix_sockets)
        and bool(b.allow_all_unix_sockets),
    )


# --------------------------------------------------------------------------
# The approval store (IO)


class ApprovalStore:
    """Approvals in ``DATA_DIR/approvals.json``: notebook path -> request hash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PolicyError(
                f"the approvals file {self.path} cannot be read ({exc}); move it "
                "away and approve your notebooks again.",
                field="approvals",
                value=str(self.path),
                source=str(self.path),
            ) from exc
        return data if isinstance(data, dict) else {}

    def is_approved(self, notebook: Path, metadata: object) -> bool:
        entry = self._read().get(str(notebook.resolve()))
        return isinstance(entry, Mapping) and entry.get("hash") == request_hash(
            metadata
        )

    def approve(self, notebook: Path, metadata: object, granted: list[str]) -> None:
        data = self._read()
        data[str(notebook.resolve())] = {
            "hash": request_hash(metadata),
            "approved": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "granted": granted,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def revoke(self, notebook: Path) -> bool:
        data = self._read()
        if data.pop(str(notebook.resolve()), None) is None:
            return False
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        return True
