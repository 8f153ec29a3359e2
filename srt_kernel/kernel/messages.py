"""The Jupyter wire format, as the relay needs it.

A message on the wire is a list of frames::

    [routing id, ...] b"<IDS|MSG>" signature
    header parent metadata content [buffer, ...]

This module splits such a list, verifies its HMAC signature in constant time
with one key, parses the four JSON parts under a size limit, and builds the
frames of a message signed with another key.  It promises that a message it
returns from :func:`parse` carried a valid signature for the key it was given
and that its four JSON parts are JSON objects; anything else raises
:class:`~srt_kernel.errors.KernelError`.  It does no IO.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from typing import Any

from srt_kernel.errors import KernelError
from srt_kernel.log import get_logger
from srt_kernel.record import Record, field

log = get_logger(__name__)

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"

#: Default limit on the bytes of one message, buffers included.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

JSONDict = dict[str, Any]


class Signer:
    """Signs and verifies messages with one HMAC key.

    ``scheme`` is the connection file's ``signature_scheme``
    (``hmac-sha256``).  An empty key is refused: a kernel whose messages
    anyone on the machine could forge is not one this project runs.
    """

    def __init__(self, key: bytes, scheme: str = "hmac-sha256") -> None:
        if not key:
            raise KernelError(
                "The HMAC key is empty; give the kernel a connection file "
                "with a non-empty 'key'."
            )
        prefix, _, digest = scheme.partition("-")
        if prefix != "hmac" or digest not in hashlib.algorithms_guaranteed:
            raise KernelError(
                f"The signature scheme {scheme!r} is not supported; use 'hmac-sha256'."
            )
        self._key = key
        self._digest = digest
        self.scheme = scheme

    def sign(self, parts: Sequence[bytes]) -> bytes:
        """Return the hex signature of header, parent, metadata and content."""
        mac = hmac.new(self._key, digestmod=self._digest)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode("ascii")

    def verify(self, signature: bytes, parts: Sequence[bytes]) -> bool:
        """Compare ``signature`` with the expected one in constant time."""
        return hmac.compare_digest(signature, self.sign(parts))


class Message(Record, frozen=False):
    """One parsed message: routing frames, the four JSON dicts, buffers."""

    idents: list[bytes]
    header: JSONDict
    parent: JSONDict
    metadata: JSONDict
    content: JSONDict
    buffers: list[bytes] = field(default_factory=list)
    signature: bytes = b""

    @property
    def msg_type(self) -> str:
        value = self.header.get("msg_type")
        return value if isinstance(value, str) else ""

    @property
    def msg_id(self) -> str:
        value = self.header.get("msg_id")
        return value if isinstance(value, str) else ""


def split(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split frames into routing frames and the rest after the delimiter."""
    try:
        index = list(frames).index(DELIMITER)
    except ValueError:
        raise KernelError(
            "A message has no '<IDS|MSG>' delimiter frame; it is not a "
            "Jupyter message and was dropped."
        ) from None
    return list(frames[:index]), list(frames[index + 1 :])


def _load(frame: bytes, name: str) -> JSONDict:
    try:
        value = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise KernelError(
            f"The {name} of a message is not valid JSON ({exc}); dropped."
        ) from exc
    if not isinstance(value, dict):
        raise KernelError(
            f"The {name} of a message is a JSON {type(value).__name__}, not "
            "an object; dropped."
        )
    return value


def parse(
    frames: Sequence[bytes],
    signer: Signer,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Message:
    """Verify and parse one message received from a ZMQ socket.

    Raises :class:`KernelError` when the message is larger than
    ``max_bytes``, lacks a part, has a bad signature or holds JSON that is
    not an object.
    """
    size = sum(len(frame) for frame in frames)
    if size > max_bytes:
        raise KernelError(
            f"A message of {size} bytes is over the limit of {max_bytes} "
            "bytes; dropped."
        )
    idents, rest = split(frames)
    if len(rest) < 5:
        raise KernelError(
            f"A message has {len(rest)} parts after the delimiter, fewer than "
            "the 5 the protocol needs; dropped."
        )
    signature, signed = rest[0], rest[1:5]
    if not signer.verify(signature, signed):
        raise KernelError("A message has a wrong HMAC signature; dropped.")
    header, parent, metadata, content = (
        _load(part, name)
        for part, name in zip(
            signed, ("header", "parent header", "metadata", "content"), strict=True
        )
    )
    return Message(
        idents=idents,
        header=header,
        parent=parent,
        metadata=metadata,
        content=content,
        buffers=list(rest[5:]),
        signature=signature,
    )


def dumps(value: JSONDict) -> bytes:
    """Serialise one JSON part the way the relay sends it."""
    return json.dumps(
        value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


def resign(frames: Sequence[bytes], verify: Signer, sign: Signer) -> list[bytes]:
    """Re-sign a message unchanged: verify with one key, sign with another.

    Used on the way in, where the relay does not change what the frontend
    sent.  The routing frames and buffers are kept as they are.
    """
    idents, rest = split(frames)
    if len(rest) < 5:
        raise KernelError(
            f"A message has {len(rest)} parts after the delimiter, fewer than "
            "the 5 the protocol needs; dropped."
        )
    if not verify.verify(rest[0], rest[1:5]):
        raise KernelError("A message has a wrong HMAC signature; dropped.")
    return [*idents, DELIMITER, sign.sign(rest[1:5]), *rest[1:]]


def serialize(msg: Message, signer: Signer) -> list[bytes]:
    """Return the signed frames of ``msg``."""
    parts = [
        dumps(msg.header),
        dumps(msg.parent),
        dumps(msg.metadata),
        dumps(msg.content),
    ]
    return [*msg.idents, DELIMITER, signer.sign(parts), *parts, *msg.buffers]


def new_header(msg_type: str, session: str, username: str = "srt-kernel") -> JSONDict:
    """Return a fresh header for a message the supervisor writes itself."""
    return {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "session": session,
        "username": username,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": PROTOCOL_VERSION,
    }
