"""The policy model, without any IO: parsing, errors, layering, tightening."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srt_kernel import policy as pol
from srt_kernel.errors import PolicyError, SettingsFileError
from srt_kernel.locations import read_settings_file, settings_hint

CTX = pol.Context(home="/home/u", base_dir="/home/u/proj")


def parse(data: object, trusted: bool = True) -> pol.Layer:
    return pol.parse_layer(data, source="settings.json", context=CTX, trusted=trusted)


# -- bad input: the message names the field, the value and the fix -----------

BAD = [
    # a typo must not silently change anything
    (
        {"network": {"allowedDomain": ["a.example"]}},
        "network.allowedDomain",
        "unknown setting",
    ),
    ({"filesytem": {}}, "filesytem", "unknown setting"),
    # wildcards in the wrong place
    (
        {"network": {"allowedDomains": ["*example.com"]}},
        "*example.com",
        "network.allowedDomains",
    ),
    ({"network": {"allowedDomains": ["*.com"]}}, "*.com", "network.allowedDomains"),
    ({"network": {"allowedDomains": ["a.*.com"]}}, "a.*.com", "network.allowedDomains"),
    # scheme or path in a domain
    (
        {"network": {"allowedDomains": ["https://a.example"]}},
        "https://a.example",
        "scheme",
    ),
    ({"network": {"allowedDomains": ["a.example/path"]}}, "a.example/path", "path"),
    # a loopback literal without a port
    ({"network": {"allowedDomains": ["127.0.0.1"]}}, "127.0.0.1", "127.0.0.1:8888"),
    ({"network": {"allowedDomains": ["localhost"]}}, "localhost", "port"),
    # types
    ({"network": {"allowedDomains": "a.example"}}, "a.example", "must be a list"),
    ({"network": {"allowLocalBinding": "yes"}}, "yes", "true or false"),
    ({"filesystem": {"denyRead": [7]}}, "7", "must be strings"),
    # paths
    ({"filesystem": {"allowWrite": [""]}}, "filesystem.allowWrite", "empty path"),
    ({"filesystem": {"denyRead": ["~bob/.ssh"]}}, "~bob/.ssh", "another user's home"),
    ({"filesystem": {"denyRead": ["src/**/*.key"]}}, "src/**/*.key", "glob"),
    (
        {"network": {"deniedResolvedAddresses": ["10.0.0.0/33"]}},
        "10.0.0.0/33",
        "not an IP",
    ),
    ({"environment": {"allow": ["NOT-A-NAME"]}}, "NOT-A-NAME", "variable name"),
    # a key that would weaken the sandbox
    ({"enableWeakerNestedSandbox": True}, "enableWeakerNestedSandbox", "refused"),
]


@pytest.mark.parametrize(("data", "named", "fix"), BAD)
def test_bad_settings_are_refused_with_a_clear_message(
    data: object, named: str, fix: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith("settings.json: ")
    assert named in message
    assert fix in message


def test_relative_path_without_a_folder_is_refused() -> None:
    ctx = pol.Context(home="/home/u", base_dir="")
    with pytest.raises(PolicyError, match="relative, and there is no folder"):
        pol.parse_layer(
            {"filesystem": {"allowWrite": ["out"]}},
            source="s",
            context=ctx,
            trusted=True,
        )


def test_untrusted_layers_cannot_set_trusted_keys() -> None:
    for data in (
        {"network": {"hostAddresses": {"a.test": "127.0.0.1"}}},
        {"dangerouslyRunWithoutSeccomp": True},
        {"output": {"allowActiveContent": True}},
    ):
        with pytest.raises(PolicyError, match="only be set in your own settings"):
            parse(data, trusted=False)


def test_srt_keys_we_do_not_implement_warn() -> None:
    layer = parse(
        {
            "network": {
                "allowedDomains": [],
                "allowUnixSockets": ["/var/run/docker.sock"],
            },
            "ignoreViolations": {"*": ["/usr/bin"]},
            "enableWeakerNestedSandbox": False,
        }
    )
    assert any("network.allowUnixSockets is not used" in w for w in layer.warnings)
    assert any("ignoreViolations is not used" in w for w in layer.warnings)


def test_srt_proxy_port_keys_warn_with_the_ports_we_use() -> None:
    from srt_kernel.sandbox.plan import HTTP_PORT, SOCKS_PORT

    layer = parse({"network": {"httpProxyPort": 8080, "socksProxyPort": 1081}})
    why = (
        f"srt-kernel's proxy always listens on 127.0.0.1:{HTTP_PORT} (HTTP) and "
        f"127.0.0.1:{SOCKS_PORT} (SOCKS5) of the sandbox's own loopback, and the "
        "proxy variables point there."
    )
    assert layer.warnings == (
        f"settings.json: network.httpProxyPort is not used: {why}",
        f"settings.json: network.socksProxyPort is not used: {why}",
    )


def test_describe_names_the_protected_paths_the_user_made_writable() -> None:
    settings = parse(
        {"dangerouslyAllowWriteToProtectedPaths": [".bashrc", "/elsewhere/.vscode"]}
    )
    context = pol.Context(
        home="/home/u", base_dir="/home/u/proj", protected=("/home/u/.jupyter",)
    )
    policy = pol.resolve(context, [settings])
    lines = pol.describe(policy).splitlines()
    start = next(i for i, line in enumerate(lines) if "protected paths" in line)
    assert lines[start : start + 3] == [
        "  1 protected paths (config, start-up and kernelspec folders) and the "
        "protected names in writable folders (.bashrc, .git/hooks, ...) are never "
        "writable, except:",
        "  writable   /home/u/proj/.bashrc                     from your settings "
        "(dangerouslyAllowWriteToProtectedPaths)",
        "  writable   /elsewhere/.vscode                       from your settings "
        "(dangerouslyAllowWriteToProtectedPaths) (no effect: not in a writable "
        "folder)",
    ]
    plain = pol.describe(pol.resolve(CTX, [])).splitlines()
    assert not any(line.startswith("  writable ") for line in plain)
    assert (
        "  Protected names in writable folders (.bashrc, .git/hooks, ...) are never "
        "writable"
    ) in plain


def test_srt_settings_file_loads() -> None:
    srt = {
        "network": {
            "allowedDomains": [
                "github.com",
                "*.github.com",
                "npmjs.org",
                "*.npmjs.org",
            ],
            "deniedDomains": ["malicious.example"],
            "allowLocalBinding": False,
        },
        "filesystem": {
            "denyRead": ["~/.ssh"],
            "allowWrite": [".", "src/", "/tmp"],
            "denyWrite": [".env", "config/production.json"],
        },
    }
    policy = pol.resolve(CTX, [parse(srt)])
    assert [p.text for p in policy.network.allowed] == [
        "github.com",
        "*.github.com",
        "npmjs.org",
        "*.npmjs.org",
    ]
    assert policy.filesystem.writable("/home/u/proj/src/a.py")
    assert not policy.filesystem.writable("/home/u/proj/.env")
    assert not policy.filesystem.readable("/home/u/.ssh/id_rsa")


# -- settings files ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
    ],
)
def test_bad_settings_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(PolicyError, match=message):
        read_settings_file(path, CTX)


def test_settings_errors_mention_settings_option_only_when_given(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(SettingsFileError) as named:
        read_settings_file(path, CTX)
    assert str(named.value) == (
        f"{path}: the settings file is not valid JSON (line 1, column 2: "
        "Expecting property name enclosed in double quotes); fix it, or remove "
        "--settings."
    )
    with pytest.raises(SettingsFileError) as found:
        read_settings_file(path, CTX, named=False)
    assert str(found.value).endswith("double quotes); fix it.")
    path.write_text(" ")
    with pytest.raises(SettingsFileError) as empty:
        read_settings_file(path, CTX, named=False)
    assert str(empty.value) == (
        f"{path}: the settings file is empty; write {{}} for no settings, or "
        "delete the file to use the defaults."
    )


def test_settings_hint_names_the_file_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    # none yet: the one to create
    assert settings_hint() == "~/.config/srt-kernel/settings.json"
    (tmp_path / ".srt-settings.json").write_text("{}")
    assert settings_hint() == "~/.srt-settings.json"
    named = tmp_path / "elsewhere" / "mine.json"
    assert settings_hint(str(named)) == "~/elsewhere/mine.json"
    assert settings_hint("/etc/srt.json") == "/etc/srt.json"
    ours = tmp_path / ".config" / "srt-kernel" / "settings.json"
    ours.parent.mkdir(parents=True)
    ours.write_text("{}")
    assert settings_hint() == "~/.config/srt-kernel/settings.json"


def test_missing_settings_file_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError, match="does not exist"):
        read_settings_file(tmp_path / "nope.json", CTX)


def test_cli_reports_bad_settings_and_runs_nothing(tmp_path: Path) -> None:
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps({"network": {"allowedDomains": ["*.com"]}}))
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "srt_kernel.cli",
            "run",
            "--settings",
            str(settings),
            "--",
            "touch",
            str(marker),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "srt-kernel: error:" in proc.stderr and "'*.com'" in proc.stderr
    assert not marker.exists()


# -- defaults and layering ----------------------------------------------------


def test_defaults_are_secure() -> None:
    policy = pol.default_policy(CTX)
    assert not policy.network.enabled
    assert policy.filesystem.allow_write == ("/home/u/proj",)
    for secret in (
        "/home/u/.ssh/id_rsa",
        "/home/u/.aws/credentials",
        "/home/u/.netrc",
        "/home/u/.config/gh/hosts.yml",
        "/home/u/.kube/config",
    ):
        assert not policy.filesystem.readable(secret), secret
    assert policy.filesystem.readable("/home/u/proj/data.csv")
    assert not policy.filesystem.writable("/home/u/notes.txt")


def test_user_settings_add_to_defaults() -> None:
    policy = pol.resolve(
        CTX,
        [parse({"filesystem": {"allowWrite": ["/data"], "denyRead": ["~/private"]}})],
    )
    assert policy.filesystem.writable("/home/u/proj/x")  # the default stays
    assert policy.filesystem.writable("/data/x")
    assert not policy.filesystem.readable("/home/u/private/a")
    assert not policy.filesystem.readable("/home/u/.ssh/id_rsa")


def test_allow_read_reopens_and_deepest_rule_wins() -> None:
    fs = pol.FilesystemPolicy(
        deny_read=("/a", "/a/b/c"), allow_read=("/a/b",), allow_write=("/",)
    )
    assert not fs.readable("/a/x")
    assert fs.readable("/a/b/x")
    assert not fs.readable("/a/b/c/x")
    assert not fs.writable("/a/x")  # unreadable is unwritable


def test_metadata_tightens_and_reports_what_it_did_not_get() -> None:
    base = pol.resolve(
        CTX, [parse({"network": {"allowedDomains": ["*.example.com", "pypi.org"]}})]
    )
    meta = parse(
        {
            "network": {"allowedDomains": ["api.example.com", "evil.test"]},
            "filesystem": {"allowWrite": ["./out", "/etc"]},
        },
        trusted=False,
    )
    result = pol.tighten(base, meta)
    assert [p.text for p in result.network.allowed] == ["api.example.com"]
    assert result.filesystem.writable("/home/u/proj/out/a")
    assert not result.filesystem.writable("/home/u/proj/b")
    assert not result.filesystem.writable("/etc/passwd")
    assert any("evil.test" in n for n in result.notes)
    assert any("/etc" in n for n in result.notes)


def test_absent_keys_constrain_nothing() -> None:
    base = pol.resolve(CTX, [parse({"network": {"allowedDomains": ["pypi.org"]}})])
    result = pol.tighten(
        base, parse({"filesystem": {"denyRead": ["./secret"]}}, trusted=False)
    )
    assert [p.text for p in result.network.allowed] == ["pypi.org"]


# -- tighten never widens: a property over random layers ----------------------

DOMAINS = [
    "a.example",
    "*.a.example",
    "b.a.example",
    "c.test",
    "*.c.test",
    "a.example:443",
]
PATHS = [
    "/home/u/proj",
    "/home/u/proj/out",
    "/home/u",
    "/data",
    "/data/x",
    "/home/u/.ssh",
]
PROBE_HOSTS = [
    "a.example",
    "b.a.example",
    "x.b.a.example",
    "c.test",
    "d.c.test",
    "other.org",
]
PROBE_PATHS = [
    "/home/u/proj/f",
    "/home/u/proj/out/f",
    "/home/u/f",
    "/data/x/f",
    "/data/f",
    "/home/u/.ssh/k",
    "/etc/f",
]

layer_docs = st.fixed_dictionaries(
    {},
    optional={
        "network": st.fixed_dictionaries(
            {},
            optional={
                "allowedDomains": st.lists(st.sampled_from(DOMAINS), max_size=4),
                "deniedDomains": st.lists(st.sampled_from(DOMAINS), max_size=2),
            },
        ),
        "filesystem": st.fixed_dictionaries(
            {},
            optional={
                "allowWrite": st.lists(st.sampled_from(PATHS), max_size=3),
                "denyWrite": st.lists(st.sampled_from(PATHS), max_size=2),
                "denyRead": st.lists(st.sampled_from(PATHS), max_size=2),
                "allowRead": st.lists(st.sampled_from(PATHS), max_size=2),
            },
        ),
    },
)


def _reach(policy: pol.Policy, host: str, port: int) -> bool:
    from srt_kernel.hosts import parse_host

    h = parse_host(host)
    if any(p.matches(h, port) for p in policy.network.denied):
        return False
    return any(p.matches(h, port) for p in policy.network.allowed)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(user=layer_docs, request=layer_docs)
def test_tighten_is_never_wider_than_either_side(user: dict, request: dict) -> None:  # type: ignore[type-arg]
    from srt_kernel.hosts import parse_host

    base = pol.resolve(CTX, [parse(user)])
    layer = parse(request, trusted=False)
    result = pol.tighten(base, layer)
    asked = pol.FilesystemPolicy(
        deny_read=layer.deny_read or (),
        allow_read=layer.allow_read or (),
        allow_write=layer.allow_write if layer.allow_write is not None else ("/",),
        deny_write=layer.deny_write or (),
    )
    for host in PROBE_HOSTS:
        for port in (80, 443):
            if _reach(result, host, port):
                assert _reach(base, host, port)
                if layer.allowed_domains is not None:
                    h = parse_host(host)
                    assert any(p.matches(h, port) for p in layer.allowed_domains)
                assert not any(
                    p.matches(parse_host(host), port)
                    for p in layer.denied_domains or ()
                )
    for path in PROBE_PATHS:
        if result.filesystem.readable(path):
            assert base.filesystem.readable(path) and asked.readable(path)
        if result.filesystem.writable(path):
            assert base.filesystem.writable(path) and asked.writable(path)
