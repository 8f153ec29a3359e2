"""The relay against a real ipykernel (inner.py, ipc) and a real frontend.

Each test starts ``python -m srt_kernel.kernel.inner`` as a plain
subprocess (no sandbox: that is the launcher's part) and the relay in this
process, then drives it with jupyter_client's BlockingKernelClient over the
relay's TCP ports.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client import BlockingKernelClient

from srt_kernel.errors import KernelError
from srt_kernel.kernel import checks, messages
from srt_kernel.kernel.connection import CHANNELS
from srt_kernel.kernel.relay import Connection, Output, Relay, check_socket_file

TIMEOUT = 60


class Inner:
    """An inner kernel started as a plain subprocess on ipc sockets."""

    def __init__(self, directory: Path, seccomp: bool = False) -> None:
        self.directory = directory
        self.info = {
            "transport": "ipc",
            "ip": str(directory / "kernel"),
            "shell_port": 1,
            "iopub_port": 2,
            "stdin_port": 3,
            "control_port": 4,
            "hb_port": 5,
            "key": secrets.token_hex(16),
            "signature_scheme": "hmac-sha256",
        }
        self.path = directory / "inner.json"
        self.path.write_text(json.dumps(self.info))
        self.log = (directory / "inner.log").open("wb")
        flag = "--seccomp" if seccomp else "--no-seccomp"
        env = dict(os.environ, JPY_PARENT_PID="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "srt_kernel.kernel.inner",
                flag,
                "-f",
                str(self.path),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + TIMEOUT
        paths = [f"{self.info['ip']}-{n}" for n in range(1, 6)]
        while not all(Path(p).exists() for p in paths):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.output())
            time.sleep(0.05)

    def output(self) -> str:
        self.log.flush()
        return (self.directory / "inner.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.log.close()


class Setup:
    def __init__(self, tmp_path: Path, seccomp: bool = False, **relay: Any) -> None:
        tmp_path.chmod(0o700)
        self.inner = Inner(tmp_path, seccomp=seccomp)
        self.frontend_info = {
            "transport": "tcp",
            "ip": "127.0.0.1",
            "shell_port": 0,
            "iopub_port": 0,
            "stdin_port": 0,
            "control_port": 0,
            "hb_port": 0,
            "key": secrets.token_hex(16),
            "signature_scheme": "hmac-sha256",
        }
        self.idle: list[str] = []
        self.relay = Relay(
            Connection.from_dict(self.frontend_info),
            Connection.from_dict(self.inner.info),
            **relay,
        )
        self.relay.start()
        for channel, port in self.relay.frontend_ports.items():
            self.frontend_info[f"{channel}_port"] = port
        self.client = self.new_client()

    def new_client(self) -> BlockingKernelClient:
        client = BlockingKernelClient()
        client.load_connection_info(self.frontend_info)
        client.start_channels()
        client.wait_for_ready(timeout=TIMEOUT)
        return client

    def close(self) -> None:
        self.client.stop_channels()
        self.relay.stop()
        self.inner.stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    s.close()


def run(
    client: BlockingKernelClient, code: str, **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute ``code``; return the reply and the iopub messages of the cell."""
    outputs: list[dict[str, Any]] = []
    reply = client.execute_interactive(
        code, timeout=TIMEOUT, output_hook=outputs.append, **kw
    )
    return reply, outputs


def of_type(outputs: list[dict[str, Any]], msg_type: str) -> list[dict[str, Any]]:
    return [m for m in outputs if m["msg_type"] == msg_type]


def test_execute_stream_and_result(setup: Setup) -> None:
    reply, outputs = run(setup.client, "print('hello'); 6 * 7")
    assert reply["content"]["status"] == "ok"
    assert [m["content"]["text"] for m in of_type(outputs, "stream")] == ["hello\n"]
    results = of_type(outputs, "execute_result")
    assert results[0]["content"]["data"]["text/plain"] == "42"
    # Re-signed with the frontend's key: the client verified every message.
    assert reply["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]


def test_kernel_info_has_banner_and_no_debugger(tmp_path: Path) -> None:
    s = Setup(tmp_path, banner="Python (sandboxed) under policy X")
    try:
        s.client.kernel_info()
        reply = s.client.get_shell_msg(timeout=TIMEOUT)
        assert reply["content"]["banner"] == "Python (sandboxed) under policy X"
        assert reply["content"]["debugger"] is False
        assert reply["content"]["language_info"]["name"] == "python"
    finally:
        s.close()


# Active content in each output kind arrives cleaned (the browser cases B1, B2).
@pytest.mark.parametrize(
    ("code", "mime", "absent", "present"),
    [
        (
            "from IPython.display import HTML, display\n"
            "display(HTML('<b>x</b><script>fetch(\"/api/kernels\")</script>'))",
            "text/html",
            "<script",
            "<b>x</b>",
        ),
        (
            "from IPython.display import HTML, display\n"
            "display(HTML('<img src=x onerror=\"fetch(1)\">'))",
            "text/html",
            "onerror",
            "<img",
        ),
        (
            "from IPython.display import SVG, display\n"
            'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" '
            'onload="fetch(1)"><circle r="1"/></svg>\'))',
            "image/svg+xml",
            "onload",
            "<circle",
        ),
    ],
)
def test_active_output_is_cleaned(
    setup: Setup, code: str, mime: str, absent: str, present: str
) -> None:
    _, outputs = run(setup.client, code)
    (display,) = of_type(outputs, "display_data")
    value = display["content"]["data"][mime]
    assert absent not in value
    assert present in value


def test_javascript_output_becomes_a_note(setup: Setup) -> None:
    _, outputs = run(
        setup.client,
        "from IPython.display import Javascript, display\n"
        'display(Javascript(\'fetch("/api/contents", {method: "PUT"})\'))',
    )
    (display,) = of_type(outputs, "display_data")
    data = display["content"]["data"]
    assert "application/javascript" not in data
    assert data["text/plain"].startswith("[srt-kernel] Removed application/javascript")


def test_allow_active_output_passes_script(tmp_path: Path) -> None:
    s = Setup(tmp_path, allow_active_output=True)
    try:
        _, outputs = run(
            s.client,
            "from IPython.display import HTML, display\n"
            "display(HTML('<script>1</script>'))",
        )
        (display,) = of_type(outputs, "display_data")
        assert display["content"]["data"]["text/html"] == "<script>1</script>"
    finally:
        s.close()


def test_input_round_trip(setup: Setup) -> None:
    reply, outputs = run(
        setup.client,
        "x = input('name? ')\nprint('got', x)",
        allow_stdin=True,
        stdin_hook=lambda msg: setup.client.input("srt"),
    )
    assert reply["content"]["status"] == "ok"
    assert "got srt\n" in [m["content"]["text"] for m in of_type(outputs, "stream")]


def test_interrupt_via_relay(setup: Setup) -> None:
    client = setup.client
    msg_id = client.execute(
        "import time\nprint('start', flush=True)\nwhile True: time.sleep(0.01)"
    )
    # Wait for the loop to be running before interrupting it.
    while True:
        msg = client.get_iopub_msg(timeout=TIMEOUT)
        if msg["msg_type"] == "stream" and msg["parent_header"]["msg_id"] == msg_id:
            break
    setup.relay.interrupt()
    reply = client.get_shell_msg(timeout=TIMEOUT)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # The kernel's reply to the supervisor's own interrupt_request is not
    # passed to the frontend.
    with pytest.raises(queue.Empty):
        client.get_control_msg(timeout=1)


def test_complete_and_inspect(setup: Setup) -> None:
    run(setup.client, "alpha_value = 1")
    setup.client.complete("alpha_v", 7)
    reply = setup.client.get_shell_msg(timeout=TIMEOUT)
    assert reply["msg_type"] == "complete_reply"
    assert "alpha_value" in reply["content"]["matches"]
    setup.client.inspect("alpha_value", 11)
    reply = setup.client.get_shell_msg(timeout=TIMEOUT)
    assert reply["msg_type"] == "inspect_reply"
    assert reply["content"]["found"] is True


def test_comm_open_with_html_widget_value_is_cleaned(setup: Setup) -> None:
    code = (
        "from comm import create_comm\n"
        "c = create_comm(target_name='jupyter.widget', data={'state': {"
        "'_model_name': 'HTMLModel', 'value': '<img src=x onerror=alert(1)>ok'},"
        " 'buffer_paths': []})\n"
        "c.send({'method': 'update', 'state': {'value': '<script>x</script>hi'}})"
    )
    _, outputs = run(setup.client, code)
    (opened,) = of_type(outputs, "comm_open")
    assert opened["content"]["data"]["state"]["value"] == '<img src="x">ok'
    (update,) = of_type(outputs, "comm_msg")
    assert update["content"]["data"]["state"]["value"] == "hi"


# Messages the cell forges on the kernel's own sockets get nothing past.
FORGERIES = [
    # iopub output whose parent the frontend never sent
    "k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'FORGED'},"
    " parent={'msg_id': 'never-sent', 'session': 'x', 'msg_type': 'execute_request'})",
    # a status idle for a request that never existed
    "k.session.send(k.iopub_socket, 'status', {'execution_state': 'idle'},"
    " parent={'msg_id': 'never', 'session': 'y', 'msg_type': 'execute_request'})",
    # output claiming to be the supervisor's own report: marker stripped
    "k.session.send(k.iopub_socket, 'display_data', {'data': {'text/plain': 'FORGED'},"
    " 'metadata': {'srt_kernel': {'kind': 'block'}}}, parent=k.get_parent('shell'),"
    " metadata={'srt_kernel': {'kind': 'block'}})",
    # a message type iopub does not carry from a kernel
    "k.session.send(k.iopub_socket, 'execute_request', {'code': 'FORGED'},"
    " parent=k.get_parent('shell'))",
    # a second execute_reply to a request that will get its own
    "k.session.send(k.shell_stream, 'execute_reply', {'status': 'ok', 'FORGED': 1},"
    " parent={'msg_id': 'never', 'session': 'z', 'msg_type': 'execute_request'},"
    " ident=k._parent_ident['shell'])",
]


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_messages_from_inside_are_dropped(setup: Setup, forge: str) -> None:
    reply, outputs = run(setup.client, "k = get_ipython().kernel\n_ = " + forge)
    assert reply["content"]["status"] == "ok"
    assert "FORGED" not in json.dumps(reply, default=str)
    # execute_input echoes the cell's code, which names the forgery.
    outputs = [m for m in outputs if m["msg_type"] != "execute_input"]
    assert {m["msg_type"] for m in outputs} <= {"status", "display_data"}
    for msg in outputs:
        assert checks.MARKER not in msg["metadata"]
        assert checks.MARKER not in json.dumps(msg["content"], default=str)
    # Nothing unsolicited waits on shell either.
    with pytest.raises(queue.Empty):
        setup.client.get_shell_msg(timeout=1)
    # The kernel still works.
    reply, _ = run(setup.client, "1")
    assert reply["content"]["status"] == "ok"


def test_message_with_wrong_key_is_dropped(setup: Setup) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{setup.relay.frontend_ports['shell']}")
    try:
        wrong = messages.Signer(b"not-the-key")
        header = messages.new_header("kernel_info_request", "attacker")
        msg = messages.Message([], header, {}, {}, {})
        sock.send_multipart(messages.serialize(msg, wrong))
        assert sock.poll(2000) == 0
        right = messages.Signer(setup.frontend_info["key"].encode())
        msg.header = messages.new_header("kernel_info_request", "attacker")
        sock.send_multipart(messages.serialize(msg, right))
        assert sock.poll(TIMEOUT * 1000) == zmq.POLLIN
        reply = messages.parse(sock.recv_multipart(), right)
        assert reply.msg_type == "kernel_info_reply"
        # Replaying the same signed frames is refused.
        sock.send_multipart(messages.serialize(msg, right))
        assert sock.poll(2000) == 0
    finally:
        sock.close()


def test_injected_output_between_busy_and_idle(tmp_path: Path) -> None:
    def on_idle(request: checks.Request) -> list[Output]:
        if request.msg_type != "execute_request":
            return []
        text = {"name": "stderr", "text": "blocked: example.test:443\n"}
        return [Output("stream", text, {"kind": "block"})]

    s = Setup(tmp_path, on_idle=on_idle)
    try:
        msg_id = s.client.execute("1")
        seen = []
        while True:
            msg = s.client.get_iopub_msg(timeout=TIMEOUT)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if (
                msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                break
        kinds = [m["msg_type"] for m in seen]
        assert kinds[-2:] == ["stream", "status"]
        assert seen[-2]["metadata"][checks.MARKER] == {"kind": "block"}
        assert seen[-2]["content"]["text"] == "blocked: example.test:443\n"
    finally:
        s.close()


def test_symlinked_socket_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.sock"
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"ipc://{real}")
    try:
        link = tmp_path / "kernel-1"
        link.symlink_to(real)
        with pytest.raises(KernelError, match="not a socket file"):
            check_socket_file(str(link))
        check_socket_file(str(real))
        (tmp_path / "plain").write_text("x")
        with pytest.raises(KernelError, match="not a socket file"):
            check_socket_file(str(tmp_path / "plain"))
    finally:
        sock.close(linger=0)


def test_seccomp_inner_kernel_runs_cells_and_refuses_unix_sockets(
    tmp_path: Path,
) -> None:
    pytest.importorskip("srt_kernel.sandbox.seccomp")
    s = Setup(tmp_path, seccomp=True)
    try:
        reply, outputs = run(
            s.client,
            "import socket\ntry:\n    socket.socket(socket.AF_UNIX)\n"
            "except OSError as e:\n    print('errno', e.errno)",
        )
        assert reply["content"]["status"] == "ok"
        assert [m["content"]["text"] for m in of_type(outputs, "stream")] == [
            "errno 1\n"
        ]
    finally:
        s.close()


def test_a_frontend_connected_before_the_relay_binds_is_served(
    tmp_path: Path,
) -> None:
    # The supervisor holds the frontend's ports from its first moment
    # (reserve_ports) and hands them to ZeroMQ later: a frontend that
    # connected and sent a request in between is answered, and its iopub
    # subscription holds for the first cell.
    from srt_kernel.kernel.connection import reserve_ports

    tmp_path.chmod(0o700)
    probes = [socket.create_server(("127.0.0.1", 0)) for _ in range(5)]
    ports = [p.getsockname()[1] for p in probes]
    for p in probes:
        p.close()
    info = {
        "transport": "tcp",
        "ip": "127.0.0.1",
        **{f"{c}_port": port for c, port in zip(CHANNELS, ports, strict=True)},
        "key": secrets.token_hex(16),
        "signature_scheme": "hmac-sha256",
    }
    reserved = reserve_ports(Connection.from_dict(info))
    assert sorted(reserved) == sorted(CHANNELS)
    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels()
    inner = Inner(tmp_path)
    relay = Relay(Connection.from_dict(info), Connection.from_dict(inner.info))
    try:
        msg_id = client.execute("print('early')")
        time.sleep(0.3)  # the request waits in the reserved socket's backlog
        relay.bind_frontend(reserved)
        relay.start()
        assert all(sock.fileno() == -1 for sock in reserved.values())
        reply = client.get_shell_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"
        texts = []
        while True:
            msg = client.get_iopub_msg(timeout=TIMEOUT)
            if msg["msg_type"] == "stream":
                texts.append(msg["content"]["text"])
            if msg["content"].get("execution_state") == "idle":
                break
        assert texts == ["early\n"]
    finally:
        client.stop_channels()
        relay.stop()
        inner.stop()
