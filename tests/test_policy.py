"""The policy model, without any IO: parsing, errors, layering, tightening."""

from __future__ import annotations

import json
import os
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


# A path entry that a user would not mean literally is refused, with the fix.
NOT_MEANT = [
    # environment variables are not expanded
    (
        "$HOME/out",
        "filesystem.allowWrite entry '$HOME/out' contains '$': environment "
        "variables are not expanded, so it would name a folder called "
        "'$HOME/out' literally; write '~/out' instead.",
    ),
    (
        "${HOME}",
        "filesystem.allowWrite entry '${HOME}' contains '$': environment variables "
        "are not expanded, so it would name a folder called '${HOME}' literally; "
        "write '~' instead.",
    ),
    (
        "$DATA/out",
        "filesystem.allowWrite entry '$DATA/out' contains '$': environment "
        "variables are not expanded, so it would name a folder called "
        "'$DATA/out' literally; write ~/... or an absolute path instead.",
    ),
    # white space around it would be part of the name
    (
        " ~/out",
        "filesystem.allowWrite entry ' ~/out' starts or ends with white space, "
        "which would be part of the folder's name; write '~/out'.",
    ),
    (
        "/data/out\n",
        "filesystem.allowWrite entry '/data/out\\n' starts or ends with white "
        "space, which would be part of the folder's name; write '/data/out'.",
    ),
    (
        "/data/a\tb",
        "filesystem.allowWrite entry '/data/a\\tb' contains a control character "
        "(a newline or tab, say); remove it.",
    ),
    # a URL, a Windows path
    (
        "file:///data/out",
        "filesystem.allowWrite entry 'file:///data/out' is a URL; write the path "
        "itself, such as /data/out or ~/out.",
    ),
    (
        "C:\\data\\out",
        "filesystem.allowWrite entry 'C:\\\\data\\\\out' contains a backslash, "
        "which on Linux is part of a name, not a separator; separate folders "
        "with '/'.",
    ),
]


@pytest.mark.parametrize(("entry", "message"), NOT_MEANT)
def test_paths_a_user_would_not_mean_are_refused(entry: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse({"filesystem": {"allowWrite": [entry]}})
    assert str(info.value) == f"settings.json: {message}"
    assert info.value.field == "filesystem.allowWrite"
    assert info.value.value == entry


def test_paths_with_ordinary_odd_characters_still_load() -> None:
    layer = parse({"filesystem": {"allowWrite": ["out dir/a%20b", "~/x:y", "50%"]}})
    assert layer.allow_write == (
        "/home/u/proj/out dir/a%20b",
        "/home/u/x:y",
        "/home/u/proj/50%",
    )


# An unknown key suggests the known one it is closest to, if any.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"netwrok": {}},
            "unknown setting 'netwrok' (did you mean 'network'?); a misspelt key "
            "would silently change nothing, so it is refused. Known keys here: "
            "allowPty, dangerouslyAllowWriteToProtectedPaths, "
            "dangerouslyRunWithoutSeccomp, enableWeakerNestedSandbox, environment, "
            "filesystem, ignoreViolations, mandatoryDenySearchDepth, network, "
            "notebookCeiling, output, ripgrep.",
        ),
        (
            {"filesystem": {"AllowWrite": []}},
            "unknown setting 'filesystem.AllowWrite' (did you mean "
            "'filesystem.allowWrite'?); a misspelt key would silently change "
            "nothing, so it is refused. Known keys here: allowRead, allowWrite, "
            "denyRead, denyWrite.",
        ),
        (
            {"filesystem": {"readOnly": []}},
            "unknown setting 'filesystem.readOnly'; a misspelt key would silently "
            "change nothing, so it is refused. Known keys here: allowRead, "
            "allowWrite, denyRead, denyWrite.",
        ),
    ],
)
def test_unknown_key_suggests_the_close_one(data: object, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(data)
    assert str(info.value) == f"settings.json: {expected}"


# The home folder, or a folder holding it, made writable by the user: accepted,
# with a warning that says what it exposes.
def test_allow_write_of_the_whole_home_warns() -> None:
    layer = parse({"filesystem": {"allowWrite": ["~", "/", "/home", "~/proj/out"]}})
    rest = (
        " writable from the sandbox. The protected paths (shell start-up files, "
        ".git/hooks, Jupyter, IPython and srt-kernel settings, kernelspecs, ...) "
        "stay protected and read-denied credentials stay unreadable, but "
        "everything else there can be changed or deleted by the code you run. "
        "To allow one project, name its folder instead."
    )
    assert layer.warnings == (
        "settings.json: filesystem.allowWrite /home/u makes your whole home "
        "folder (/home/u)" + rest,
        "settings.json: filesystem.allowWrite / makes every file on this machine "
        "that you can write, /home/u included," + rest,
        "settings.json: filesystem.allowWrite /home makes everything below /home, "
        "your home folder /home/u included," + rest,
    )
    policy = pol.resolve(CTX, [layer])
    assert policy.notes == layer.warnings
    assert policy.filesystem.writable("/home/u/notes.txt")  # still accepted
    # metadata can only narrow: no warning there
    assert parse({"filesystem": {"allowWrite": ["~"]}}, trusted=False).warnings == ()
    # the command line's --write
    options = pol.with_options(
        pol.resolve(CTX), write=["/home/u"], home="/home/u", source="command line"
    )
    assert options.notes == (
        "command line: --write /home/u makes your whole home folder (/home/u)" + rest,
    )


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


# A key given twice would be last-wins in JSON: a typo, or a second entry
# that hides the first from whoever reads the file.
def test_a_key_given_twice_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        '{"network": {"allowedDomains": ["a.org"], "allowedDomains": ["b.org"]}}'
    )
    with pytest.raises(PolicyError) as info:
        read_settings_file(path, CTX)
    assert str(info.value) == (
        f"{path}: the key 'network.allowedDomains' is given twice; JSON keeps "
        "only the last one and would silently drop the other, so it is refused. "
        "Keep one 'allowedDomains' and put all its entries there."
    )
    assert info.value.field == "network.allowedDomains"

    for text, key in (
        ('{"network": {}, "network": {}}', "'network'"),
        (
            '{"notebookCeiling": {"filesystem": {"allowWrite": [], "allowWrite": []}}}',
            "'notebookCeiling.filesystem.allowWrite'",
        ),
        (
            '{"network": {"hostAddresses": {"db.test": "10.0.0.1", '
            '"db.test": "10.0.0.2"}}}',
            "'network.hostAddresses.db.test'",
        ),
    ):
        path.write_text(text)
        with pytest.raises(PolicyError, match=f"the key {key} is given twice"):
            read_settings_file(path, CTX)


def test_a_key_given_twice_in_notebook_metadata_is_refused(tmp_path: Path) -> None:
    from srt_kernel.kernel.notebook import notebook_policy, read_metadata

    notebook = tmp_path / "n.ipynb"
    repeated = (
        '{"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": {"sandbox": '
        '{"network": {"allowedDomains": ["a.org"], "allowedDomains": ["b.org"]}}}}'
    )
    notebook.write_text(repeated)
    with pytest.raises(PolicyError) as info:
        read_metadata(notebook)
    message = (
        f"{notebook}: the key 'metadata.sandbox.network.allowedDomains' is given "
        "twice; JSON keeps only the last one and would silently drop the other, "
        "so it is refused. Keep one 'allowedDomains' and put all its entries there."
    )
    assert str(info.value) == message

    # the kernel runs such a notebook closed: no network, no writes
    base = pol.resolve(CTX, [parse({"network": {"allowedDomains": ["b.org"]}})])
    state = notebook_policy(base, notebook, CTX)
    assert state.problem == (
        f"the notebook's sandbox metadata cannot be used ({message}); until it is "
        "fixed, cells run with no network and no writes."
    )
    assert not state.policy.network.enabled
    assert state.policy.filesystem.allow_write == ()

    # twice on the way to it, too
    for text, key in (
        (
            '{"metadata": {"sandbox": {"network": {"allowedDomains": []}}}, '
            '"metadata": {}}',
            "'metadata'",
        ),
        ('{"metadata": {"sandbox": {}, "sandbox": {}}}', "'metadata.sandbox'"),
    ):
        notebook.write_text(text)
        with pytest.raises(PolicyError, match=f"the key {key} is given twice"):
            read_metadata(notebook)

    # a key given twice elsewhere in the notebook (an output) is not ours
    notebook.write_text(
        '{"cells": [{"metadata": {"a": 1, "a": 2}}], "metadata": {"sandbox": '
        '{"network": {"allowedDomains": ["a.org"]}}}}'
    )
    assert read_metadata(notebook) == {"network": {"allowedDomains": ["a.org"]}}


# Both our settings file and srt's: ours is read, and a note says srt's is not.
def test_both_settings_files_give_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srt_kernel.locations import user_layers

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    srt = tmp_path / ".srt-settings.json"
    srt.write_text('{"network": {"allowedDomains": ["srt.test"]}}')
    (only_srt,) = user_layers(None, CTX)
    assert only_srt.warnings == ()

    ours = tmp_path / ".config" / "srt-kernel" / "settings.json"
    ours.parent.mkdir(parents=True)
    ours.write_text('{"network": {"allowedDomains": ["ours.test"]}}')
    (layer,) = user_layers(None, CTX)
    note = (
        f"{ours}: used as your settings; {srt} exists too and is not read "
        "(srt-kernel reads one settings file, never a mix). Copy what you need "
        "from it into the first, or name the one to use with --settings."
    )
    assert layer.warnings == (note,)
    assert [p.text for p in layer.allowed_domains or ()] == ["ours.test"]
    # a file named with --settings is the user's choice: nothing to say
    (named,) = user_layers(str(ours), CTX)
    assert named.warnings == ()

    shown = cli(["policy"], env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"Note: {note}" in shown.stdout.splitlines()


def cli(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("XDG_CONFIG_HOME", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        cwd=cwd,
    )


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


# --no-network with --allow is a contradiction: a usage error, nothing runs.
def test_no_network_with_allow_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = cli(
        ["run", "--no-network", "--allow", "a.test", "--", "touch", str(marker)],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "srt-kernel: error: command line: --no-network and --allow a.test "
        "contradict each other; give --no-network for no network at all, or "
        "--allow for the hosts to reach, not both.\n"
    )
    assert not marker.exists()


# An unknown option is reported with the usage of the command it was given to.
def test_unknown_option_shows_the_commands_usage(tmp_path: Path) -> None:
    proc = cli(["run", "--bogus", "--", "true"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: srt-kernel run [-h] [--settings FILE]")
    assert proc.stderr.endswith(
        "srt-kernel run: error: unrecognized arguments: --bogus\n"
    )
    policy = cli(["policy", "--bogus"], cwd=tmp_path)
    assert policy.returncode == 2
    assert policy.stderr.startswith("usage: srt-kernel policy [-h]")
    assert policy.stderr.endswith(
        "srt-kernel policy: error: unrecognized arguments: --bogus\n"
    )


# `srt-kernel policy --write ~` shows the warning note.
def test_policy_shows_the_whole_home_warning(tmp_path: Path) -> None:
    proc = cli(["policy", "--write", "~"], env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"Note: command line: --write {tmp_path} makes your whole home folder "
        f"({tmp_path}) writable from the sandbox."
    ) in proc.stdout


# `srt-kernel policy NOTEBOOK` says when the metadata cannot be used, and its
# exit status says so too (2: a mistake in what it was given, as trust).
def test_policy_of_a_notebook_with_unusable_metadata_fails(tmp_path: Path) -> None:
    notebook = tmp_path / "n.ipynb"
    notebook.write_text(
        json.dumps({"metadata": {"sandbox": {"network": {"allowedDomain": []}}}})
    )
    proc = cli(["policy", str(notebook)], env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        "Problem: the notebook's sandbox metadata cannot be used (notebook "
        "metadata (n.ipynb): unknown setting 'network.allowedDomain' (did you mean "
        "'network.allowedDomains'?)"
    ) in proc.stdout
    notebook.write_text(
        json.dumps({"metadata": {"sandbox": {"network": {"allowedDomains": []}}}})
    )
    fine = cli(["policy", str(notebook)], env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "Problem:" not in fine.stdout


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
        "/home/u/.docker/config.json",
        "/home/u/.git-credentials",
        "/home/u/.pypirc",
        "/home/u/.config/gcloud/credentials.db",
        # coding assistants: the token, and transcripts that quote secrets
        "/home/u/.claude.json",
        "/home/u/.claude/.credentials.json",
        "/home/u/.claude/projects/-home-u-proj/session.jsonl",
        "/home/u/.codex/auth.json",
        "/home/u/.gemini/oauth_creds.json",
        "/home/u/.config/github-copilot/apps.json",
        # build tools, databases, more cloud command lines
        "/home/u/.m2/settings.xml",
        "/home/u/.m2/settings-security.xml",
        "/home/u/.gradle/gradle.properties",
        "/home/u/.pgpass",
        "/home/u/.my.cnf",
        "/home/u/.databrickscfg",
        "/home/u/.oci/config",
        "/home/u/.config/doctl/config.yaml",
        "/home/u/.config/glab-cli/config.yml",
        "/home/u/.terraformrc",
    ):
        assert not policy.filesystem.readable(secret), secret
    assert policy.filesystem.readable("/home/u/proj/data.csv")
    # only the credentials of a build tool, not its caches
    assert policy.filesystem.readable("/home/u/.m2/repository/a.jar")
    assert not policy.filesystem.writable("/home/u/notes.txt")


# The working folder and Jupyter's folders are the machine's own paths, taken
# as they are: characters refused in settings entries are no mistake there.
def test_paths_of_the_machine_are_taken_literally() -> None:
    odd = "/w/data[1] $x\\y "
    context = pol.Context(
        home="/home/u", base_dir=odd, deny_read=(f"{odd}/run",), protected=(odd,)
    )
    policy = pol.default_policy(context)
    assert policy.filesystem.allow_write == (odd,)
    assert f"{odd}/run" in policy.filesystem.deny_read
    assert policy.protected == (odd,)


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


def test_the_environments_ipython_configuration_is_protected() -> None:
    # IPython runs the configuration it finds there in every session; an
    # environment inside a project must not let a cell write it
    import sys

    from srt_kernel import locations

    protected = locations.gather_context().protected
    assert os.path.join(sys.prefix, "etc", "ipython") in protected
