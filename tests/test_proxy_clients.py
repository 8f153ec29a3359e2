"""Real clients through the proxy: curl, urllib, requests, httpx, pip, git."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
import requests

from tests.conftest_proxy import (
    TIMEOUT,
    Proxy,
    Upstream,
    make_wheel,
    other_upstream,
    policy,
    proxy,
    start_proxy,
    start_upstream,
    upstream,
)

__all__ = ["other_upstream", "proxy", "upstream"]  # fixtures used by name

MARKER = "blocked-by-srt-kernel"
CURL = shutil.which("curl")
GIT = shutil.which("git")


def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no proxy variables and no user config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "PIP_CONFIG_FILE": os.devnull,
        "NO_COLOR": "1",
    }
    return env


def curl(tmp_path: Path, *args: str) -> tuple[int, str]:
    assert CURL is not None
    result = subprocess.run(
        [CURL, "-sS", "-i", "--max-time", str(int(TIMEOUT)), *args],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=TIMEOUT + 10,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize(
    ("mode", "name", "expected"),
    [
        # plain HTTP through the HTTP proxy
        ("http", "allowed.test", "HTTP/1.1 200"),
        ("http", "other.test", "HTTP/1.1 403"),
        # a CONNECT tunnel (curl -p), as HTTPS would use
        ("tunnel", "a.wild.test", "HTTP/1.1 200 OK"),
        ("tunnel", "evilwild.test", "CONNECT tunnel failed, response 403"),
        # SOCKS5 with names resolved by the proxy
        ("socks", "a.b.wild.test", "HTTP/1.1 200"),
        ("socks", "deny.wild.test", "SOCKS"),
    ],
)
def test_curl(
    tmp_path: Path,
    proxy: Proxy,
    upstream: Upstream,
    mode: str,
    name: str,
    expected: str,
) -> None:
    url = upstream.url(name)
    if mode == "http":
        code, output = curl(tmp_path, "--proxy", proxy.http_url, url)
    elif mode == "tunnel":
        code, output = curl(tmp_path, "-p", "--proxy", proxy.http_url, url)
    else:
        code, output = curl(tmp_path, "--proxy", proxy.socks_url, url)
    assert expected in output
    allowed = expected.startswith("HTTP/1.1 200")
    assert (code == 0) is (allowed or mode == "http")
    if mode == "http" and not allowed:
        assert f"X-Proxy-Error: {MARKER}" in output
    assert len(upstream.recorder.connections) == (1 if allowed else 0)


def test_urllib(proxy: Proxy, upstream: Upstream, other_upstream: Upstream) -> None:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy.http_url})
    )
    with opener.open(upstream.url("allowed.test"), timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.read() == b"hello from upstream\n"
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(other_upstream.url("other.test"), timeout=TIMEOUT)
    assert info.value.code == 403
    assert info.value.headers["X-Proxy-Error"] == MARKER
    info.value.close()
    assert other_upstream.recorder.connections == []


def test_requests_and_redirect_to_refused_host(
    proxy: Proxy, upstream: Upstream, other_upstream: Upstream
) -> None:
    proxies = {"http": proxy.http_url, "https": proxy.http_url}
    with requests.Session() as session:
        session.trust_env = False
        ok = session.get(upstream.url("allowed.test"), proxies=proxies, timeout=TIMEOUT)
        assert ok.status_code == 200
        # N11: an allowed host redirects to a refused one; following it is refused.
        target = other_upstream.url("other.test", "/secret")
        redirected = session.get(
            upstream.url("allowed.test", f"/redirect?to={target}"),
            proxies=proxies,
            timeout=TIMEOUT,
        )
    assert redirected.status_code == 403
    assert redirected.headers["X-Proxy-Error"] == MARKER
    assert [r.status_code for r in redirected.history] == [302]
    assert other_upstream.recorder.connections == []


def test_httpx(proxy: Proxy, upstream: Upstream, other_upstream: Upstream) -> None:
    with httpx.Client(proxy=proxy.http_url, trust_env=False, timeout=TIMEOUT) as client:
        ok = client.get(upstream.url("a.wild.test", "/chunked"))
        assert (ok.status_code, ok.text) == (200, "hello chunked world")
        posted = client.post(upstream.url("allowed.test", "/echo"), content=b"x" * 5000)
        assert posted.json()["body"] == "x" * 5000
        refused = client.get(other_upstream.url("other.test"))
    assert refused.status_code == 403
    assert refused.headers["X-Proxy-Error"] == MARKER
    assert other_upstream.recorder.connections == []


def test_pip_download_through_proxy(tmp_path: Path) -> None:
    root = tmp_path / "index"
    root.mkdir()
    wheel = make_wheel(root)
    up = start_upstream(root)
    p = start_proxy(policy(allowed=["allowed.test", f"127.0.0.1:{up.port}"]))
    dest = tmp_path / "dl"
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps",
                "--no-cache-dir", "--disable-pip-version-check", "--isolated",
                "--proxy", p.http_url,
                "--index-url", f"http://allowed.test:{up.port}/simple/",
                "--trusted-host", "allowed.test",
                "-d", str(dest), "tinypkg",
            ],
            capture_output=True, text=True, env=clean_env(tmp_path),
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert (dest / wheel.name).read_bytes() == wheel.read_bytes()

        # The same index under a name the policy does not allow fails.
        refused = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps",
                "--no-cache-dir", "--disable-pip-version-check", "--isolated",
                "--retries", "0", "--timeout", "20",
                "--proxy", p.http_url,
                "--index-url", f"http://other.test:{up.port}/simple/",
                "--trusted-host", "other.test",
                "-d", str(tmp_path / "dl2"), "tinypkg",
            ],
            capture_output=True, text=True, env=clean_env(tmp_path),
            timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert not (tmp_path / "dl2" / wheel.name).exists()
        assert [e.decision for e in p.events if e.host == "other.test"]
        assert {e.decision for e in p.events if e.host == "other.test"} == {"deny"}
    finally:
        p.server.stop()
        up.server.shutdown()
        up.server.server_close()


@pytest.mark.skipif(GIT is None, reason="git is not installed")
def test_git_clone_smart_http(tmp_path: Path) -> None:
    assert GIT is not None
    env = clean_env(tmp_path)
    env.update(
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.test",
        GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t.test",
    )  # fmt: skip
    work = tmp_path / "work"
    repos = tmp_path / "repos"
    repos.mkdir()

    def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GIT, *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    assert git("init", "-q", str(work)).returncode == 0
    (work / "README").write_text("through the proxy\n")
    assert git("add", "README", cwd=work).returncode == 0
    assert git("commit", "-qm", "one", cwd=work).returncode == 0
    assert git("clone", "-q", "--bare", str(work), str(repos / "r.git")).returncode == 0

    up = start_upstream(tmp_path, git_root=repos)
    p = start_proxy(policy(allowed=["allowed.test", f"127.0.0.1:{up.port}"]))
    try:
        clone = git(
            "-c", f"http.proxy={p.http_url}", "clone", "-q",
            f"http://allowed.test:{up.port}/git/r.git", str(tmp_path / "clone"),
        )  # fmt: skip
        assert clone.returncode == 0, clone.stderr
        assert (tmp_path / "clone" / "README").read_text() == "through the proxy\n"
        assert any(r["method"] == "POST" for r in up.recorder.requests)

        before = len(up.recorder.connections)
        refused = git(
            "-c", f"http.proxy={p.http_url}", "clone", "-q",
            f"http://other.test:{up.port}/git/r.git", str(tmp_path / "clone2"),
        )  # fmt: skip
        assert refused.returncode != 0
        assert "403" in refused.stderr
        assert len(up.recorder.connections) == before
        assert not (tmp_path / "clone2" / "README").exists()
    finally:
        p.server.stop()
        up.server.shutdown()
        up.server.server_close()
