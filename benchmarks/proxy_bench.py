"""Benchmark of the filtering proxy on loopback (not a test).

Run ``.venv/bin/python benchmarks/proxy_bench.py``.  It prints a table and
writes ``benchmarks/results/proxy.json``.  Measured in one run, through the
proxy's CONNECT tunnel and directly, to local sink/source servers:

* throughput of one tunnel moving 1 GiB up, and 1 GiB down, in rounds of
  one direct and one proxied run (3 by default; medians are reported);
* connection set-ups per second (connect, CONNECT, one byte each way);
* 1,000 concurrent tunnels each moving 64 KiB, all completing without error;
* srt's proxy, if ``npm install @anthropic-ai/sandbox-runtime`` works and
  its proxy can be started on its own; otherwise the output says why not.

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


# -- clients --------------------------------------------------------------


def open_conn(target_port: int, proxy_port: int | None) -> socket.socket:
    if proxy_port is None:
        return socket.create_connection(("127.0.0.1", target_port), timeout=60)
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=60)
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


def upload(target: int, proxy: int | None, size: int) -> float:
    block = b"\0" * BLOCK
    with open_conn(target, proxy) as sock:
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


def download(target: int, proxy: int | None, size: int) -> float:
    buffer = bytearray(BLOCK)
    with open_conn(target, proxy) as sock:
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


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def compare(
    func: Callable[[int, int | None, int], float],
    target: int,
    proxy: int,
    size: int,
    repeat: int,
) -> dict[str, Any]:
    """``repeat`` rounds of one direct and one proxied run, in turn first.

    The machine may be busy with other work: each round's ratio compares
    two runs made one after the other, the medians are reported, and so is
    the share of the machine's CPU that other processes used in each round.
    """
    directs, proxied, ratios, other_load = [], [], [], []
    for round_ in range(repeat):
        busy, own, start = _machine_busy(), _own_cpu(), time.perf_counter()
        if round_ % 2:
            through = func(target, proxy, size)
            direct = func(target, None, size)
        else:
            direct = func(target, None, size)
            through = func(target, proxy, size)
        directs.append(direct)
        proxied.append(through)
        ratios.append(through / direct)
        busy_after = _machine_busy()
        if busy is not None and busy_after is not None:
            others = busy_after - busy - (_own_cpu() - own)
            elapsed = time.perf_counter() - start
            other_load.append(
                round(max(0.0, others) / elapsed / (os.cpu_count() or 1), 2)
            )
    return {
        "direct_MBps": round(statistics.median(directs) / 1e6, 1),
        "proxy_MBps": round(statistics.median(proxied) / 1e6, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "other_load": other_load,
    }


def setups_per_second(target: int, proxy: int | None, seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        with open_conn(target, proxy) as sock:
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
            port = int(line)
            return {
                "status": f"measured srt {version} createHttpProxyServer under node",
                "version": version,
                "upload_MBps": round(upload(target, port, size) / 1e6, 1),
                "download_MBps": round(download(target, port, size) / 1e6, 1),
                "setups_per_s": round(
                    setups_per_second(target, port, setup_seconds), 1
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
        "--repeat", type=int, default=3, help="rounds of each throughput pair"
    )
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--setup-seconds", type=float, default=3.0)
    parser.add_argument("--skip-srt", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "proxy.json"
    )
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    target, stop_sink = start_sink()
    net = NetworkPolicy(allowed=(parse_pattern(f"127.0.0.1:{target}", field="bench"),))
    proxy = ProxyServer(net, resolver=StaticResolver({}), tcp=True)
    proxy.start()
    port = proxy.http_port
    results: dict[str, Any] = {"size": args.size, "repeat": args.repeat}
    try:
        rows: list[tuple[str, float, float, float]] = []
        for label, func in (("upload", upload), ("download", download)):
            result = compare(func, target, port, args.size, args.repeat)
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
        proxied = setups_per_second(target, port, args.setup_seconds)
        rows.append(("connection set-ups / s", direct, proxied, proxied / direct))
        results["setups"] = {
            "direct_per_s": round(direct, 1),
            "proxy_per_s": round(proxied, 1),
            "ratio": round(proxied / direct, 3),
        }
        results["concurrent"] = concurrent_tunnels(target, port, args.tunnels, 65536)
        proxy.stop()
        if args.skip_srt:
            results["srt"] = {"status": "skipped (--skip-srt)"}
        else:
            results["srt"] = try_srt(target, args.size, args.setup_seconds)
    finally:
        proxy.stop()
        stop_sink()

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
