"""Files: the F cases of the hostile-behaviour list, through ``srt-kernel run``.

Each test asserts the exact errno the sandbox gives and that the host file
is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROBE, SandboxRunner

pytestmark = pytest.mark.bwrap


def probe(
    sbx: SandboxRunner, op: str, path: Path | str, *extra: str, **kw: object
) -> str:
    result = sbx.run(
        [sys.executable, "-c", PROBE, op, str(path), *extra],
        **kw,  # type: ignore[arg-type]
    )
    assert result.status == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# F1: writes outside the allowed paths fail and leave the target unchanged.
def test_write_outside_fails_with_erofs(sbx: SandboxRunner) -> None:
    target = sbx.outside / "file.txt"
    assert probe(sbx, "write", target) == "EROFS"
    assert probe(sbx, "create", sbx.outside / "new.txt") == "EROFS"
    assert target.read_text() == "outside\n"
    assert not (sbx.outside / "new.txt").exists()


def test_write_inside_working_folder_succeeds(sbx: SandboxRunner) -> None:
    assert probe(sbx, "write", sbx.project / "data.txt") == "ok"
    assert probe(sbx, "create", sbx.project / "new.txt") == "ok"
    assert (sbx.project / "data.txt").read_text() == "data\nsandbox"
    assert (sbx.project / "new.txt").read_text() == "sandbox"


def test_write_option_adds_a_writable_root(sbx: SandboxRunner) -> None:
    assert (
        probe(sbx, "create", sbx.outside / "n", options=["--write", str(sbx.outside)])
        == "ok"
    )


# F2: a read-denied file cannot be read; a read-denied folder is empty and
# cannot be written into.
def test_read_denied_file_gives_eacces(sbx: SandboxRunner) -> None:
    secret = sbx.project / "secret.txt"
    secret.write_text("s3cret")
    settings = {"filesystem": {"denyRead": [str(secret)]}}
    assert probe(sbx, "read", secret, settings=settings) == "EACCES"
    assert probe(sbx, "write", secret, settings=settings) in {"EACCES", "EROFS"}
    assert secret.read_text() == "s3cret"


def test_read_denied_folder_is_empty_and_read_only(sbx: SandboxRunner) -> None:
    private = sbx.project / "private"
    private.mkdir()
    (private / "a.txt").write_text("a")
    settings = {"filesystem": {"denyRead": ["./private"]}}
    assert probe(sbx, "list", private, settings=settings).startswith("<empty>")
    assert probe(sbx, "read", private / "a.txt", settings=settings) == "ENOENT"
    assert probe(sbx, "create", private / "b.txt", settings=settings) == "EROFS"
    assert sorted(os.listdir(private)) == ["a.txt"]


def test_allow_read_reopens_inside_a_denied_folder(sbx: SandboxRunner) -> None:
    private = sbx.project / "private"
    (private / "public").mkdir(parents=True)
    (private / "public" / "ok.txt").write_text("fine")
    (private / "hidden.txt").write_text("no")
    settings = {
        "filesystem": {"denyRead": ["./private"], "allowRead": ["./private/public"]}
    }
    assert probe(sbx, "read", private / "public" / "ok.txt", settings=settings) == "ok"
    assert probe(sbx, "read", private / "hidden.txt", settings=settings) == "ENOENT"


# F3: symlinks do not lead around the rules.
def test_symlink_out_of_writable_root_cannot_be_written(sbx: SandboxRunner) -> None:
    link = sbx.project / "escape"
    link.symlink_to(sbx.outside / "file.txt")
    assert probe(sbx, "write", link) == "EROFS"
    assert (sbx.outside / "file.txt").read_text() == "outside\n"


def test_symlink_to_read_denied_file_cannot_be_read(sbx: SandboxRunner) -> None:
    link = sbx.project / "key"
    link.symlink_to(sbx.home / ".ssh" / "id_ed25519")
    assert probe(sbx, "read", link) == "ENOENT"


def test_deny_rule_on_a_symlinked_path_holds(sbx: SandboxRunner) -> None:
    real = sbx.project / "real"
    real.mkdir()
    (real / "x").write_text("x")
    (sbx.project / "alias").symlink_to(real)
    settings = {"filesystem": {"denyWrite": ["./alias"]}}
    assert probe(sbx, "write", real / "x", settings=settings) == "EROFS"
    assert (real / "x").read_text() == "x"


# F4: a deny-write path that does not exist yet cannot be created.
def test_missing_deny_write_path_cannot_be_created(sbx: SandboxRunner) -> None:
    target = sbx.project / "later" / "file.txt"
    settings = {"filesystem": {"denyWrite": ["./later/file.txt"]}}
    assert probe(sbx, "mkdir", sbx.project / "later", settings=settings) == "EEXIST"
    assert probe(sbx, "create", target, settings=settings) == "EROFS"
    assert not target.exists()
    assert not (sbx.project / "later").exists(), "placeholder left behind"


# F5: protected names in the working folder, a second writable root, and
# three levels down.
PROTECTED = [
    (".bashrc", "write"),
    (".git/hooks/pre-commit", "create"),
    (".git/config", "write"),
    (".vscode/settings.json", "create"),
]


@pytest.mark.parametrize(("name", "op"), PROTECTED)
def test_protected_names_in_working_folder(
    sbx: SandboxRunner, name: str, op: str
) -> None:
    (sbx.project / ".git").mkdir()
    existing = name.startswith(".git/")
    if op == "write" and existing:
        (sbx.project / name).write_text("[core]\n")
    assert probe(sbx, op, sbx.project / name) == "EROFS"
    if op == "write" and existing:
        assert (sbx.project / name).read_text() == "[core]\n"
    else:
        assert not (sbx.project / name).exists()


@pytest.mark.parametrize(("name", "op"), PROTECTED)
def test_protected_names_in_second_root(sbx: SandboxRunner, name: str, op: str) -> None:
    second = sbx.outside
    (second / ".git").mkdir()
    if op == "write" and name.startswith(".git/"):
        (second / name).write_text("[core]\n")
    result = probe(sbx, op, second / name, options=["--write", str(second)])
    assert result == "EROFS"


def test_missing_git_folder_cannot_be_created(sbx: SandboxRunner) -> None:
    # without a repository, .git itself is held empty and read-only
    assert probe(sbx, "mkdir", sbx.project / ".git" / "hooks") == "EROFS"
    assert probe(sbx, "create", sbx.project / ".git" / "config") == "EROFS"
    assert not (sbx.project / ".git").exists(), "placeholder left behind"


def test_existing_protected_names_deep_down(sbx: SandboxRunner) -> None:
    deep = sbx.project / "a" / "b" / "c"
    (deep / ".git" / "hooks").mkdir(parents=True)
    (deep / ".git" / "config").write_text("[core]\n")
    (deep / ".bashrc").write_text("# rc\n")
    assert probe(sbx, "create", deep / ".git" / "hooks" / "pre-commit") == "EROFS"
    assert probe(sbx, "write", deep / ".git" / "config") == "EROFS"
    assert probe(sbx, "write", deep / ".bashrc") == "EROFS"
    assert (deep / ".bashrc").read_text() == "# rc\n"


def test_protected_folder_cannot_be_renamed_away(sbx: SandboxRunner) -> None:
    repo = sbx.project / "sub"
    (repo / ".git" / "hooks").mkdir(parents=True)
    # renaming the parent of a protected folder, then recreating it, is the
    # attack; both steps must fail
    assert probe(sbx, "rename", repo) == "EBUSY"
    assert probe(sbx, "rename", repo / ".git") == "EBUSY"
    assert (repo / ".git" / "hooks").is_dir()


# --write of a folder that does not exist: said, with the fix; not created.
def test_missing_write_folder_is_named_with_its_fix(sbx: SandboxRunner) -> None:
    folder = sbx.outside / "notyet"
    result = sbx.run(
        ["sh", "-c", f"echo a > {folder}/f"], options=["--write", str(folder)]
    )
    assert result.status != 0
    assert result.stderr.splitlines()[0] == (
        f"srt-kernel: note: allowWrite {folder} (from command line) does not exist, "
        "so nothing can be written there: the sandbox cannot create it. Create it "
        f"first (mkdir -p {folder}), then start again (for a notebook, restart its "
        "kernel)."
    )
    assert not folder.exists()
    # one below a writable folder is made inside, and needs no note
    inside = sbx.project / "out" / "deeper"
    made = sbx.run(
        ["sh", "-c", f"mkdir -p {inside} && echo a > {inside}/f"],
        options=["--write", str(inside)],
    )
    assert made.status == 0, made.stderr
    assert "does not exist" not in made.stderr
    assert (inside / "f").read_text() == "a\n"


# A protected name the user made writable in settings is writable and not
# reported; the same name deeper down still is.
def test_unprotected_name_is_writable_and_not_reported(sbx: SandboxRunner) -> None:
    result = sbx.run(
        ["sh", "-c", "echo x >> .bashrc && mkdir sub && echo y > sub/.bashrc"],
        settings={"dangerouslyAllowWriteToProtectedPaths": [".bashrc"]},
    )
    assert result.status == 0, result.stderr
    assert (sbx.project / ".bashrc").read_text() == "x\n"
    deeper = os.path.realpath(sbx.project / "sub" / ".bashrc")
    assert result.stderr == (
        f"srt-kernel: warning: the command created {deeper}, a protected name "
        "that trusted tools read or run; it could not be blocked because it "
        "appeared during the run. Review or delete it.\n"
    )


def test_created_protected_name_is_reported(sbx: SandboxRunner) -> None:
    code = "import os; os.makedirs('x/y/.git/hooks'); open('x/y/.git/hooks/post-checkout','w').write('evil')"
    result = sbx.py(code)
    assert result.status == 0, result.stderr
    assert "x/y/.git" in result.stderr and "protected name" in result.stderr


# F6: config, start-up, kernelspec, runtime and settings files, even when
# their folder is inside a writable root.
def test_jupyter_and_ipython_files_not_writable_even_under_writable_home(
    sbx: SandboxRunner,
) -> None:
    startup = sbx.home / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    kernels = sbx.home / ".local" / "share" / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text("{}")
    settings_dir = sbx.home / ".config" / "srt-kernel"
    settings_dir.mkdir(parents=True)
    opts = ["--write", str(sbx.home)]
    assert probe(sbx, "create", startup / "00-evil.py", options=opts) == "EROFS"
    assert probe(sbx, "write", kernels / "kernel.json", options=opts) == "EROFS"
    assert (
        probe(
            sbx,
            "create",
            sbx.home / ".jupyter" / "jupyter_server_config.py",
            options=opts,
        )
        == "EROFS"
    )
    assert probe(sbx, "create", settings_dir / "settings.json", options=opts) == "EROFS"
    assert probe(sbx, "write", sbx.home / ".bashrc", options=opts) == "EROFS"
    assert (kernels / "kernel.json").read_text() == "{}"
    assert not (startup / "00-evil.py").exists()


# F7: credentials and the Jupyter runtime folder are unreadable by default.
@pytest.mark.parametrize(
    ("rel", "folder"),
    [
        (".ssh/id_ed25519", ".ssh"),
        (".aws/credentials", ".aws"),
        (
            ".local/share/jupyter/runtime/kernel-1.json",
            ".local/share/jupyter/runtime",
        ),
        # the whole folder: transcripts quote whatever the assistant read
        (".claude/.credentials.json", ".claude"),
        (".claude/projects/-home-proj/session.jsonl", ".claude"),
    ],
)
def test_credentials_not_readable(sbx: SandboxRunner, rel: str, folder: str) -> None:
    path = sbx.home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text('{"key": "hmac"}')
    assert probe(sbx, "read", path) == "ENOENT"
    assert probe(sbx, "list", sbx.home / folder).startswith("<empty>")


# Credential files that sit beside ordinary ones: the file alone is denied.
@pytest.mark.parametrize(
    "rel", [".claude.json", ".m2/settings.xml", ".pgpass", ".my.cnf"]
)
def test_credential_files_not_readable(sbx: SandboxRunner, rel: str) -> None:
    path = sbx.home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("token")
    assert probe(sbx, "read", path) == "EACCES"
    assert path.read_text() == "token"


# With both ~/.config/srt-kernel/settings.json and ~/.srt-settings.json, run
# reads the first and says that the second is not read.
def test_run_says_which_settings_file_it_reads(sbx: SandboxRunner) -> None:
    ours = sbx.home / ".config" / "srt-kernel" / "settings.json"
    ours.parent.mkdir(parents=True, exist_ok=True)
    ours.write_text('{"filesystem": {"denyRead": ["./private"]}}')
    srt = sbx.home / ".srt-settings.json"
    srt.write_text("{}")
    (sbx.project / "private").mkdir()
    (sbx.project / "private" / "a").write_text("a")
    proc = subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "run", "--", "ls", "private"],
        cwd=sbx.project,
        env=sbx.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # ours was read: private is denied
    assert proc.stderr == (
        f"srt-kernel: note: {ours}: used as your settings; {srt} exists too and is "
        "not read (srt-kernel reads one settings file, never a mix). Copy what you "
        "need from it into the first, or name the one to use with --settings.\n"
    )


# F8: $TMPDIR exists and is writable, mktemp -d works.
def test_tmpdir_is_private_and_writable(sbx: SandboxRunner) -> None:
    result = sbx.run(
        [
            "sh",
            "-c",
            'd=$(mktemp -d) && echo hi > "$d/x" && cat "$d/x" && echo "$TMPDIR"',
        ]
    )
    assert result.status == 0, result.stderr
    assert result.lines == ["hi", "/tmp"]
