"""Benchmark of the filtering proxy on loopback (not a test).

Run ``.venv/bin/python benchmarks/proxy_bench.py``.  It prints a table and
writes ``benchmarks/results/proxy.json``.  Measured in one run, through the
proxy's CONNECT tunnel and directly, to local sink/source servers:

* throughput of one tunnel moving 1 GiB up, and 1 GiB down, in rounds of
  one direct and one proxied run (5 by default; medians are reported),
  with a plain byte relay (socat, if installed) in the same rounds as the
  machine's reference for what any relay can do here;
* connection set-ups per second (connect, CONNECT, one byte each way);
* 1,000 concurrent tunnels each moving 64 KiB, all completing without error;
* srt's proxy, if ``npm install @anthropic-ai/sandbox-runtime`` works and
  its proxy can be started on its own; otherwise the output says why not.

The sink and the proxy run in processes of their own, as a server and
srt-kernel's launcher do in use, so no two parties share an interpreter.
Every socket is on 127.0.0.1; the run is bounded in bytes and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from srt_kernel.hosts import parse_pattern  # noqa: E402
from srt_kernel.policy import NetworkPolicy  # noqa: E402
from srt_kernel.proxy.resolver import StaticResolver  # noqa: E402
from srt_kernel.proxy.server import ProxyServer  # noqa: E402

GIB = 1 << 30
BLOCK = 1 << 20


# -- the local sink/source server ------------------------------------------------


async def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < count:
        piece = await loop.sock_recv(sock, count - len(data))
        if not piece:
            raise ConnectionError("the client closed early")
        data += piece
    return data


async def _serve(sock: socket.socket) -> None:
    """'U': count bytes to EOF, reply the count; 'D'+n: send n bytes; 'P': pong.

    Both directions use the loop's socket calls on one 1 MiB buffer, so the
    sink copies nothing in Python and costs the same up and down: the
    clients below do the same with blocking calls.
    """
    loop = asyncio.get_running_loop()
    try:
        mode = await _recv_exactly(sock, 1)
        if mode == b"U":
            buffer = bytearray(BLOCK)
            total = 0
            while count := await loop.sock_recv_into(sock, buffer):
                total += count
            await loop.sock_sendall(sock, struct.pack("!Q", total))
        elif mode == b"D":
            (count,) = struct.unpack("!Q", await _recv_exactly(sock, 8))
            block = memoryview(bytes(BLOCK))
            while count:
                piece = block[: min(count, BLOCK)]
                await loop.sock_sendall(sock, piece)
                count -= len(piece)
        elif mode == b"P":
            await loop.sock_sendall(sock, b"p")
    except OSError:
        pass
    finally:
        sock.close()


async def _accept(listener: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _address = await loop.sock_accept(listener)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(_serve(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def start_sink() -> tuple[int, Callable[[], None]]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    listener.setblocking(False)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        tasks = {loop.create_task(_accept(listener))}
        loop.run_forever()
        tasks |= asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return int(listener.getsockname()[1]), stop


# -- the parties, each in a process of its own ---------------------------------


class Party:
    """A child process that serves on 127.0.0.1.

    Our own roles print their port and run until their stdin closes; a
    program given ``port`` is waited for until it accepts, and stopped with
    SIGTERM.  ``cpu()`` is the CPU time it and its reaped children have
    used, to tell this benchmark's load from other processes'.
    """

    def __init__(self, argv: list[str], name: str, port: int | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.own_role = port is None
        if port is None:
            assert self.process.stdout is not None
            line = self.process.stdout.readline().strip()
            if not line.isdigit():
                self.stop()
                raise RuntimeError(f"{name} did not start (printed {line!r})")
            port = int(line)
        else:
            self._wait_until_accepting(port)
        self.port = port

    def _wait_until_accepting(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on port {port}")

    def cpu(self) -> float:
        """CPU-seconds of the process, its reaped children and its live ones
        (socat serves each connection in a child of its own)."""
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
                children = [int(child) for child in f.read().split()]
        except OSError:
            children = []
        ticks = _ticks(pid) + sum(_ticks(child) for child in children)
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        if not self.own_role:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _ticks(pid: int) -> int:
    """Clock ticks a process and its reaped children used."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0
    return sum(int(value) for value in fields[11:15])


def role_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]


def serve_until_stdin_closes(port: int) -> None:
    print(port, flush=True)
    sys.stdin.read()


def run_sink_role() -> None:
    port, stop = start_sink()
    serve_until_stdin_closes(port)
    stop()


def run_proxy_role(target: int) -> None:
    """srt-kernel's proxy as a launcher runs it: a thread of an idle process."""
    net = NetworkPolicy(allowed=(parse_pattern(f"127.0.0.1:{target}", field="bench"),))
    proxy = ProxyServer(net, resolver=StaticResolver({}), tcp=True)
    proxy.start()
    serve_until_stdin_closes(proxy.http_port)
    proxy.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_relay(target: int) -> Party | str:
    """socat relaying a port to the sink, or why there is none.

    A plain relay has no policy and no CONNECT, and is written in C: it is
    the reference for what moving bytes through a third process costs on
    this machine.  It copies through a 4 MiB buffer, as our tunnels do.
    """
    socat = shutil.which("socat")
    if socat is None:
        return "not measured: socat is not installed"
    port = _free_port()
    argv = [
        socat, "-b", str(4 << 20),
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
        f"TCP:127.0.0.1:{target}",
    ]  # fmt: skip
    try:
        return Party(argv, "socat", port=port)
    except RuntimeError as error:
        return f"not measured: {error}"


# -- clients --------------------------------------------------------------

#: How a client reaches the sink: directly (None), through an HTTP proxy's
#: CONNECT (``("connect", port)``) or through a plain relay (``("relay", port)``).
Route = tuple[str, int] | None


def open_conn(target_port: int, route: Route) -> socket.socket:
    if route is None:
        return socket.create_connection(("127.0.0.1", target_port), timeout=60)
    kind, port = route
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    if kind == "relay":
        return sock
    sock.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1024)
        if not piece:
            raise ConnectionError("proxy closed during CONNECT")
        head += piece
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"proxy refused: {head[:80]!r}")
    return sock


def recv_all(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = sock.recv(count - len(data))
        if not piece:
            raise ConnectionError("short read")
        data += piece
    return data


def upload(target: int, route: Route, size: int) -> float:
    block = b"\0" * BLOCK
    with open_conn(target, route) as sock:
        start = time.perf_counter()
        sock.sendall(b"U")
        sent = 0
        while sent < size:
            sock.sendall(block)
            sent += BLOCK
        sock.shutdown(socket.SHUT_WR)
        (total,) = struct.unpack("!Q", recv_all(sock, 8))
        elapsed = time.perf_counter() - start
    if total != size:
        raise RuntimeError(f"sink got {total} of {size} bytes")
    return size / elapsed


def download(target: int, route: Route, size: int) -> float:
    buffer = bytearray(BLOCK)
    with open_conn(target, route) as sock:
        start = time.perf_counter()
        sock.sendall(b"D" + struct.pack("!Q", size))
        got = 0
        while got < size:
            count = sock.recv_into(buffer)
            if not count:
                break
            got += count
        elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"received {got} of {size} bytes")
    return size / elapsed


def _machine_busy() -> float | None:
    """CPU-seconds the whole machine has spent busy (Linux /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu(parties: list[Party]) -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + sum(party.cpu() for party in parties)


def compare(
    func: Callable[[int, Route, int], float],
    target: int,
    routes: dict[str, Route],
    size: int,
    repeat: int,
    parties: list[Party],
) -> dict[str, Any]:
    """``repeat`` rounds of one direct run and one run through each route.

    The order of the runs turns by one each round.  The machine may be busy
    with other work: each round's ratios compare runs made one after the
    other, medians are reported, and so is the share of the machine's CPU
    that other processes used in each round.
    """
    names = ["direct", *routes]
    speeds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in routes}
    other_load = []
    for round_ in range(repeat):
        busy, own, start = _machine_busy(), _own_cpu(parties), time.perf_counter()
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        this_round = {
            name: func(target, None if name == "direct" else routes[name], size)
            for name in order
        }
        for name in names:
            speeds[name].append(this_round[name])
        for name in routes:
            ratios[name].append(this_round[name] / this_round["direct"])
        busy_after = _machine_busy()
        if busy is not None and busy_after is not None:
            others = busy_after - busy - (_own_cpu(parties) - own)
            elapsed = time.perf_counter() - start
            other_load.append(
                round(max(0.0, others) / elapsed / (os.cpu_count() or 1), 2)
            )

    def summary(name: str) -> dict[str, Any]:
        return {
            "MBps": round(statistics.median(speeds[name]) / 1e6, 1),
            "ratio": round(statistics.median(ratios[name]), 3),
            "ratios": [round(r, 3) for r in ratios[name]],
        }

    ours = summary("proxy")
    result: dict[str, Any] = {
        "direct_MBps": round(statistics.median(speeds["direct"]) / 1e6, 1),
        "proxy_MBps": ours["MBps"],
        "ratio": ours["ratio"],
        "ratios": ours["ratios"],
        "other_load": other_load,
    }
    if "relay" in routes:
        result["relay"] = summary("relay")
    return result


def setups_per_second(target: int, route: Route, seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        with open_conn(target, route) as sock:
            sock.sendall(b"P")
            if recv_all(sock, 1) != b"p":
                raise RuntimeError("bad pong")
        count += 1
    return count / (time.perf_counter() - start)


async def _one_tunnel(target: int, proxy: int, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    writer.write(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"refused: {head[:60]!r}")
    writer.write(b"U" + b"\1" * size)
    await writer.drain()
    writer.write_eof()
    (total,) = struct.unpack("!Q", await reader.readexactly(8))
    writer.close()
    if total != size:
        raise RuntimeError(f"tunnel moved {total} of {size}")


def concurrent_tunnels(
    target: int, proxy: int, count: int, size: int
) -> dict[str, Any]:
    async def run() -> list[BaseException | None]:
        tasks: list[Awaitable[None]] = [
            _one_tunnel(target, proxy, size) for _ in range(count)
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    start = time.perf_counter()
    outcome = asyncio.run(asyncio.wait_for(run(), 300))
    elapsed = time.perf_counter() - start
    errors = [repr(o) for o in outcome if isinstance(o, BaseException)]
    return {
        "tunnels": count,
        "bytes_each": size,
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 3),
    }


# -- srt ------------------------------------------------------------------


SRT_SCRIPT = """
import {{ createHttpProxyServer }} from {module};
const server = createHttpProxyServer({{
  filter: (port, host) => host === "127.0.0.1" && port === {target},
}});
server.listen(0, "127.0.0.1", () => {{
  process.stdout.write(String(server.address().port) + "\\n");
}});
"""


def try_srt(target: int, size: int, setup_seconds: float) -> dict[str, Any]:
    """Install srt from npm in a temporary directory and measure its proxy.

    srt's HTTP proxy module exports ``createHttpProxyServer``; it is started
    on its own under node with a filter allowing only the sink, and measured
    exactly like ours.
    """
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return {"status": "not compared: npm or node is not installed"}
    with tempfile.TemporaryDirectory(prefix="srt-bench-") as tmp:
        try:
            result = subprocess.run(
                [npm, "install", "--prefix", tmp, "--no-audit", "--no-fund",
                 "@anthropic-ai/sandbox-runtime"],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"status": "not compared: npm install timed out after 300 s"}
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            return {"status": "not compared: npm install failed", "npm": tail}
        package = Path(tmp, "node_modules", "@anthropic-ai", "sandbox-runtime")
        version = json.loads((package / "package.json").read_text()).get("version")
        module = package / "dist" / "sandbox" / "http-proxy.js"
        if not module.is_file():
            return {
                "status": "not compared: srt has no dist/sandbox/http-proxy.js "
                "to start on its own",
                "version": version,
            }
        script = Path(tmp, "start-srt-proxy.mjs")
        script.write_text(
            SRT_SCRIPT.format(module=json.dumps(module.as_uri()), target=target)
        )
        process = subprocess.Popen(
            [node, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.isdigit():
                process.kill()
                error = process.communicate(timeout=10)[1].strip().splitlines()[-3:]
                return {
                    "status": "not compared: srt's proxy did not start on its own",
                    "version": version,
                    "node": error,
                }
            route = ("connect", int(line))
            return {
                "status": f"measured srt {version} createHttpProxyServer under node",
                "version": version,
                "upload_MBps": round(upload(target, route, size) / 1e6, 1),
                "download_MBps": round(download(target, route, size) / 1e6, 1),
                "setups_per_s": round(
                    setups_per_second(target, route, setup_seconds), 1
                ),
            }
        finally:
            process.kill()
            process.wait(10)


# -- main -----------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=GIB, help="bytes per tunnel run")
    parser.add_argument(
        "--repeat", type=int, default=5, help="rounds of each throughput comparison"
    )
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--setup-seconds", type=float, default=3.0)
    parser.add_argument("--skip-srt", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy.json"
    )
    parser.add_argument("--role", choices=("sink", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sink":
        run_sink_role()
        return 0
    if args.role == "proxy":
        run_proxy_role(args.target)
        return 0

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    parties: list[Party] = []
    results: dict[str, Any] = {"size": args.size, "repeat": args.repeat}
    try:
        sink = Party(role_argv("sink"), "sink")
        parties.append(sink)
        target = sink.port
        proxy = Party(role_argv("proxy", "--target", str(target)), "proxy")
        parties.append(proxy)
        routes: dict[str, Route] = {"proxy": ("connect", proxy.port)}
        relay = start_relay(target)
        if isinstance(relay, Party):
            parties.append(relay)
            routes["relay"] = ("relay", relay.port)
            results["relay"] = {"status": "measured socat (TCP-LISTEN to TCP)"}
        else:
            results["relay"] = {"status": relay}
        rows: list[tuple[str, float, float, float]] = []
        for label, func in (("upload", upload), ("download", download)):
            result = compare(func, target, routes, args.size, args.repeat, parties)
            results[label] = result
            rows.append(
                (
                    f"1 tunnel, {label} MB/s",
                    result["direct_MBps"],
                    result["proxy_MBps"],
                    result["ratio"],
                )
            )
        direct = setups_per_second(target, None, args.setup_seconds)
        proxied = setups_per_second(target, routes["proxy"], args.setup_seconds)
        rows.append(("connection set-ups / s", direct, proxied, proxied / direct))
        results["setups"] = {
            "direct_per_s": round(direct, 1),
            "proxy_per_s": round(proxied, 1),
            "ratio": round(proxied / direct, 3),
        }
        results["concurrent"] = concurrent_tunnels(
            target, proxy.port, args.tunnels, 65536
        )
        proxy.stop()
        if args.skip_srt:
            results["srt"] = {"status": "skipped (--skip-srt)"}
        else:
            results["srt"] = try_srt(target, args.size, args.setup_seconds)
    finally:
        for party in reversed(parties):
            party.stop()

    print(f"{'measure':<28}{'direct':>12}{'proxy':>12}{'ratio':>8}")
    for name, direct_value, proxy_value, ratio in rows:
        print(f"{name:<28}{direct_value:>12.1f}{proxy_value:>12.1f}{ratio:>8.2f}")
    c = results["concurrent"]
    print(
        f"{c['tunnels']} concurrent tunnels x {c['bytes_each']} B: "
        f"{c['errors']} errors in {c['seconds']} s"
    )
    for label in ("upload", "download"):
        rounds = results[label]
        ratios = " ".join(f"{r:.2f}" for r in rounds["ratios"])
        load = " ".join(f"{round(100 * v)}%" for v in rounds["other_load"])
        print(f"{label} ratio of each round: {ratios}  (CPU used by others: {load})")
        if "relay" in rounds:
            relay_rounds = rounds["relay"]
            print(
                f"  plain relay (socat), {label}: {relay_rounds['MBps']} MB/s, "
                "ratio of each round: "
                + " ".join(f"{r:.2f}" for r in relay_rounds["ratios"])
            )
    print(f"plain relay: {results['relay']['status']}")
    srt = results["srt"]
    print(f"srt: {srt['status']}")
    if "upload_MBps" in srt:
        print(
            f"srt proxy: upload {srt['upload_MBps']} MB/s, download "
            f"{srt['download_MBps']} MB/s, {srt['setups_per_s']} set-ups/s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if c["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
