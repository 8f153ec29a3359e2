"""Wire format (messages.py) and the outbound rules (checks.py), no sockets."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from srt_kernel.errors import KernelError
from srt_kernel.kernel import checks, messages
from srt_kernel.kernel.messages import Message, Signer

FRONT = Signer(b"frontend-key")
INNER = Signer(b"inner-key")


def frames(msg_type: str = "execute_request", **parts: Any) -> list[bytes]:
    msg = Message(
        idents=parts.pop("idents", [b"client"]),
        header=parts.pop("header", messages.new_header(msg_type, "sess")),
        parent=parts.pop("parent", {}),
        metadata=parts.pop("metadata", {}),
        content=parts.pop("content", {"code": "1"}),
        buffers=parts.pop("buffers", []),
    )
    return messages.serialize(msg, parts.pop("signer", FRONT))


def test_parse_round_trip_keeps_idents_and_buffers() -> None:
    raw = frames(idents=[b"a", b"b"], buffers=[b"\x00bin"])
    msg = messages.parse(raw, FRONT)
    assert msg.idents == [b"a", b"b"]
    assert msg.buffers == [b"\x00bin"]
    assert msg.msg_type == "execute_request"
    assert msg.content == {"code": "1"}


def test_resign_changes_only_the_signature() -> None:
    raw = frames()
    out = messages.resign(raw, FRONT, INNER)
    assert out[:2] == raw[:2] and out[3:] == raw[3:]
    assert messages.parse(out, INNER).content == {"code": "1"}
    with pytest.raises(KernelError, match="wrong HMAC"):
        messages.parse(out, FRONT)


def _tamper(raw: list[bytes]) -> list[bytes]:
    raw = list(raw)
    raw[-1] = b'{"code": "2"}'
    return raw


# Each malformed message is refused with a sentence naming the problem.
@pytest.mark.parametrize(
    ("raw", "match"),
    [
        # signed with another key
        (frames(signer=INNER), "wrong HMAC"),
        # content changed after signing
        (_tamper(frames()), "wrong HMAC"),
        # no delimiter
        ([b"client", b"sig", b"{}", b"{}", b"{}", b"{}"], "delimiter"),
        # too few parts
        ([b"client", messages.DELIMITER, b"sig", b"{}"], "fewer than"),
    ],
)
def test_parse_refuses(raw: list[bytes], match: str) -> None:
    with pytest.raises(KernelError, match=match):
        messages.parse(raw, FRONT)


# JSON that is not an object, or not JSON, is refused even when signed.
@pytest.mark.parametrize("part", [b"[1, 2]", b"not json", b"[" * 100_000])
def test_parse_refuses_bad_json(part: bytes) -> None:
    signed = [part, b"{}", b"{}", b"{}"]
    raw = [messages.DELIMITER, FRONT.sign(signed), *signed]
    with pytest.raises(KernelError, match="header"):
        messages.parse(raw, FRONT)


def test_parse_refuses_oversize() -> None:
    raw = frames(buffers=[b"x" * 2000])
    with pytest.raises(KernelError, match="over the limit of 1000 bytes"):
        messages.parse(raw, FRONT, max_bytes=1000)


def test_empty_key_and_unknown_scheme_are_refused() -> None:
    with pytest.raises(KernelError, match="empty"):
        Signer(b"")
    with pytest.raises(KernelError, match="not supported"):
        Signer(b"k", "hmac-nothing")


# -- checks -----------------------------------------------------------------


def make_gate() -> tuple[checks.Gate, dict[str, Any], dict[str, Any]]:
    gate = checks.Gate(checks.RequestTracker(per_session=4, sessions=2))
    execute = messages.new_header("execute_request", "front")
    control = messages.new_header("interrupt_request", "front")
    gate.tracker.record("shell", execute, [b"client"])
    gate.tracker.record("control", control, [b"client"])
    return gate, execute, control


def inner_msg(msg_type: str, parent: dict[str, Any], **kw: Any) -> Message:
    return Message(
        idents=kw.pop("idents", [b"forged-route"]),
        header=messages.new_header(msg_type, "inner"),
        parent=copy.deepcopy(parent),
        metadata=kw.pop("metadata", {}),
        content=kw.pop("content", {}),
    )


# What a kernel may send, per channel, for a request the frontend sent.
@pytest.mark.parametrize(
    ("channel", "msg_type", "content"),
    [
        ("iopub", "status", {"execution_state": "busy"}),
        ("iopub", "stream", {"name": "stdout", "text": "x"}),
        ("iopub", "display_data", {"data": {}, "metadata": {}}),
        ("iopub", "comm_open", {"comm_id": "c", "target_name": "t", "data": {}}),
        ("shell", "execute_reply", {"status": "ok"}),
        ("stdin", "input_request", {"prompt": "? ", "password": False}),
    ],
)
def test_allowed(channel: str, msg_type: str, content: dict[str, Any]) -> None:
    gate, execute, _ = make_gate()
    msg = inner_msg(msg_type, execute, content=content)
    request = gate.check(channel, msg)
    assert request is not None and request.msg_id == execute["msg_id"]
    assert msg.parent == execute
    assert msg.idents == ([] if channel == "iopub" else [b"client"])


def test_control_reply_is_routed_to_requester() -> None:
    gate, _, control = make_gate()
    msg = inner_msg("interrupt_reply", control)
    assert gate.check("control", msg) is not None
    assert msg.idents == [b"client"]


# What is refused: wrong channel, wrong type, unknown parent, double reply.
@pytest.mark.parametrize(
    ("channel", "msg_type", "parent_kind", "match"),
    [
        ("iopub", "execute_request", "execute", "may not publish"),
        ("iopub", "debug_event", "execute", "may not publish"),
        ("iopub", "stream", "unknown", "did not send"),
        ("iopub", "stream", "empty", "did not send"),
        ("shell", "stream", "execute", "expects a execute_reply"),
        ("shell", "complete_reply", "execute", "expects a execute_reply"),
        ("shell", "execute_reply", "unknown", "did not send"),
        ("shell", "interrupt_reply", "control", "no reply on that channel"),
        ("stdin", "execute_reply", "execute", "may not send"),
        ("stdin", "input_request", "control", "not a running"),
        ("hb", "stream", "execute", "carries no kernel messages"),
    ],
)
def test_refused(channel: str, msg_type: str, parent_kind: str, match: str) -> None:
    gate, execute, control = make_gate()
    parent = {
        "execute": execute,
        "control": control,
        "unknown": messages.new_header("execute_request", "front"),
        "empty": {},
    }[parent_kind]
    with pytest.raises(KernelError, match=match):
        gate.check(channel, inner_msg(msg_type, parent, content={"name": "x"}))


def test_reply_only_once_and_input_only_while_running() -> None:
    gate, execute, _ = make_gate()
    gate.check("shell", inner_msg("execute_reply", execute))
    with pytest.raises(KernelError, match="waits for no reply"):
        gate.check("shell", inner_msg("execute_reply", execute))
    with pytest.raises(KernelError, match="not a running"):
        gate.check("stdin", inner_msg("input_request", execute))
    # Output of the finished request still passes (threads print late).
    assert gate.check("iopub", inner_msg("stream", execute)) is not None


def test_parent_with_altered_type_is_refused() -> None:
    gate, execute, _ = make_gate()
    parent = dict(execute, msg_type="kernel_info_request")
    with pytest.raises(KernelError, match="did not send"):
        gate.check("iopub", inner_msg("stream", parent))


def test_marker_is_stripped_everywhere() -> None:
    gate, execute, _ = make_gate()
    msg = inner_msg(
        "display_data",
        execute,
        metadata={"srt_kernel": {"kind": "block"}},
        content={
            "data": {"text/plain": "x"},
            "metadata": {"srt_kernel": 1, "image/png": {"srt_kernel": 2}},
        },
    )
    gate.check("iopub", msg)
    assert msg.metadata == {}
    assert msg.content["metadata"] == {"image/png": {}}


def test_starting_status_without_parent_passes_once_other_states_do_not() -> None:
    gate, _, _ = make_gate()
    msg = inner_msg("status", {}, content={"execution_state": "starting"})
    assert gate.check("iopub", msg) is None
    with pytest.raises(KernelError, match="did not send"):
        gate.check(
            "iopub", inner_msg("status", {}, content={"execution_state": "idle"})
        )
    with pytest.raises(KernelError, match="state 'dead'"):
        gate.check(
            "iopub", inner_msg("status", {}, content={"execution_state": "dead"})
        )


def test_header_is_cleaned_and_checked() -> None:
    gate, execute, _ = make_gate()
    msg = inner_msg("stream", execute)
    msg.header["extra"] = "<script>"
    gate.check("iopub", msg)
    assert set(msg.header) == set(checks.HEADER_KEYS)
    bad = inner_msg("stream", execute)
    bad.header["msg_id"] = 5
    with pytest.raises(KernelError, match="'msg_id'"):
        gate.check("iopub", bad)


def test_tracker_is_bounded() -> None:
    gate, execute, _ = make_gate()
    for _ in range(4):
        gate.tracker.record("shell", messages.new_header("comm_msg", "front"), [])
    with pytest.raises(KernelError, match="forgotten"):
        gate.check("iopub", inner_msg("stream", execute))
    # Sessions are bounded too: two newer sessions push "front" out.
    for session in ("s1", "s2"):
        gate.tracker.record("shell", messages.new_header("comm_msg", session), [])
    assert gate.tracker.find(execute) is None
