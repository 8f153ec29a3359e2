"""What a notebook may grant itself: approval, ceilings, self-escalation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from srt_kernel import policy as pol
from srt_kernel import trust
from srt_kernel.errors import PolicyError
from tests.fixtures import FETCH, Env
from tests.kernel_harness import kernel, run, set_sandbox_metadata

CTX = pol.Context(home="/home/u", base_dir="/home/u/proj")


def layer(data: object, source: str = "notebook metadata (nb.ipynb)") -> pol.Layer:
    return pol.parse_layer(data, source=source, context=CTX, trusted=False)


def base_with(data: object) -> pol.Policy:
    user = pol.parse_layer(data, source="settings", context=CTX, trusted=True)
    return pol.resolve(CTX, [user])


# -- the pure part -------------------------------------------------------------


def test_hash_changes_with_any_edit() -> None:
    a = {"network": {"allowedDomains": ["a.example"]}}
    b = {"network": {"allowedDomains": ["a.example", "b.example"]}}
    assert trust.request_hash(a) == trust.request_hash(json.loads(json.dumps(a)))
    assert trust.request_hash(a) != trust.request_hash(b)


def test_widening_lists_only_what_is_beyond_the_baseline() -> None:
    base = base_with({"network": {"allowedDomains": ["*.example.com"]}})
    wanted = trust.widening(
        base,
        layer(
            {
                "network": {"allowedDomains": ["api.example.com", "evil.test"]},
                "filesystem": {"allowWrite": ["./out", "/data"]},
                "environment": {"allow": ["OPENAI_API_KEY"]},
            }
        ),
    )
    assert wanted.hosts == ("evil.test",)
    assert wanted.writes == ("/data",)  # ./out is inside the working folder
    assert wanted.env == ("OPENAI_API_KEY",)
    assert wanted.lines()[0] == "reach evil.test over the network"


def test_unapproved_metadata_only_tightens() -> None:
    base = base_with({"network": {"allowedDomains": ["a.example", "b.example"]}})
    request = layer({"network": {"allowedDomains": ["a.example", "evil.test"]}})
    result, cut = trust.apply_notebook(base, request, approved=False, ceiling=None)
    assert [p.text for p in result.network.allowed] == ["a.example"]
    assert cut == []
    assert any("evil.test" in n and "not granted" in n for n in result.notes)


def test_approved_metadata_gets_what_it_asked_and_no_more() -> None:
    base = base_with({"network": {"allowedDomains": ["a.example", "b.example"]}})
    request = layer(
        {
            "network": {"allowedDomains": ["a.example", "pypi.org"]},
            "filesystem": {"allowWrite": ["/data/out"]},
        }
    )
    result, cut = trust.apply_notebook(base, request, approved=True, ceiling=None)
    assert sorted(p.text for p in result.network.allowed) == ["a.example", "pypi.org"]
    assert result.filesystem.writable("/data/out/x.csv")
    assert not result.filesystem.writable("/data/other")
    assert cut == []


def test_ceiling_caps_an_approved_request() -> None:
    base = base_with({})
    ceiling = pol.parse_layer(
        {
            "network": {"allowedDomains": ["*.internal.example"]},
            "filesystem": {"allowWrite": ["/home/u/proj"]},
        },
        source="ceiling",
        context=CTX,
        trusted=True,
    )
    request = layer(
        {
            "network": {"allowedDomains": ["db.internal.example", "evil.test"]},
            "filesystem": {"allowWrite": ["/home/u/proj/out", "/etc"]},
        }
    )
    result, cut = trust.apply_notebook(base, request, approved=True, ceiling=ceiling)
    assert [p.text for p in result.network.allowed] == ["db.internal.example"]
    assert result.filesystem.writable("/home/u/proj/out/a")
    assert not result.filesystem.writable("/etc/passwd")
    assert sorted(cut) == [
        "notebook metadata (nb.ipynb) asks to reach evil.test (beyond the ceiling); "
        "it was not granted.",
        "notebook metadata (nb.ipynb) asks to write below /etc (beyond the ceiling); "
        "it was not granted.",
    ]


def test_approving_never_takes_away_what_the_settings_grant() -> None:
    base = base_with(
        {"network": {"allowedDomains": ["allowed.test", "api.example.com"]}}
    )
    ceiling = pol.parse_layer(
        {"network": {"allowedDomains": ["other.test"]}},
        source="ceiling",
        context=CTX,
        trusted=True,
    )
    request = layer(
        {
            "network": {
                "allowedDomains": [
                    "other.test", "evil.test", "allowed.test", "*.example.com"
                ]
            }
        }
    )  # fmt: skip
    unapproved, _ = trust.apply_notebook(base, request, approved=False, ceiling=ceiling)
    result, cut = trust.apply_notebook(base, request, approved=True, ceiling=ceiling)
    assert sorted(p.text for p in unapproved.network.allowed) == [
        "allowed.test",
        "api.example.com",
    ]
    assert sorted(p.text for p in result.network.allowed) == [
        "allowed.test",
        "api.example.com",
        "other.test",
    ]
    # what the settings already allow is not "beyond the ceiling"
    assert sorted(cut) == [
        "notebook metadata (nb.ipynb) asks to reach *.example.com (beyond the "
        "ceiling); it was not granted.",
        "notebook metadata (nb.ipynb) asks to reach evil.test (beyond the "
        "ceiling); it was not granted.",
    ]


def test_ceiling_spares_writes_the_settings_grant() -> None:
    base = base_with({"filesystem": {"allowWrite": ["/data"]}})
    ceiling = pol.parse_layer(
        {"filesystem": {"allowWrite": ["/home/u/proj/out"]}},
        source="ceiling",
        context=CTX,
        trusted=True,
    )
    request = layer({"filesystem": {"allowWrite": ["/data/in", "/srv"]}})
    capped, cut = trust.cap(request, ceiling, base)
    assert capped.allow_write == ("/data/in",)
    assert cut == ["write below /srv (beyond the ceiling)"]
    result, _ = trust.apply_notebook(base, request, approved=True, ceiling=ceiling)
    assert result.filesystem.writable("/data/in/x")
    assert not result.filesystem.writable("/srv/x")


def test_ceiling_keys_and_protected_setting_are_settings_only() -> None:
    for key, value in (
        ("notebookCeiling", {}),
        ("dangerouslyAllowWriteToProtectedPaths", ["./.git"]),
    ):
        with pytest.raises(PolicyError, match="only be set in your own settings"):
            layer({key: value})


def test_approval_store_round_trip(tmp_path: Path) -> None:
    store = trust.ApprovalStore(tmp_path / "approvals.json")
    nb = tmp_path / "a.ipynb"
    nb.write_text("{}")
    request = {"network": {"allowedDomains": ["pypi.org"]}}
    assert not store.is_approved(nb, request)
    store.approve(nb, request, ["reach pypi.org over the network"])
    assert store.is_approved(nb, request)
    assert not store.is_approved(
        nb, {"network": {"allowedDomains": ["pypi.org", "x.test"]}}
    )
    assert oct((tmp_path / "approvals.json").stat().st_mode & 0o777) == "0o600"
    assert store.revoke(nb)
    assert not store.is_approved(nb, request)


# -- through the kernel ---------------------------------------------------------


def _trust(world: Env, notebook: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(world.env)
    env.pop("SRT_KERNEL_NOTEBOOK", None)
    return subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "trust", str(notebook), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.bwrap
def test_approved_and_unapproved_copies(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings({"network": {"hostAddresses": {"granted.test": "127.0.0.1"}}})
    request = {"network": {"allowedDomains": ["granted.test", f"127.0.0.1:{port}"]}}
    set_sandbox_metadata(world.notebook, request)
    copy = world.project / "copy.ipynb"
    shutil.copy(world.notebook, copy)

    refused = _trust(world, world.notebook)
    assert refused.returncode == 1
    assert "reach granted.test over the network" in refused.stdout
    assert "run this at a terminal" in refused.stderr
    assert _trust(world, world.notebook, "--yes").returncode == 0

    # the approved notebook gets the widening
    with kernel(world.env, world.project) as (_, kc):
        ok = run(kc, FETCH.format(host="granted.test", port=port))
        assert ok.stdout == "upstream ok\n", ok.outputs

    # an identical but unapproved copy gets the baseline and the notice
    env = dict(world.env, SRT_KERNEL_NOTEBOOK=str(copy))
    with kernel(env, world.project) as (_, kc):
        no = run(kc, FETCH.format(host="granted.test", port=port))
        assert no.reply["content"]["ename"] == "HTTPError"  # the proxy's 403
        assert f"srt-kernel trust {copy}" in no.stderr
        [report] = no.reports
        assert "- network: granted.test" in report
    assert len(seen) == 1

    # editing the request voids the approval
    set_sandbox_metadata(
        world.notebook,
        {
            "network": {
                "allowedDomains": ["granted.test", f"127.0.0.1:{port}", "more.test"]
            }
        },
    )
    with kernel(world.env, world.project) as (_, kc):
        again = run(kc, FETCH.format(host="granted.test", port=port))
        assert again.status == "error"
        assert "srt-kernel trust" in again.stderr
    assert len(seen) == 1


@pytest.mark.bwrap
def test_notary_signature_is_not_approval(world: Env) -> None:
    from nbformat import read
    from nbformat.sign import NotebookNotary

    set_sandbox_metadata(
        world.notebook, {"filesystem": {"allowWrite": [str(world.home)]}}
    )
    (world.root / "notary").mkdir()
    notary = NotebookNotary(data_dir=str(world.root / "notary"))
    nb = read(world.notebook, as_version=4)
    notary.sign(nb)
    assert notary.check_signature(nb)
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, f"open({str(world.home / 'x.txt')!r}, 'w')")
        assert result.reply["content"]["ename"] == "OSError"
    assert not (world.home / "x.txt").exists()


@pytest.mark.bwrap
def test_user_ceiling_caps_even_approved(world: Env) -> None:
    data = world.root / "data"
    data.mkdir()
    world.settings(
        {
            "notebookCeiling": {
                "filesystem": {"allowWrite": [str(world.project), str(data)]}
            }
        }
    )
    set_sandbox_metadata(
        world.notebook, {"filesystem": {"allowWrite": [str(data), str(world.home)]}}
    )
    approved = _trust(world, world.notebook, "--yes")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"refused whatever you answer: write below {world.home}" in approved.stdout
    with kernel(world.env, world.project) as (_, kc):
        ok = run(kc, f"open({str(data / 'a.txt')!r}, 'w').write('a')")
        assert ok.status == "ok", ok.outputs
        beyond = run(kc, f"open({str(world.home / 'b.txt')!r}, 'w')")
        assert beyond.reply["content"]["ename"] == "OSError"
        assert "beyond the ceiling" in ok.stderr
    assert (data / "a.txt").read_text() == "a"
    assert not (world.home / "b.txt").exists()


@pytest.mark.bwrap
def test_metadata_paths_through_symlinks_are_judged_where_they_lead(
    world: Env,
) -> None:
    # Links in the notebook's folder (a cell or a cloned repository can put
    # them there) to a read-denied key and to a folder outside the project:
    # metadata that names the links asks for what they lead to, and gets
    # neither, approved or not.
    key = world.home / ".ssh" / "id_rsa"
    key.write_text("PRIVATE-KEY")
    outside = world.home / "bin"
    outside.mkdir()
    (world.project / "k").symlink_to(key)
    (world.project / "h").symlink_to(outside)
    request = {"filesystem": {"allowRead": ["./k"], "allowWrite": ["./h"]}}
    set_sandbox_metadata(world.notebook, request)
    code = (
        "import errno\n"
        "for name, f in [('read', lambda: open('k').read()),\n"
        "                ('write', lambda: open('h/x', 'w').write('x'))]:\n"
        "    try:\n        print(name, f())\n"
        "    except OSError as e:\n        print(name, errno.errorcode[e.errno])\n"
    )
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, code)
    # the key is under a read-denied folder, which is empty inside
    assert result.stdout == "read ENOENT\nwrite EROFS\n", result.outputs
    assert not (outside / "x").exists()
    # srt-kernel trust shows the request as what it is
    shown = subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "trust", str(world.notebook)],
        cwd=world.project,
        env={k: v for k, v in world.env.items() if k != "SRT_KERNEL_NOTEBOOK"},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert f"read {key}, which your settings deny" in shown.stdout
    assert f"write files below {outside}" in shown.stdout


@pytest.mark.bwrap
def test_cell_cannot_escalate_through_files(world: Env) -> None:
    data = world.home / ".local" / "share" / "srt-kernel"
    code = f"""
import json, os
results = {{}}
def attempt(name, f):
    try:
        f(); results[name] = 'ok'
    except OSError as e:
        results[name] = e.errno
nb = {str(world.notebook)!r}
def rewrite():
    with open(nb, 'r+') as fh:
        fh.write('{{}}')
attempt('notebook', rewrite)
attempt('approval', lambda: open({str(data / "approvals.json")!r}, 'w').write('{{}}'))
attempt('checkpoint', lambda: os.symlink(os.path.expanduser('~/.bashrc'), '.ipynb_checkpoints/analysis-checkpoint.ipynb'))
attempt('savecopy', lambda: os.symlink(os.path.expanduser('~/.bashrc'), '.~analysis.ipynb'))
attempt('settings', lambda: open({str(world.home / ".config/srt-kernel/settings.json")!r}, 'w'))
print(json.dumps(results, sort_keys=True))
"""
    world.settings({})
    before = world.notebook.read_text()
    with kernel(world.env, world.project) as (km, kc):
        result = run(kc, code)
        outcome = json.loads(result.stdout)
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert run(kc, "print('restarted')").stdout == "restarted\n"
    import errno

    assert outcome == {
        "approval": errno.EROFS,  # the data folder is an empty read-only one
        "checkpoint": errno.EROFS,
        "notebook": errno.EROFS,
        "savecopy": errno.EEXIST,  # held by a read-only placeholder
        "settings": errno.EROFS,
    }
    assert world.notebook.read_text() == before
    assert not (data / "approvals.json").exists()
    assert not os.path.lexists(world.project / ".~analysis.ipynb")


@pytest.mark.bwrap
def test_dangerous_setting_makes_a_protected_path_writable(world: Env) -> None:
    (world.project / ".vscode").mkdir()
    world.settings(
        {
            "dangerouslyAllowWriteToProtectedPaths": [
                str(world.project / ".vscode"),
                str(world.project / ".envrc"),
            ]
        }
    )
    with kernel(world.env, world.project) as (_, kc):
        ok = run(kc, "open('.vscode/settings.json', 'w').write('{}')")
        assert ok.status == "ok", ok.outputs
        # created during a cell, it is neither reported nor moved aside
        created = run(kc, "open('.envrc', 'w').write('export A=1\\n')")
        assert created.status == "ok", created.outputs
        assert created.reports == []
        assert (world.project / ".envrc").read_text() == "export A=1\n"
        still = run(kc, "open('.bashrc', 'a').write('x')")
        assert still.reply["content"]["ename"] == "OSError"


# -- per-cell narrowing inside the sandboxed kernel ------------------------------


@pytest.mark.bwrap
def test_cell_can_narrow_but_never_widen(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings(
        {
            "network": {
                "allowedDomains": ["allowed.test", "other.test", f"127.0.0.1:{port}"],
                "hostAddresses": {
                    "allowed.test": "127.0.0.1",
                    "other.test": "127.0.0.1",
                },
            }
        }
    )
    get = FETCH.format(host="allowed.test", port=port)
    with kernel(world.env, world.project) as (_, kc):
        cut = run(kc, "%%sandbox --no-network\n" + get)
        assert cut.reply["content"]["ename"] == "HTTPError"
        [report] = cut.reports
        assert "- network: allowed.test" in report
        # the next cell has the kernel's policy again
        assert run(kc, get).stdout == "upstream ok\n"
        # --allow narrows to that host only
        only = run(
            kc,
            f"%%sandbox --allow allowed.test --allow 127.0.0.1:{port}\n"
            + FETCH.format(host="other.test", port=port),
        )
        assert only.reply["content"]["ename"] == "HTTPError"
        # a cell cannot widen
        wider = run(kc, "%%sandbox --allow evil.test\nprint('ran')")
        assert wider.reply["content"]["ename"] == "UsageError"
        assert "asks for more than this kernel has" in wider.reply["content"]["evalue"]
        assert "ran" not in wider.stdout
        # file options need a sandbox inside the sandbox: refused clearly
        files = run(kc, "%%sandbox --write /tmp/x\nprint('ran')")
        assert files.reply["content"]["ename"] == "UsageError"
        assert "narrows the network only" in files.reply["content"]["evalue"]
    assert seen == [f"allowed.test:{port}"]


@pytest.mark.bwrap
def test_a_narrowed_cell_is_the_cell_itself(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        failed = run(kc, "%%sandbox --no-network\nprint('start')\n1/0")
        assert failed.status == "error"
        assert failed.reply["content"]["ename"] == "ZeroDivisionError"
        assert failed.stdout == "start\n"
        # one error output, labelled with this cell's prompt and line
        [error] = failed.of_type("error")
        count = failed.reply["content"]["execution_count"]
        text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["content"]["traceback"]))
        assert f"Cell In[{count}], line 3" in text
        assert "magics.py" not in text
        # the value is the cell's own Out
        value = run(kc, "%%sandbox --no-network\n40 + 2")
        [result] = value.of_type("execute_result")
        assert result["content"]["execution_count"] == count + 1
        assert result["content"]["data"]["text/plain"] == "42"
        # a call the supervisor cannot see would not be narrowed: refused
        called = run(
            kc, "get_ipython().run_cell_magic('sandbox', '--no-network', 'print(1)')"
        )
        assert called.reply["content"]["ename"] == "UsageError"
        assert "first line of a cell" in called.reply["content"]["evalue"]
        assert called.stdout == ""
        # pasted with a prompt, the supervisor does not read the line: refused
        pasted = run(kc, ">>> %%sandbox --no-network\n>>> print('pasted')")
        assert pasted.reply["content"]["ename"] == "UsageError"
        assert pasted.stdout == ""
        # a cell that code runs as a cell of its own is not narrowed: refused
        nested = run(kc, "get_ipython().run_cell('%%sandbox --no-network\\nprint(7)')")
        assert "only as the first line of a cell" in str(nested.outputs)
        assert nested.stdout == ""
