"""Property test: the sandbox's file rules do what the pure policy says.

Hypothesis draws random settings (``filesystem.allowWrite``, ``denyWrite``,
``denyRead``, ``allowRead``) over the small tree of :mod:`tests.fs_oracle`
(files, folders, a protected ``.git/config`` and ``.vscode``, symlinks that
lead out of a folder, a dangling one, and rule paths that do not exist
yet) and a working folder.  For each draw, one ``srt-kernel run`` launches
a probe that reads, appends to, creates and renames every path of the tree
and prints the outcome of each; every outcome must be the one the oracle
derives from the policy, and nothing on the host may change except where
the oracle allows a write.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.conftest import SandboxRunner
from tests.fs_oracle import (
    CREATE_DENIED,
    CWD_POOL,
    PROBE_SCRIPT,
    RULE_POOL,
    Oracle,
    Rules,
    build_tree,
    changed,
    probes,
    snapshot,
)

pytestmark = pytest.mark.bwrap

PROBE = PROBE_SCRIPT

#: (allowWrite, denyWrite, denyRead, allowRead, working folder), relative
#: to the tree's top.
Draw = tuple[list[str], list[str], list[str], list[str], str]


def _paths(max_size: int) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(RULE_POOL), max_size=max_size, unique=True)


#: Where the links of the tree lead, to compare rule paths without the disk.
_LEADS_TO = {
    "link_to_a": "a",
    "a/link_dir_out": "b",
    "a/link_out": "b/h",
    "a/dangling": "c/nothere",
}


def _within(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + "/")


draws: st.SearchStrategy[Draw] = st.tuples(
    _paths(3),
    _paths(3),
    _paths(3),
    _paths(2),
    st.sampled_from(CWD_POOL),
)


def _abs(top: str, rel: str) -> str:
    return posixpath.join(top, rel) if rel else top


def _describe(draw: Draw) -> str:
    allow_write, deny_write, deny_read, allow_read, cwd = draw
    return json.dumps(
        {
            "allowWrite": allow_write,
            "denyWrite": deny_write,
            "denyRead": deny_read,
            "allowRead": allow_read,
            "cwd": cwd,
        }
    )


def _children(before: dict[str, tuple[str, str]], folder: str) -> set[str]:
    return {posixpath.basename(p) for p in before if posixpath.dirname(p) == folder}


def check_draw(sbx: SandboxRunner, draw: Draw) -> None:
    """Launch one sandbox for ``draw`` and compare it with the oracle."""
    allow_write, deny_write, deny_read, allow_read, cwd_rel = draw
    example = os.path.realpath(tempfile.mkdtemp(dir=sbx.root, prefix="ex-"))
    try:
        top = posixpath.join(example, "tree")
        outside = posixpath.join(example, "outside")
        os.mkdir(top)
        os.mkdir(outside)
        build_tree(top)
        cwd = outside if cwd_rel == "<outside>" else _abs(top, cwd_rel)
        rules = Rules(
            allow_write=tuple(_abs(top, p) for p in allow_write),
            deny_write=tuple(_abs(top, p) for p in deny_write),
            deny_read=tuple(_abs(top, p) for p in deny_read),
            allow_read=tuple(_abs(top, p) for p in allow_read),
        )

        # Everything the oracle says is decided before the launch, from the
        # tree as built.
        oracle = Oracle(rules, cwd)
        todo = probes(top)
        expected = {f"{op} {path}": oracle.expect(op, path) for op, path in todo}
        before = snapshot(example)

        result = sbx.run(
            [sys.executable, "-c", PROBE, json.dumps(todo)],
            settings=rules.settings(),
            cwd=Path(cwd),
            timeout=180,
        )
        if not oracle.visible(cwd):
            # The working folder is inside a read-denied one: the command
            # cannot start there, and must not run anywhere else instead.
            assert result.status != 0 and result.stdout == "", result
            assert changed(before, snapshot(example)) == []
            return
        assert result.status == 0, (
            f"the probe did not run (status {result.status}) under "
            f"{_describe(draw)}:\n{result.stderr}"
        )
        actual: dict[str, Any] = json.loads(result.stdout)
        after = snapshot(example)

        mismatches = []
        for key, want in expected.items():
            got = actual.get(key)
            path = key.split(" ", 1)[1]
            if isinstance(want, list) and isinstance(got, list):
                # names the sandbox adds (its placeholders) are not the tree's
                host = _children(before, oracle.resolve(path))
                got = sorted(n for n in got if n in host)
            if want == "denied" and got in CREATE_DENIED:
                continue
            if got != want:
                mismatches.append(
                    f"  {key.replace(top, 'T')}: policy {want}, sandbox {got}"
                )

        strays = [
            p.replace(top, "T")
            for p in changed(before, after)
            if not oracle.may_change(p)
        ]
        note(f"policy {_describe(draw)} (T is the tree's top)")
        assert not mismatches and not strays, (
            f"under {_describe(draw)} (T is the tree's top):\n"
            + "\n".join(mismatches)
            + ("\nchanged on the host though not writable: " + ", ".join(strays))
            * bool(strays)
        )
    finally:
        shutil.rmtree(example, ignore_errors=True)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(draw=draws)
def test_sandbox_matches_policy(sbx: SandboxRunner, draw: Draw) -> None:
    check_draw(sbx, draw)


# --------------------------------------------------------------------------
# Disagreements the property test once found, each as its smallest draw,
# kept as regression cases.


def _probe(
    sbx: SandboxRunner, draw: Draw, op: str, rel: str
) -> tuple[int, object, str]:
    allow_write, deny_write, deny_read, allow_read, cwd_rel = draw
    example = os.path.realpath(tempfile.mkdtemp(dir=sbx.root, prefix="gap-"))
    try:
        top = posixpath.join(example, "tree")
        os.mkdir(top)
        build_tree(top)
        rules = Rules(
            allow_write=tuple(_abs(top, p) for p in allow_write),
            deny_write=tuple(_abs(top, p) for p in deny_write),
            deny_read=tuple(_abs(top, p) for p in deny_read),
            allow_read=tuple(_abs(top, p) for p in allow_read),
        )
        path = _abs(top, rel)
        result = sbx.run(
            [sys.executable, "-c", PROBE, json.dumps([[op, path]])],
            settings=rules.settings(),
            cwd=Path(_abs(top, cwd_rel)),
            timeout=180,
        )
        outcome = json.loads(result.stdout)[f"{op} {path}"] if result.stdout else None
        return result.status, outcome, result.stderr
    finally:
        shutil.rmtree(example, ignore_errors=True)


FOUND = [
    # allowWrite naming something that is not an existing folder: the plan
    # looks for protected names below it as if it were one (a placeholder
    # "a/f/.bashrc" cannot be made, so the launch fails with 125; below a
    # dangling link's target an empty folder is put where the file would go)
    pytest.param((["a/f"], [], [], [], ""), "write", "a/f", "ok", id="allow-file"),
    pytest.param(
        (["a/dangling"], [], [], [], ""),
        "write",
        "a/dangling",
        "ok",
        id="allow-missing-through-link",
    ),
    # a read-denied path below a folder that does not exist yet: the stand-in
    # folder is made, but writable, so the denied path can be created in it
    pytest.param(
        ([], [], ["nope/x"], [], ""),
        "create",
        "nope/x",
        "EROFS",
        id="deny-read-below-missing-folder",
    ),
    # a folder that holds a read-denied path (a protected name or not) can be
    # renamed away, and the path made again, unprotected, at the old name
    pytest.param(
        ([], [], ["a/.git/config"], [], ""),
        "rename",
        "a/.git",
        "EBUSY",
        id="rename-parent-of-read-denied-protected",
    ),
    # a read-denied path inside a re-allowed folder inside a read-denied one
    # is skipped by the mounts (it is "inside a denied folder"), so it can be
    # read and written like the re-allowed folder around it
    pytest.param(
        ([], [], ["", "a/sub"], ["a"], ""),
        "write",
        "a/sub/g",
        "EROFS",
        id="deny-inside-reallowed-inside-deny",
    ),
    pytest.param(
        ([], [], ["b/sub"], [], ""),
        "rename",
        "b",
        "EBUSY",
        id="rename-parent-of-read-denied",
    ),
]


@pytest.mark.parametrize(("draw", "op", "rel", "want"), FOUND)
def test_found_by_the_property(
    sbx: SandboxRunner, draw: Draw, op: str, rel: str, want: str
) -> None:
    status, outcome, stderr = _probe(sbx, draw, op, rel)
    assert (status, outcome) == (0, want), stderr


def test_read_denied_working_folder_is_refused(sbx: SandboxRunner) -> None:
    # the command cannot start in a folder it cannot see: nothing runs, and
    # the launcher says why, as a mistake in the policy
    status, outcome, stderr = _probe(sbx, ([], [], [""], [], "a"), "read", "top")
    assert (status, outcome) == (2, None)
    assert "is read-denied by the policy" in stderr
    assert "Can't chdir" not in stderr
