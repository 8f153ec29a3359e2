"""Network: the N cases that need the sandbox, through ``srt-kernel run``.

Upstreams are local HTTP servers on 127.0.0.1 that record every request;
names under ``.test`` are answered by ``network.hostAddresses`` in the
settings, so nothing leaves this machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import SandboxRunner
from tests.fixtures import Upstream

pytestmark = pytest.mark.bwrap


def _settings(pa: int) -> dict[str, object]:
    return {
        "network": {
            "allowedDomains": ["allowed.test", "*.wild.test", f"127.0.0.1:{pa}"],
            "deniedDomains": ["deny.wild.test"],
            "hostAddresses": {
                "allowed.test": "127.0.0.1",
                "other.test": "127.0.0.1",
                "a.wild.test": "127.0.0.1",
                "deny.wild.test": "127.0.0.1",
            },
        }
    }


CURL = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n", "--max-time", "20"]


# N1: with no allowed domains nothing leaves, and files still work.
def test_no_network_by_default(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, _ = upstreams
    # The datagram is aimed at a documentation address from inside the
    # sandbox's own network namespace, which has no route to anywhere.
    code = (
        "import socket, errno\n"
        "def attempt(f):\n"
        "    try:\n        f(); return 'ok'\n"
        "    except OSError as e:\n        return errno.errorcode.get(e.errno, type(e).__name__)\n"
        f"print(attempt(lambda: socket.create_connection(('127.0.0.1', {allowed.port}), 5)))\n"
        "print(attempt(lambda: socket.getaddrinfo('example.test', 80)))\n"
        "print(attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53))))\n"
        "open('written.txt', 'w').write('files work')\n"
        "print(open('written.txt').read())\n"
    )
    result = sbx.py(code)
    assert result.status == 0, result.stderr
    tcp, dns, udp, files = result.lines
    assert tcp == "ECONNREFUSED"  # nothing listens on the sandbox's own loopback
    assert dns in {"EAI_NONAME", "gaierror", "EAI_AGAIN"} or dns.startswith("-")
    assert udp == "ENETUNREACH"
    assert files == "files work"
    assert allowed.seen == []
    curl = sbx.run([*CURL, f"http://127.0.0.1:{allowed.port}/"])
    assert curl.lines == ["000"]
    assert allowed.seen == []


# N2, N3, N4, N6: through the proxy variables.
def test_allowed_and_refused_hosts(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, other = upstreams
    pa = allowed.port
    script = "; ".join(
        shlex.join([*CURL, url])
        for url in (
            f"http://allowed.test:{pa}/a",
            f"http://a.wild.test:{pa}/b",
            f"http://deny.wild.test:{pa}/c",
            f"http://other.test:{other.port}/d",
            f"http://wild.test:{pa}/e",
            f"http://ALLOWED.TEST.:{pa}/f",
            f"http://allowed.test:{other.port}/g",
        )
    )
    result = sbx.run(["sh", "-c", script], settings=_settings(pa))
    assert result.lines == ["200", "200", "403", "403", "403", "200", "403"], (
        result.stderr
    )
    assert sorted(allowed.seen) == ["/a", "/b", "/f"]
    assert other.seen == []
    # each decision is one line of the audit log, labelled with the command
    log = sbx.home / ".local/share/srt-kernel/audit/network.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["host"], e["port"], e["decision"]) for e in events] == [
        ("allowed.test", pa, "allow"),
        ("a.wild.test", pa, "allow"),
        ("deny.wild.test", pa, "deny"),
        ("other.test", other.port, "deny"),
        ("wild.test", pa, "deny"),
        ("allowed.test", pa, "allow"),
        ("allowed.test", other.port, "deny"),
    ]
    assert {(e["label"], e["protocol"]) for e in events} == {("run sh", "http")}
    assert (log.stat().st_mode & 0o777, log.parent.stat().st_mode & 0o777) == (
        0o600,
        0o700,
    )


def test_refusal_carries_the_marker_and_the_reason(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, other = upstreams
    result = sbx.run(
        ["curl", "-s", "-i", "--max-time", "20", f"http://other.test:{other.port}/"],
        settings=_settings(allowed.port),
    )
    head, _, body = result.stdout.partition("\n\n")  # text mode folds CRLF
    assert head.startswith("HTTP/1.1 403")
    assert "X-Proxy-Error: blocked-by-srt-kernel" in head
    assert "other.test" in body and str(other.port) in body
    assert "allowedDomains" in body
    assert other.seen == []


def test_https_connect_is_judged_too(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, other = upstreams
    # CONNECT to the allowed upstream opens a tunnel (the TLS handshake then
    # fails against a plain HTTP server); to the other host it is refused.
    ok = sbx.run(
        [
            "curl",
            "-s",
            "-v",
            "--max-time",
            "20",
            f"https://allowed.test:{allowed.port}/",
        ],
        settings=_settings(allowed.port),
    )
    assert "HTTP/1.1 200 Connection established" in ok.stderr
    refused = sbx.run(
        ["curl", "-s", "-v", "--max-time", "20", f"https://other.test:{other.port}/"],
        settings=_settings(allowed.port),
    )
    assert "HTTP/1.1 403" in refused.stderr
    assert other.seen == []


# N8: a client that ignores the proxy variables reaches nothing.
def test_clients_ignoring_the_proxy_reach_nothing(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, _ = upstreams
    pa = allowed.port
    script = (
        f"curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 --noproxy '*' http://127.0.0.1:{pa}/x; "
        f"env -i /usr/bin/curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 http://127.0.0.1:{pa}/y"
    )
    result = sbx.run(["sh", "-c", script], settings=_settings(pa))
    assert result.lines == ["000", "000"]
    assert allowed.seen == []


# N13 and P8: the first connection works; common clients work unchanged.
def test_python_clients_work_first_time(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, _ = upstreams
    url = f"http://allowed.test:{allowed.port}"
    code = (
        "import urllib.request, requests, httpx\n"
        f"print(urllib.request.urlopen('{url}/urllib').read().decode().strip())\n"
        f"print(requests.get('{url}/requests').text.strip())\n"
        f"print(httpx.get('{url}/httpx').text.strip())\n"
    )
    result = sbx.py(code, settings=_settings(allowed.port))
    assert result.status == 0, result.stderr
    assert result.lines == ["hello from allowed"] * 3
    assert allowed.seen == ["/urllib", "/requests", "/httpx"]


def test_git_clone_through_the_proxy(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    # a dumb-HTTP repository served by a local server
    repo = sbx.root / "srv" / "repo"
    repo.mkdir(parents=True)

    def run(*argv: str) -> None:
        subprocess.run(argv, cwd=repo, check=True, capture_output=True)

    run("git", "init", "-q", "-b", "main")
    (repo / "README").write_text("served\n")
    run("git", "add", "README")
    run(
        "git", "-c", "user.name=t", "-c", "user.email=t@t.test", "commit", "-qm", "init"
    )
    bare = sbx.root / "srv" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)

    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(bare.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings = {
            "network": {
                "allowedDomains": [f"git.test:{port}"],
                "hostAddresses": {"git.test": "127.0.0.1"},
            }
        }
        settings["network"]["allowedDomains"].append(f"127.0.0.1:{port}")  # type: ignore[index]
        result = sbx.run(
            ["git", "clone", "-q", f"http://git.test:{port}/repo.git", "copy"],
            settings=settings,
        )
        assert result.status == 0, result.stderr
        assert (sbx.project / "copy" / "README").read_text() == "served\n"
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_gone_means_no_network(sbx: SandboxRunner) -> None:
    # nothing listens on the relay's ports unless the policy allows a host
    code = (
        "import socket, errno\n"
        "try:\n    socket.create_connection(('127.0.0.1', 3128), 5); print('connected')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    assert sbx.py(code).lines == ["ECONNREFUSED"]


def test_loopback_of_the_host_is_not_the_sandboxs(sbx: SandboxRunner) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    listener.settimeout(0.5)
    try:
        result = sbx.run(
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)",
            ]
        )
        assert "ConnectionRefusedError" in result.stderr
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


_INSIDE_SERVER = """
import http.server, subprocess, threading, urllib.error, urllib.request

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"inside")

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}/"
try:
    print("urllib", urllib.request.urlopen(url, timeout=10).read().decode())
except urllib.error.HTTPError as e:
    print("urllib", e.code, e.headers.get("X-Proxy-Error"))
for flags in ([], ["--noproxy", "*"]):
    curl = ["curl", "-s", "--max-time", "10", *flags, url]
    print("curl", *flags, subprocess.run(curl, capture_output=True, text=True).stdout)
"""


# A server started inside the sandbox is the sandbox's own: clients reach it
# directly unless the policy sends loopback to the proxy (a host port allowed).
def test_a_server_inside_the_sandbox_is_reached_without_the_proxy(
    sbx: SandboxRunner, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, _ = upstreams
    names_only = {
        "network": {
            "allowedDomains": ["allowed.test"],
            "hostAddresses": {"allowed.test": "127.0.0.1"},
        }
    }
    direct = sbx.py(_INSIDE_SERVER, settings=names_only)
    assert direct.status == 0, direct.stderr
    assert direct.lines == ["urllib inside", "curl inside", "curl --noproxy * inside"]

    host_port = sbx.py(_INSIDE_SERVER, settings=_settings(allowed.port))
    assert host_port.status == 0, host_port.stderr
    assert host_port.lines[0] == "urllib 403 blocked-by-srt-kernel"
    assert "curl --noproxy '*'" in host_port.lines[1]  # the 403 body's fix
    assert host_port.lines[-1] == "curl --noproxy * inside"
    assert allowed.seen == []


def test_nothing_of_ours_runs_inside_with_a_network(sbx: SandboxRunner) -> None:
    # The proxy's sockets are made in the sandbox's network namespace and
    # held by the launcher: with a network allowed, the sandbox holds only
    # bubblewrap's pid 1 and the command, and the first connection works.
    code = (
        "import os, socket\n"
        "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "s = socket.create_connection(('127.0.0.1', 3128), 5)\n"
        "s.sendall(b'GET http://other.test/ HTTP/1.0\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    )
    result = sbx.py(code, options=["--allow", "allowed.test"])
    assert result.status == 0, result.stderr
    assert result.lines == ["[1, 2]", "HTTP/1.1 403 Forbidden"]


def test_sockets_are_not_made_in_a_process_that_is_not_the_sandbox() -> None:
    # A pid whose parent is not the bubblewrap that reported it (a pid
    # reused after the sandbox ended) is refused before any namespace is
    # joined; so is a pid that is gone.
    from srt_kernel.sandbox.netns import NamespaceError, listen_inside

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(NamespaceError, match="is not the sandbox"):
            listen_inside(child.pid, child.pid + 1, {"http": 0})
    finally:
        child.kill()
        child.wait()
    with pytest.raises(NamespaceError, match="cannot be opened"):
        listen_inside(child.pid, 1, {"http": 0})


def test_nothing_runs_when_the_proxys_sockets_cannot_be_put_in(
    sbx: SandboxRunner,
) -> None:
    # bubblewrap waits (--block-fd) until the launcher has put the proxy's
    # sockets in; when that fails (here: the helper is made to fail) the
    # sandbox is torn down before the command ever runs.
    from srt_kernel.sandbox.plan import PROTECTED_NAMES

    # every protected name there already: no placeholder, whose removal at
    # clean-up would stop a late bubblewrap by chance rather than by design
    for name, kind, _ in PROTECTED_NAMES:
        path = sbx.project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            path.mkdir(exist_ok=True)
        else:
            path.touch()
    marker = sbx.project / f"ran-{os.getpid()}"
    driver = f"""
import os, subprocess, sys, time
from srt_kernel import locations, policy as pol
from srt_kernel.hosts import parse_pattern
from srt_kernel.sandbox import bwrap, netns

def refuse(*args, **kwargs):
    raise netns.NamespaceError("refused for the test")

netns.listen_inside = refuse
policy = pol.with_options(
    locations.load_policy(base_dir=os.getcwd()),
    allow=[parse_pattern("allowed.test", field="--allow", source="test")],
)
sandbox = bwrap.Sandbox(
    policy, ["/bin/sh", "-c", "sleep 0.3; touch {marker}"], cwd=os.getcwd()
)
try:
    sandbox.start(stdin=subprocess.DEVNULL)
except netns.NamespaceError as exc:
    print("refused:", exc)
time.sleep(1.5)  # a launcher that lives on (a kernel, an IPython session)
"""
    result = subprocess.run(
        [sys.executable, "-c", driver],
        cwd=sbx.project,
        env=sbx.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "refused: refused for the test", result.stderr
    assert not marker.exists()
