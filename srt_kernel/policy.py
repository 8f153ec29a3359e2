"""The policy model: parse, validate, merge and tighten.

A policy says what sandboxed code may reach: which hosts through the proxy,
which paths it may read and write.  Its file format is the settings format
of Anthropic's sandbox-runtime (``~/.srt-settings.json``), so an srt user's
file loads here; the few keys of our own are documented in the README's
reference table.

Layers are combined in a fixed order:

1. built-in defaults (:func:`default_policy`): no network, writes only to
   the working directory, credentials read-denied;
2. user settings (trusted): *widen* the defaults (:func:`widen`);
3. notebook metadata, then a cell (untrusted): may only *tighten*
   (:func:`tighten`), the result is never wider than what it tightens.

This module is pure: it reads no files and opens no sockets.  Paths arrive
already made absolute against a :class:`Context` that the caller gathered
(``srt_kernel.locations``); symlinks are resolved later, by the sandbox's
fact-gathering step.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence

from srt_kernel.errors import PolicyError, SettingsFileError
from srt_kernel.hosts import (
    HostPattern,
    intersect_patterns,
    parse_host,
    parse_pattern,
)
from srt_kernel.record import Record, field, replace

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Environment variables that always reach the sandbox (their values are the
#: user's own).  Everything else is dropped unless ``environment.allow``
#: names it.
BASE_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "TERM",
    "COLORTERM",
    "COLUMNS",
    "LINES",
    "TZ",
    "PYTHONUNBUFFERED",
    "PYTHONIOENCODING",
    "PYTHONDONTWRITEBYTECODE",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
)

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB_CHARS = frozenset("*?[")

#: Paths under the home directory that hold credentials or history; all are
#: read-denied by default (design: credentials stay out).
CREDENTIAL_PATHS: tuple[str, ...] = (
    "~/.ssh",
    "~/.aws",
    "~/.azure",
    "~/.gnupg",
    "~/.config/gcloud",
    "~/.config/gh",
    "~/.config/hub",
    "~/.config/op",
    "~/.config/rclone",
    "~/.kube",
    "~/.docker",
    "~/.netrc",
    "~/.git-credentials",
    "~/.config/git/credentials",
    "~/.pypirc",
    "~/.npmrc",
    "~/.yarnrc",
    "~/.gem/credentials",
    "~/.cargo/credentials",
    "~/.cargo/credentials.toml",
    "~/.terraform.d",
    "~/.terraformrc",
    "~/.vault-token",
    "~/.huggingface",
    "~/.cache/huggingface/token",
    "~/.cache/huggingface/stored_tokens",
    "~/.kaggle",
    "~/.config/anthropic",
    "~/.config/openai",
    # coding assistants: tokens, and transcripts that quote whatever they read
    "~/.claude",
    "~/.claude.json",
    "~/.codex",
    "~/.gemini",
    "~/.config/github-copilot",
    # more cloud and service command lines
    "~/.oci",
    "~/.aliyun",
    "~/.bluemix",
    "~/.config/doctl",
    "~/.config/glab-cli",
    "~/.config/ngrok",
    "~/.ngrok2",
    "~/.config/sops",
    "~/.databrickscfg",
    "~/.boto",
    "~/.s3cfg",
    # database clients' stored passwords
    "~/.pgpass",
    "~/.my.cnf",
    # build tools' repository credentials
    "~/.m2/settings.xml",
    "~/.m2/settings-security.xml",
    "~/.gradle/gradle.properties",
    "~/.yarnrc.yml",
    "~/.config/composer/auth.json",
    "~/.composer/auth.json",
    "~/.password-store",
    "~/.local/share/keyrings",
    "~/.bash_history",
    "~/.zsh_history",
    "~/.python_history",
    "~/.node_repl_history",
    "~/.psql_history",
    "~/.mysql_history",
    "~/.sqlite_history",
    "~/.lesshst",
    "~/.local/share/fish/fish_history",
    "~/.ipython/profile_default/history.sqlite",
    "~/.mozilla",
    "~/.config/google-chrome",
    "~/.config/chromium",
    "~/.config/BraveSoftware",
    "~/.config/microsoft-edge",
    "~/snap/firefox",
)

# srt keys that this implementation reads but does not act on, with what we
# do instead.  They load with a warning rather than an error, so that an srt
# user's settings file works unchanged.
_SRT_IGNORED: dict[str, str] = {
    "ignoreViolations": (
        "srt-kernel reports every refusal under the cell or command; there is "
        "no per-command list of violations to ignore"
    ),
    "network.allowUnixSockets": (
        "on Linux a seccomp filter cannot tell socket paths apart; use "
        "network.allowAllUnixSockets to lift the Unix-socket ban entirely"
    ),
    # the ports are sandbox/plan.py's HTTP_PORT and SOCKS_PORT
    "network.httpProxyPort": (
        "srt-kernel's proxy always listens on 127.0.0.1:3128 (HTTP) and "
        "127.0.0.1:1080 (SOCKS5) of the sandbox's own loopback, and the proxy "
        "variables point there"
    ),
    "network.socksProxyPort": (
        "srt-kernel's proxy always listens on 127.0.0.1:3128 (HTTP) and "
        "127.0.0.1:1080 (SOCKS5) of the sandbox's own loopback, and the proxy "
        "variables point there"
    ),
    "ripgrep": "srt-kernel scans for protected names in Python, at full depth",
    "mandatoryDenySearchDepth": (
        "srt-kernel always scans writable roots at full depth"
    ),
    "allowPty": "srt-kernel gives interactive commands a pseudo-terminal always",
}

_NETWORK_KEYS = frozenset(
    {
        "allowedDomains",
        "deniedDomains",
        "deniedResolvedAddresses",
        "hostAddresses",
        "allowLocalBinding",
        "allowAllUnixSockets",
        "allowUnixSockets",
        "httpProxyPort",
        "socksProxyPort",
    }
)
_FILESYSTEM_KEYS = frozenset({"denyRead", "allowRead", "allowWrite", "denyWrite"})
_ENVIRONMENT_KEYS = frozenset({"allow"})
_OUTPUT_KEYS = frozenset({"allowActiveContent"})
_TOP_KEYS = frozenset(
    {
        "network",
        "filesystem",
        "environment",
        "output",
        "dangerouslyRunWithoutSeccomp",
        "dangerouslyAllowWriteToProtectedPaths",
        "notebookCeiling",
        "enableWeakerNestedSandbox",
        "ignoreViolations",
        "ripgrep",
        "mandatoryDenySearchDepth",
        "allowPty",
        "$schema",
    }
)

# Keys that only a trusted layer (built-in defaults, user settings) may set.
_TRUSTED_ONLY = frozenset(
    {
        "network.hostAddresses",
        "dangerouslyRunWithoutSeccomp",
        "dangerouslyAllowWriteToProtectedPaths",
        "notebookCeiling",
        "output",
    }
)


class Context(Record):
    """Facts about the user's environment that a policy is resolved against.

    ``base_dir`` is where relative paths point: the working directory for
    the command line, the notebook's folder for a notebook.
    """

    home: str
    base_dir: str
    #: Extra read-denied paths of the machine (the Jupyter runtime directory,
    #: srt-kernel's own data directory), gathered at the edge.
    deny_read: tuple[str, ...] = ()
    #: Absolute paths that trusted code reads or runs later (kernelspec and
    #: config folders, the installed package, site-packages).
    protected: tuple[str, ...] = ()


class NetworkPolicy(Record):
    """What the proxy lets through.  No allowed entry means no network."""

    allowed: tuple[HostPattern, ...] = ()
    denied: tuple[HostPattern, ...] = ()
    denied_resolved: tuple[IPNetwork, ...] = ()
    #: Static (name, ip) answers from trusted settings, consulted before DNS.
    host_addresses: tuple[tuple[str, str], ...] = ()
    allow_local_binding: bool = False
    allow_all_unix_sockets: bool = False
    #: (pattern text, where it came from), for display.
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        """True when at least one host may be reached."""
        return bool(self.allowed)


class FilesystemPolicy(Record):
    """What sandboxed code may read and write, as absolute normalised paths.

    Reading: everything, except below a ``deny_read`` path, where the
    deepest rule decides (``allow_read`` re-opens a path inside a denied
    one; on equal depth, deny wins).  Writing: nothing, except below an
    ``allow_write`` path that is readable and not below any ``deny_write``
    path.
    """

    deny_read: tuple[str, ...] = ()
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    deny_write: tuple[str, ...] = ()
    #: (path, rule, where it came from), for display and block reports.
    sources: tuple[tuple[str, str, str], ...] = ()
    #: Allowed paths that an untrusted layer (notebook metadata) named,
    #: already resolved: the sandbox keeps them only while they still lead
    #: to themselves, so a symlink swapped in since grants nothing.
    pinned: tuple[str, ...] = ()

    def readable(self, path: str) -> bool:
        """Whether ``path`` (absolute, normalised) may be read."""
        deny = _deepest_ancestor(self._set("deny_read"), path)
        if deny is None:
            return True
        allow = _deepest_ancestor(self._set("allow_read"), path)
        return allow is not None and _depth(allow) > _depth(deny)

    def writable(self, path: str) -> bool:
        """Whether ``path`` (absolute, normalised) may be written."""
        if not self.readable(path):
            return False
        if _deepest_ancestor(self._set("allow_write"), path) is None:
            return False
        return _deepest_ancestor(self._set("deny_write"), path) is None

    def _set(self, name: str) -> frozenset[str]:
        """The rule paths of field ``name`` as a set, made once per policy."""
        # the policy is frozen; its own __dict__ holds this derived cache
        sets: dict[str, frozenset[str]] = self.__dict__.setdefault("_sets", {})
        found = sets.get(name)
        if found is None:
            found = sets[name] = frozenset(getattr(self, name))
        return found

    def source_of(self, path: str) -> str:
        """Where the rule that decides ``path`` came from, or ``""``."""
        for rule_path, _rule, source in self.sources:
            if rule_path == path:
                return source
        return ""


class Policy(Record):
    """A complete, validated policy."""

    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    filesystem: FilesystemPolicy = field(default_factory=FilesystemPolicy)
    #: Environment variables passed into the sandbox beyond BASE_ENV_ALLOW.
    env_allow: tuple[str, ...] = ()
    #: When False, a sandbox whose seccomp filter cannot be applied does not
    #: start (the default).
    run_without_seccomp: bool = False
    #: Let outputs keep active content (scripts) in the browser.
    allow_active_output: bool = False
    #: Absolute paths protected from writes whatever the rules say.
    protected: tuple[str, ...] = ()
    #: Protected paths the user made writable on purpose
    #: (``dangerouslyAllowWriteToProtectedPaths``).
    unprotected: tuple[str, ...] = ()
    #: The user's ``notebookCeiling`` document, validated, not yet parsed.
    notebook_ceiling: object = None
    #: Human-readable notes about how the layers combined (warnings about
    #: ignored srt keys, requests that a tightening layer could not get).
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Paths


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def is_within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute, normalised)."""
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def _deepest_ancestor(roots: frozenset[str], path: str) -> str | None:
    """The deepest of ``roots`` that ``path`` is or is below, if any.

    Walks up from ``path``, one set lookup per level: plans ask this for
    every path they mount, against every rule.
    """
    if not roots:
        return None
    while True:
        if path in roots:
            return path
        if path == "/":
            return None
        path = path[: path.rfind("/")] or "/"


def normalize_path(text: object, *, context: Context, field: str, source: str) -> str:
    """Make one path entry absolute and normal, or raise :class:`PolicyError`.

    ``~`` and ``~/x`` expand to the user's home, relative paths are taken
    from ``context.base_dir``.  Symlinks are left alone here.  What a user
    would not mean literally is refused rather than taken as a folder's
    name: globs, ``$VARIABLES``, ``~user``, URLs, backslashes, spaces
    around the path and control characters.
    """

    def fail(message: str) -> PolicyError:
        return PolicyError(message, field=field, value=text, source=source)

    if not isinstance(text, str):
        raise fail(f"{field} entries must be strings, not {text!r}.")
    if text.strip() == "":
        raise fail(f"{field} has an empty path; remove the entry or give a path.")
    if "\x00" in text:
        raise fail(f"{field} entry {text!r} contains a NUL byte; remove it.")
    if any(c in _GLOB_CHARS for c in text):
        raise fail(
            f"{field} entry {text!r} is a glob pattern; srt-kernel on Linux "
            "matches literal paths only, so list each path instead."
        )
    if "$" in text:
        raise fail(
            f"{field} entry {text!r} contains '$': environment variables are not "
            f"expanded, so it would name a folder called {text!r} literally; "
            f"write {_unexpanded_hint(text)} instead."
        )
    if text != text.strip():
        raise fail(
            f"{field} entry {text!r} starts or ends with white space, which would "
            f"be part of the folder's name; write {text.strip()!r}."
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise fail(
            f"{field} entry {text!r} contains a control character (a newline or "
            "tab, say); remove it."
        )
    if "://" in text:
        raise fail(
            f"{field} entry {text!r} is a URL; write the path itself, such as "
            "/data/out or ~/out."
        )
    if "\\" in text:
        raise fail(
            f"{field} entry {text!r} contains a backslash, which on Linux is part "
            "of a name, not a separator; separate folders with '/'."
        )
    if text.startswith("~") and not (text == "~" or text.startswith("~/")):
        raise fail(
            f"{field} entry {text!r} names another user's home; write the "
            "absolute path instead."
        )
    if not (text.startswith(("~", "/")) or context.base_dir.startswith("/")):
        raise fail(
            f"{field} entry {text!r} is relative, and there is no folder to "
            "resolve it against; give an absolute path."
        )
    return _absolute(text, context)


def _unexpanded_hint(text: str) -> str:
    """What to write instead of a path that starts with ``$HOME``."""
    for variable in ("$HOME", "${HOME}"):
        if text == variable or text.startswith(variable + "/"):
            return repr("~" + text[len(variable) :])
    return "~/... or an absolute path"


def _absolute(text: str, context: Context) -> str:
    """``text`` made absolute against ``context`` and normalised, as it is.

    For paths of the machine (the working folder, Jupyter's folders), which
    are taken literally whatever characters they hold.
    """
    if text == "~" or text.startswith("~/"):
        path = context.home + text[1:]
    elif text.startswith("/"):
        path = text
    else:
        path = posixpath.join(context.base_dir, text)
    normal = posixpath.normpath(path)
    # POSIX keeps a leading "//"; the kernel treats it as "/".
    return "/" + normal.lstrip("/")


def _path_intersection(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    """Paths below which both lists allow: the deeper of each nested pair."""
    out: list[str] = []
    for x in a:
        for y in b:
            if is_within(x, y):
                out.append(x)
            elif is_within(y, x):
                out.append(y)
    return _unique(out)


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    seen: dict[Any, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return tuple(seen)


# --------------------------------------------------------------------------
# Parsing one layer


class Layer(Record):
    """One parsed settings source.  ``None`` means the key was absent."""

    source: str
    allowed_domains: tuple[HostPattern, ...] | None = None
    denied_domains: tuple[HostPattern, ...] | None = None
    denied_resolved: tuple[IPNetwork, ...] | None = None
    host_addresses: tuple[tuple[str, str], ...] | None = None
    allow_local_binding: bool | None = None
    allow_all_unix_sockets: bool | None = None
    deny_read: tuple[str, ...] | None = None
    allow_read: tuple[str, ...] | None = None
    allow_write: tuple[str, ...] | None = None
    deny_write: tuple[str, ...] | None = None
    env_allow: tuple[str, ...] | None = None
    run_without_seccomp: bool | None = None
    allow_active_output: bool | None = None
    unprotected: tuple[str, ...] | None = None
    notebook_ceiling: object = None
    warnings: tuple[str, ...] = ()


def _expect_list(value: object, field: str, source: str) -> list[object]:
    if not isinstance(value, list):
        raise PolicyError(
            f'{field} must be a list, like ["example.com"]; got {value!r}.',
            field=field,
            value=value,
            source=source,
        )
    return value


def _expect_bool(value: object, field: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(
            f"{field} must be true or false; got {value!r}.",
            field=field,
            value=value,
            source=source,
        )
    return value


def _expect_object(value: object, field: str, source: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(
            f"{field} must be a JSON object; got {value!r}.",
            field=field,
            value=value,
            source=source,
        )
    return value


def _check_keys(
    obj: Mapping[str, Any], allowed: frozenset[str], prefix: str, source: str
) -> None:
    for key in obj:
        if key not in allowed:
            dotted = f"{prefix}.{key}" if prefix else key
            known = sorted(k for k in allowed if not k.startswith("$"))
            raise PolicyError(
                f"unknown setting {dotted!r}{_did_you_mean(key, known, prefix)}; a "
                "misspelt key would silently change nothing, so it is refused. "
                f"Known keys here: {', '.join(known)}.",
                field=dotted,
                value=key,
                source=source,
            )


def _did_you_mean(key: str, known: Sequence[str], prefix: str) -> str:
    # difflib is imported here, on the error path only: the launcher's
    # start-up must not pay for it.
    import difflib

    by_case = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), list(by_case), n=1, cutoff=0.75)
    if not close:
        return ""
    match = by_case[close[0]]
    dotted = f"{prefix}.{match}" if prefix else match
    return f" (did you mean {dotted!r}?)"


def _parse_network(
    net: Mapping[str, Any], source: str, trusted: bool, warnings: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("allowedDomains", "deniedDomains"):
        if key in net:
            f = f"network.{key}"
            entries = _expect_list(net[key], f, source)
            patterns = []
            for entry in entries:
                if not isinstance(entry, str):
                    raise PolicyError(
                        f"{f} entries must be strings; got {entry!r}.",
                        field=f,
                        value=entry,
                        source=source,
                    )
                patterns.append(parse_pattern(entry, field=f, source=source))
            name = "allowed_domains" if key == "allowedDomains" else "denied_domains"
            out[name] = _unique(patterns)

    if "deniedResolvedAddresses" in net:
        f = "network.deniedResolvedAddresses"
        nets = []
        for entry in _expect_list(net["deniedResolvedAddresses"], f, source):
            try:
                nets.append(ipaddress.ip_network(str(entry), strict=False))
            except ValueError as exc:
                raise PolicyError(
                    f"{f} entry {entry!r} is not an IP address or network; write "
                    'it like "10.0.0.0/8" or "192.0.2.7".',
                    field=f,
                    value=entry,
                    source=source,
                ) from exc
        out["denied_resolved"] = _unique(nets)

    if "hostAddresses" in net:
        f = "network.hostAddresses"
        mapping = _expect_object(net["hostAddresses"], f, source)
        pairs = []
        for name, address in mapping.items():
            host = parse_host(str(name))
            try:
                ip = ipaddress.ip_address(str(address))
            except ValueError as exc:
                raise PolicyError(
                    f"{f} maps {name!r} to {address!r}, which is not an IP "
                    'address; write it like {"db.internal": "10.1.2.3"}.',
                    field=f,
                    value=address,
                    source=source,
                ) from exc
            if host.name is None:
                raise PolicyError(
                    f"{f} key {name!r} is an IP literal; only names can be mapped.",
                    field=f,
                    value=name,
                    source=source,
                )
            pairs.append((host.name, str(ip)))
        out["host_addresses"] = tuple(sorted(pairs))

    for key, name in (
        ("allowLocalBinding", "allow_local_binding"),
        ("allowAllUnixSockets", "allow_all_unix_sockets"),
    ):
        if key in net:
            out[name] = _expect_bool(net[key], f"network.{key}", source)

    for key in ("allowUnixSockets", "httpProxyPort", "socksProxyPort"):
        if key in net:
            why = _SRT_IGNORED["network." + key]
            warnings.append(f"{source}: network.{key} is not used: {why}.")
    return out


def _parse_paths(
    fs: Mapping[str, Any], source: str, context: Context
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = {
        "denyRead": "deny_read",
        "allowRead": "allow_read",
        "allowWrite": "allow_write",
        "denyWrite": "deny_write",
    }
    for key, name in names.items():
        if key in fs:
            f = f"filesystem.{key}"
            entries = _expect_list(fs[key], f, source)
            out[name] = _unique(
                normalize_path(e, context=context, field=f, source=source)
                for e in entries
            )
    return out


def broad_write_notes(
    paths: Iterable[str], *, home: str, field: str, source: str
) -> list[str]:
    """A warning for each writable path that holds the whole home folder.

    Such an entry is accepted (it comes from the user), but it is rarely
    meant: every file there that is not protected becomes writable.
    """
    notes = []
    for path in paths:
        if not is_within(home, path):
            continue
        if path == "/":
            what = f"every file on this machine that you can write, {home} included,"
        elif path == home:
            what = f"your whole home folder ({home})"
        else:
            what = f"everything below {path}, your home folder {home} included,"
        notes.append(
            f"{source}: {field} {path} makes {what} writable from the sandbox. "
            "The protected paths (shell start-up files, .git/hooks, Jupyter, "
            "IPython and srt-kernel settings, kernelspecs, ...) stay protected "
            "and read-denied credentials stay unreadable, but everything else "
            "there can be changed or deleted by the code you run. To allow one "
            "project, name its folder instead."
        )
    return notes


def parse_layer(data: object, *, source: str, context: Context, trusted: bool) -> Layer:
    """Validate one settings document (a file, notebook metadata, options).

    ``trusted`` is True for the user's own settings; untrusted layers
    (notebook metadata, cells) may not set keys that only make sense from
    the user.  Raises :class:`PolicyError` naming the field, value and fix.
    """
    doc = _expect_object(data, "settings", source)
    _check_keys(doc, _TOP_KEYS, "", source)
    warnings: list[str] = []
    fields: dict[str, Any] = {}

    if doc.get("enableWeakerNestedSandbox", False) is not False:
        raise PolicyError(
            "enableWeakerNestedSandbox is refused: it would run the sandbox "
            "without its own namespaces and so without real isolation. Remove "
            "the key, and run srt-kernel where user namespaces work "
            "(`srt-kernel doctor` says how).",
            field="enableWeakerNestedSandbox",
            value=doc["enableWeakerNestedSandbox"],
            source=source,
        )
    for key in ("ignoreViolations", "ripgrep", "mandatoryDenySearchDepth", "allowPty"):
        if key in doc:
            warnings.append(f"{source}: {key} is not used: {_SRT_IGNORED[key]}.")

    if not trusted:
        for key in _TRUSTED_ONLY:
            head, _, tail = key.partition(".")
            present = (
                head in doc
                if not tail
                else isinstance(doc.get(head), dict) and tail in doc[head]
            )
            if present:
                raise PolicyError(
                    f"{key} can only be set in your own settings file "
                    "(~/.config/srt-kernel/settings.json), not here.",
                    field=key,
                    value=doc[head] if not tail else doc[head][tail],
                    source=source,
                )

    if "network" in doc:
        net = _expect_object(doc["network"], "network", source)
        _check_keys(net, _NETWORK_KEYS, "network", source)
        fields.update(_parse_network(net, source, trusted, warnings))

    if "filesystem" in doc:
        fs = _expect_object(doc["filesystem"], "filesystem", source)
        _check_keys(fs, _FILESYSTEM_KEYS, "filesystem", source)
        fields.update(_parse_paths(fs, source, context))
        if trusted:
            warnings.extend(
                broad_write_notes(
                    fields.get("allow_write", ()),
                    home=context.home,
                    field="filesystem.allowWrite",
                    source=source,
                )
            )

    if "environment" in doc:
        env = _expect_object(doc["environment"], "environment", source)
        _check_keys(env, _ENVIRONMENT_KEYS, "environment", source)
        if "allow" in env:
            names = _expect_list(env["allow"], "environment.allow", source)
            for name in names:
                if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                    raise PolicyError(
                        f"environment.allow entry {name!r} is not a variable name; "
                        'write names like "OPENAI_API_KEY".',
                        field="environment.allow",
                        value=name,
                        source=source,
                    )
            fields["env_allow"] = _unique(names)

    if "output" in doc:
        output = _expect_object(doc["output"], "output", source)
        _check_keys(output, _OUTPUT_KEYS, "output", source)
        if "allowActiveContent" in output:
            fields["allow_active_output"] = _expect_bool(
                output["allowActiveContent"], "output.allowActiveContent", source
            )

    if "dangerouslyAllowWriteToProtectedPaths" in doc:
        f = "dangerouslyAllowWriteToProtectedPaths"
        fields["unprotected"] = _unique(
            normalize_path(e, context=context, field=f, source=source)
            for e in _expect_list(doc[f], f, source)
        )

    if "notebookCeiling" in doc:
        ceiling = doc["notebookCeiling"]
        # validated now, so that a typo is an error before anything runs
        parse_layer(
            ceiling, source=f"{source}: notebookCeiling", context=context, trusted=False
        )
        fields["notebook_ceiling"] = ceiling

    if "dangerouslyRunWithoutSeccomp" in doc:
        fields["run_without_seccomp"] = _expect_bool(
            doc["dangerouslyRunWithoutSeccomp"], "dangerouslyRunWithoutSeccomp", source
        )

    return Layer(source=source, warnings=tuple(warnings), **fields)


class _RepeatedKeys(dict):  # type: ignore[type-arg]
    """A JSON object in which a key was given more than once (last wins)."""

    repeated: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    counts: dict[str, int] = {}
    for key, _value in pairs:
        counts[key] = counts.get(key, 0) + 1
    marked = _RepeatedKeys(obj)
    marked.repeated = tuple(k for k, n in counts.items() if n > 1)
    return marked


def loads_json(text: str) -> Any:
    """``json.loads``, remembering the keys that an object gives twice.

    JSON parsers keep the last of two equal keys without a word; in a
    policy that would let a typo (or a notebook's author) hide an entry
    from whoever reads the file.  :func:`repeated_keys` and
    :func:`first_repeated_key` find them afterwards.
    """
    return json.loads(text, object_pairs_hook=_json_object)


def repeated_keys(obj: object) -> tuple[str, ...]:
    """The keys that this one object (from :func:`loads_json`) gave twice."""
    return obj.repeated if isinstance(obj, _RepeatedKeys) else ()


def first_repeated_key(value: object, prefix: str = "") -> str | None:
    """The dotted name of the first key given twice anywhere in ``value``."""
    if isinstance(value, dict):
        for key in repeated_keys(value):
            return f"{prefix}.{key}" if prefix else key
        for key, item in value.items():
            found = first_repeated_key(item, f"{prefix}.{key}" if prefix else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = first_repeated_key(item, f"{prefix}[{index}]")
            if found is not None:
                return found
    return None


def repeated_key_error(dotted: str, source: str) -> PolicyError:
    """The error for a key given twice: name it, say why, say the fix."""
    last = dotted.rpartition(".")[2]
    return PolicyError(
        f"the key {dotted!r} is given twice; JSON keeps only the last one and "
        "would silently drop the other, so it is refused. Keep one "
        f"{last!r} and put all its entries there.",
        field=dotted,
        value=last,
        source=source,
    )


def parse_settings_text(
    text: str,
    *,
    source: str,
    context: Context,
    trusted: bool = True,
    named: bool = True,
) -> Layer:
    """Parse the text of a settings file; an empty file is an error.

    ``named`` says the file was named with ``--settings``: only then does a
    fix suggest dropping that option.
    """
    if text.strip() == "":
        drop = "remove --settings" if named else "delete the file"
        raise SettingsFileError(
            f"the settings file is empty; write {{}} for no settings, or {drop} "
            "to use the defaults.",
            field="settings",
            value=text,
            source=source,
        )
    try:
        data = loads_json(text)
    except json.JSONDecodeError as exc:
        drop = ", or remove --settings" if named else ""
        raise SettingsFileError(
            f"the settings file is not valid JSON (line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg}); fix it{drop}.",
            field="settings",
            value=text[:80],
            source=source,
        ) from exc
    repeated = first_repeated_key(data)
    if repeated is not None:
        raise repeated_key_error(repeated, source)
    return parse_layer(data, source=source, context=context, trusted=trusted)


# --------------------------------------------------------------------------
# Combining layers


def default_policy(context: Context) -> Policy:
    """The built-in defaults: no network, writes only to ``base_dir``."""
    # Paths of this machine are taken as they are: a working folder named
    # "data[1]" or "$work" is no mistake of the user's.
    deny_read = _unique(
        _absolute(p, context) for p in (*CREDENTIAL_PATHS, *context.deny_read)
    )
    allow_write = (_absolute(context.base_dir, context),)
    sources = tuple((p, "denyRead", "built-in defaults") for p in deny_read) + tuple(
        (p, "allowWrite", "built-in defaults (the working folder)") for p in allow_write
    )
    return Policy(
        filesystem=FilesystemPolicy(
            deny_read=deny_read, allow_write=allow_write, sources=sources
        ),
        protected=_unique(_absolute(p, context) for p in context.protected),
    )


def widen(policy: Policy, layer: Layer) -> Policy:
    """Apply a trusted layer (user settings): its entries add to ``policy``."""
    net = policy.network
    fs = policy.filesystem

    allowed = net.allowed + (layer.allowed_domains or ())
    new_net = replace(
        net,
        allowed=_unique(allowed),
        denied=_unique(net.denied + (layer.denied_domains or ())),
        denied_resolved=_unique(net.denied_resolved + (layer.denied_resolved or ())),
        host_addresses=_unique(net.host_addresses + (layer.host_addresses or ())),
        allow_local_binding=_pick(layer.allow_local_binding, net.allow_local_binding),
        allow_all_unix_sockets=_pick(
            layer.allow_all_unix_sockets, net.allow_all_unix_sockets
        ),
        sources=net.sources
        + tuple((p.text, layer.source) for p in layer.allowed_domains or ())
        + tuple((p.text, layer.source) for p in layer.denied_domains or ()),
    )
    new_fs = FilesystemPolicy(
        deny_read=_unique(fs.deny_read + (layer.deny_read or ())),
        allow_read=_unique(fs.allow_read + (layer.allow_read or ())),
        allow_write=_unique(fs.allow_write + (layer.allow_write or ())),
        deny_write=_unique(fs.deny_write + (layer.deny_write or ())),
        sources=fs.sources + _path_sources(layer),
    )
    return replace(
        policy,
        network=new_net,
        filesystem=new_fs,
        env_allow=_unique(policy.env_allow + (layer.env_allow or ())),
        run_without_seccomp=_pick(
            layer.run_without_seccomp, policy.run_without_seccomp
        ),
        allow_active_output=_pick(
            layer.allow_active_output, policy.allow_active_output
        ),
        unprotected=_unique(policy.unprotected + (layer.unprotected or ())),
        notebook_ceiling=policy.notebook_ceiling
        if layer.notebook_ceiling is None
        else layer.notebook_ceiling,
        notes=policy.notes + layer.warnings,
    )


def _pick(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _path_sources(layer: Layer) -> tuple[tuple[str, str, str], ...]:
    out: list[tuple[str, str, str]] = []
    for rule, paths in (
        ("denyRead", layer.deny_read),
        ("allowRead", layer.allow_read),
        ("allowWrite", layer.allow_write),
        ("denyWrite", layer.deny_write),
    ):
        out.extend((p, rule, layer.source) for p in paths or ())
    return tuple(out)


def intersect(base: Policy, request: Policy) -> Policy:
    """The narrower of two policies: what both allow, never more.

    Reads: a path is readable only if both policies let it be read.  Writes:
    only below roots that both allow, minus every deny of either.  Hosts:
    the pairwise intersection of the allow lists, every deny of either.
    Flags that widen (local binding, Unix sockets, active output, running
    without seccomp) hold only if both hold.
    """
    bf, rf = base.filesystem, request.filesystem
    allow_read = tuple(
        p
        for p in _unique(bf.allow_read + rf.allow_read)
        if bf.readable(p) and rf.readable(p)
    )
    fs = FilesystemPolicy(
        deny_read=_unique(bf.deny_read + rf.deny_read),
        allow_read=allow_read,
        allow_write=_path_intersection(bf.allow_write, rf.allow_write),
        deny_write=_unique(bf.deny_write + rf.deny_write),
        sources=_unique(bf.sources + rf.sources),
    )

    bn, rn = base.network, request.network
    allowed: list[HostPattern] = []
    for a in bn.allowed:
        for b in rn.allowed:
            both = intersect_patterns(a, b)
            if both is not None:
                allowed.append(both)
    net = NetworkPolicy(
        allowed=_unique(allowed),
        denied=_unique(bn.denied + rn.denied),
        denied_resolved=_unique(bn.denied_resolved + rn.denied_resolved),
        host_addresses=bn.host_addresses,
        allow_local_binding=bn.allow_local_binding and rn.allow_local_binding,
        allow_all_unix_sockets=bn.allow_all_unix_sockets and rn.allow_all_unix_sockets,
        sources=_unique(bn.sources + rn.sources),
    )
    return Policy(
        network=net,
        filesystem=fs,
        env_allow=tuple(e for e in base.env_allow if e in request.env_allow),
        run_without_seccomp=base.run_without_seccomp and request.run_without_seccomp,
        allow_active_output=base.allow_active_output and request.allow_active_output,
        protected=_unique(base.protected + request.protected),
        unprotected=tuple(p for p in base.unprotected if p in request.unprotected),
        notebook_ceiling=base.notebook_ceiling,
        notes=_unique(base.notes + request.notes),
    )


def tighten(policy: Policy, layer: Layer) -> Policy:
    """Apply an untrusted layer: the result is never wider than ``policy``.

    A key that the layer leaves out constrains nothing; a key it sets is
    intersected with what ``policy`` has.  What the layer asked for and did
    not get is recorded in ``notes``.
    """
    net, fs = policy.network, policy.filesystem
    request = Policy(
        network=NetworkPolicy(
            allowed=net.allowed
            if layer.allowed_domains is None
            else layer.allowed_domains,
            denied=layer.denied_domains or (),
            denied_resolved=layer.denied_resolved or (),
            allow_local_binding=_pick(
                layer.allow_local_binding, net.allow_local_binding
            ),
            allow_all_unix_sockets=_pick(
                layer.allow_all_unix_sockets, net.allow_all_unix_sockets
            ),
            sources=tuple((p.text, layer.source) for p in layer.allowed_domains or ())
            + tuple((p.text, layer.source) for p in layer.denied_domains or ()),
        ),
        filesystem=FilesystemPolicy(
            deny_read=layer.deny_read or (),
            allow_read=layer.allow_read or (),
            allow_write=fs.allow_write
            if layer.allow_write is None
            else layer.allow_write,
            deny_write=layer.deny_write or (),
            sources=_path_sources(layer),
        ),
        env_allow=policy.env_allow if layer.env_allow is None else layer.env_allow,
        run_without_seccomp=policy.run_without_seccomp,
        allow_active_output=policy.allow_active_output,
        unprotected=policy.unprotected,
    )
    result = intersect(policy, request)
    return replace(
        result, notes=result.notes + layer.warnings + _refused(policy, layer)
    )


def _refused(policy: Policy, layer: Layer) -> tuple[str, ...]:
    """Plain-words notes for what an untrusted layer asked and did not get."""
    notes: list[str] = []
    for pattern in layer.allowed_domains or ():
        if not any(
            intersect_patterns(pattern, a) == pattern for a in policy.network.allowed
        ):
            notes.append(
                f"{layer.source} asks to reach {pattern.text!r}, which your "
                "settings do not allow; it was not granted."
            )
    for path in layer.allow_write or ():
        if not policy.filesystem.writable(path):
            notes.append(
                f"{layer.source} asks to write {path}, which your settings do "
                "not allow; it was not granted."
            )
    for path in layer.allow_read or ():
        if not policy.filesystem.readable(path):
            notes.append(
                f"{layer.source} asks to read {path}, which your settings deny; "
                "it was not granted."
            )
    return tuple(notes)


def resolve(
    context: Context,
    user: Sequence[Layer] = (),
    untrusted: Sequence[Layer] = (),
) -> Policy:
    """Defaults, widened by the user's layers, tightened by untrusted ones."""
    policy = default_policy(context)
    for layer in user:
        policy = widen(policy, layer)
    for layer in untrusted:
        policy = tighten(policy, layer)
    return policy


def with_options(
    policy: Policy,
    *,
    allow: Sequence[HostPattern] = (),
    deny: Sequence[HostPattern] = (),
    no_network: bool = False,
    write: Sequence[str] = (),
    deny_write: Sequence[str] = (),
    deny_read: Sequence[str] = (),
    allow_read: Sequence[str] = (),
    source: str = "command line",
    home: str | None = None,
) -> Policy:
    """Apply the trusted command-line options of ``srt-kernel run``.

    With ``home`` given, a ``write`` path that holds the whole home folder
    gets a warning note (:func:`broad_write_notes`).
    """
    warnings = (
        ()
        if home is None
        else broad_write_notes(write, home=home, field="--write", source=source)
    )
    layer = Layer(
        source=source,
        warnings=tuple(warnings),
        allowed_domains=tuple(allow),
        denied_domains=tuple(deny),
        allow_write=tuple(write),
        deny_write=tuple(deny_write),
        deny_read=tuple(deny_read),
        allow_read=tuple(allow_read),
    )
    policy = widen(policy, layer)
    if no_network:
        policy = replace(
            policy, network=replace(policy.network, allowed=(), sources=())
        )
    return policy


def missing_write_notes(policy: Policy, missing: Sequence[str]) -> list[str]:
    """One note per writable folder in ``missing`` (gathered by the caller).

    A folder that does not exist is no writable folder: the sandbox cannot
    create it (its parent is read-only there), and it is never created for
    the user, since a notebook's metadata, which is untrusted, names such
    folders too.  The note names the folder, where the rule came from, and
    the fix.
    """
    origin = {
        p: src for p, rule, src in policy.filesystem.sources if rule == "allowWrite"
    }
    return [
        f"allowWrite {path} (from {origin.get(path, 'combined layers')}) does not "
        "exist, so nothing can be written there: the sandbox cannot create it. "
        f"Create it first (mkdir -p {path}), then start again (for a notebook, "
        "restart its kernel)."
        for path in missing
    ]


# --------------------------------------------------------------------------
# Display


def describe(policy: Policy) -> str:
    """A plain-text account of the policy and where each part came from."""
    lines: list[str] = []
    net = policy.network
    origin = dict(net.sources)
    lines.append("Network:")
    if not net.allowed:
        lines.append("  no network (no allowed domains)")
    for pattern in net.allowed:
        came = origin.get(pattern.text, "combined layers")
        lines.append(f"  allow  {pattern.text:<32} from {came}")
    for pattern in net.denied:
        came = origin.get(pattern.text, "combined layers")
        lines.append(f"  deny   {pattern.text:<32} from {came}")
    for network in net.denied_resolved:
        lines.append(f"  deny resolved address {network}")

    fs = policy.filesystem
    where = {(p, rule): src for p, rule, src in fs.sources}
    lines.append("Files (everything else: read-only):")
    for rule, paths in (
        ("allowWrite", fs.allow_write),
        ("denyWrite", fs.deny_write),
        ("denyRead", fs.deny_read),
        ("allowRead", fs.allow_read),
    ):
        for path in paths:
            origin_of = where.get((path, rule), "combined layers")
            lines.append(f"  {rule:<10} {path:<40} from {origin_of}")
    what = "protected names in writable folders (.bashrc, .git/hooks, ...)"
    if policy.protected:
        what = (
            f"{len(policy.protected)} protected paths (config, start-up and "
            f"kernelspec folders) and the {what}"
        )
    else:
        what = what.capitalize()
    but = ", except:" if policy.unprotected else ""
    lines.append(f"  {what} are never writable{but}")
    for path in policy.unprotected:
        effect = "" if fs.writable(path) else " (no effect: not in a writable folder)"
        lines.append(
            f"  {'writable':<10} {path:<40} from your settings "
            f"(dangerouslyAllowWriteToProtectedPaths){effect}"
        )
    lines.append(
        "Environment: " + ", ".join(BASE_ENV_ALLOW[:4] + policy.env_allow) + ", ..."
    )
    if policy.run_without_seccomp:
        lines.append("seccomp: may run without it (dangerouslyRunWithoutSeccomp)")
    for note in policy.notes:
        lines.append(f"Note: {note}")
    return "\n".join(lines)
