"""IPython magics: ``%%sandbox`` runs one cell in a one-shot sandbox.

Load them in a plain IPython session or kernel with ``%load_ext
srt_kernel`` (or ``c.InteractiveShellApp.extensions = ["srt_kernel"]`` in
``ipython_config.py``).  Then:

* ``%%sandbox [OPTIONS]`` runs the cell's Python (or bash, with
  ``--bash``) in a fresh bubblewrap sandbox under the user's settings plus
  the options, streams its output, shows its rich output cleaned of active
  content, copies ``-i`` variables in and ``-o`` variables out as data
  (:mod:`srt_kernel.transfer`, never pickle), and reports under the cell
  what the sandbox blocked;
* ``%sandbox`` shows the policy that would apply and where each part came
  from; ``%sandbox [OPTIONS] CMD [ARG]...`` runs one command sandboxed.

Promises: nothing from the sandbox is run or unpickled on the host; every
MIME bundle is cleaned (:func:`srt_kernel.kernel.sanitize.clean_bundle`)
unless the user's settings allow active output; the text it prints is made
inert for terminals; when a cell ends, times out or is interrupted, the
sandbox is killed and no process of it survives.

Inside the sandboxed kernel (``SRT_KERNEL_SANDBOX=1``) ``%sandbox`` prints
the policy that the supervisor resolved for the notebook, and a cell whose
first line is ``%%sandbox OPTIONS`` runs as an ordinary cell of the kernel
with the network narrowed for it: the supervisor narrows its proxy from
that line, and :func:`narrowing_transform` turns the line into a check of
the options, so the cell's value, error and line numbers are its own.
"""

from __future__ import annotations

import argparse
import codecs
import json
import keyword
import os
import re
import select
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument as _argument_untyped
from IPython.core.magic_arguments import magic_arguments as _magic_arguments_untyped

from srt_kernel import transfer
from srt_kernel.errors import PolicyError, SandboxUnavailable, SrtKernelError
from srt_kernel.log import get_logger
from srt_kernel.record import Record, field

logger = get_logger(__name__)

#: Where the private work folder is bound inside the sandbox.
WORK_INSIDE = "/run/srt-kernel/magic"
#: Limit of one frame from the runner (bytes).
MAX_FRAME = 64 * 1024 * 1024
#: Limit of one ``-o`` file (bytes).
MAX_OUTPUT_BYTES = transfer.MAX_BYTES
#: Texts kept for the block report (file refusals are read from them).
MAX_TEXTS = 400

_HEADER = struct.Struct(">I")

# Colours (SGR) survive; every other escape sequence and control character
# is removed, since a terminal would act on it (set the title, write the
# clipboard through OSC 52, redefine keys).
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_ESCAPE = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b[@-Z\\-_]?"  # other escapes
    r"|[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f\x80-\x9f]"
)


def inert_text(text: str) -> str:
    """``text`` with colours kept and every other terminal control removed."""
    out: list[str] = []
    position = 0
    for match in _SGR.finditer(text):
        out.append(_ESCAPE.sub("", text[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_ESCAPE.sub("", text[position:]))
    return "".join(out)


def in_sandbox() -> bool:
    """Whether this process runs inside an srt-kernel sandbox."""
    return os.environ.get("SRT_KERNEL_SANDBOX") == "1"


class SandboxCellError(SrtKernelError):
    """The sandboxed cell failed; shown as the sandbox's own traceback."""

    def __init__(self, message: str, traceback_lines: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.traceback_lines = list(traceback_lines) or [message]

    def _render_traceback_(self) -> list[str]:
        return self.traceback_lines


class SandboxTimeout(SandboxCellError):
    """The cell ran longer than ``--timeout`` and its sandbox was killed."""


class SandboxResult(Record, frozen=False):
    """The value of the cell's last expression, as a cleaned MIME bundle."""

    data: dict[str, Any]
    metadata: dict[str, Any]

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        text = self.data.get("text/plain")
        return text if isinstance(text, str) else "<sandboxed result>"


#: The first line of a cell that narrows the network in the sandboxed kernel.
_NARROWING_LINE = re.compile(r"%%sandbox(?=\s|$)(.*)")


def check_narrowing(line: str) -> None:
    """Refuse ``%%sandbox`` options that do more than narrow the network.

    Runs inside the sandboxed kernel, as the first line of a narrowed cell
    (see :func:`narrowing_transform`).  The supervisor reads the same
    options from the cell and narrows the proxy before the cell starts;
    this side checks them so that a mistake, or a request for more than the
    kernel has, is a clear error rather than a silently narrower cell.
    """
    from srt_kernel.hosts import intersect_patterns, parse_pattern

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(
            f"the options {line!r} cannot be split into words ({exc}); check "
            "the quotes."
        ) from exc
    rest = [w for w in words if w != "--no-network"]
    allowed_here: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("--allow", "--deny") and i + 1 == len(rest):
            raise UsageError(f"{word} needs a DOMAIN: write {word} api.example.com.")
        if word in ("--allow", "--deny"):
            if word == "--allow":
                allowed_here.append(rest[i + 1])
            i += 2
            continue
        if word.startswith(("--allow=", "--deny=")):
            if word.startswith("--allow="):
                allowed_here.append(word.split("=", 1)[1])
            i += 1
            continue
        raise UsageError(
            f"inside the sandboxed kernel %%sandbox narrows the network only "
            f"(--no-network, --allow DOMAIN, --deny DOMAIN); {word!r} would "
            "need a sandbox inside the sandbox. Run such a cell with "
            "%%sandbox in a plain Python kernel."
        )
    try:
        info = json.loads(
            Path(os.environ.get("SRT_KERNEL_POLICY", "") + "")
            .with_name("policy.json")
            .read_text(encoding="utf-8")
        )
        kernel_allows = [
            parse_pattern(t, field="kernel", source="kernel")
            for t in info.get("allowedDomains", [])
        ]
    except (OSError, ValueError) as exc:
        raise UsageError(f"the kernel's policy cannot be read ({exc}).") from exc
    for text in allowed_here:
        try:
            wanted = parse_pattern(text, field="--allow", source="%%sandbox")
        except SrtKernelError as exc:
            raise UsageError(str(exc)) from exc
        if not any(intersect_patterns(wanted, k) == wanted for k in kernel_allows):
            raise UsageError(
                f"--allow {text} asks for more than this kernel has; a cell can "
                "only narrow. Widening is done in your settings "
                "(~/.config/srt-kernel/settings.json), or in the notebook's "
                "sandbox metadata once you approve it with srt-kernel trust."
            )

    # The supervisor narrows the request's cell by its own first line: the
    # same %%sandbox line, or nothing was narrowed (code that runs a cell of
    # its own with run_cell, say) and the narrowing is refused.
    code = _running_cell_code()
    head = code.lstrip().split("\n", 1)[0] if code is not None else ""
    asked = _NARROWING_LINE.match(head)
    if asked is None or asked.group(1).strip() != line.strip():
        raise UsageError(
            "%%sandbox narrows the network only as the first line of a cell "
            "run from the frontend; here nothing would be narrowed, so it is "
            "refused."
        )


def narrowing_transform(lines: list[str]) -> list[str]:
    """Inside the sandboxed kernel, make a ``%%sandbox`` cell a plain cell.

    An IPython input transformer, run before every other: when the cell's
    first line, after leading white space, is ``%%sandbox OPTIONS`` (the
    very rule by which the supervisor narrows the cell's network), that
    line becomes a call of :func:`check_narrowing` and the rest of the cell
    stays as it is.  The cell then runs as the kernel's own cell (not a
    cell run from inside a magic): its error is shown once, labelled with
    its own prompt number and line numbers, its value is its ``Out``, and a
    failure is the cell's failure.  Outside a sandbox, and for any other
    cell, ``lines`` is returned unchanged; a ``%%sandbox`` that the
    supervisor did not read as the first line (after a ``>>>`` prompt, say)
    reaches the magic, which refuses it.
    """
    if not lines or not in_sandbox():
        return lines
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return lines
    match = _NARROWING_LINE.match(lines[first].lstrip())
    if match is None:
        return lines
    check = (
        f"__import__('srt_kernel.magics').magics.check_narrowing("
        f"{match.group(1).strip()!r})\n"
    )
    return [check, *lines[first + 1 :]]


def _running_cell_code() -> str | None:
    """The code of the execute_request the kernel is running, if any."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent("shell")
    except Exception:  # no request in progress: treated as none
        return None
    code = parent.get("content", {}).get("code") if parent else None
    return code if isinstance(code, str) else None


# --------------------------------------------------------------------------
# Options


def _names(values: Sequence[str], flag: str) -> list[str]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name.isidentifier() or keyword.iskeyword(name):
                raise UsageError(
                    f"{flag} {name!r} is not a Python variable name; write "
                    f"{flag} NAME (or {flag} NAME1,NAME2)."
                )
            if name not in names:
                names.append(name)
    return names


def _policy(args: argparse.Namespace) -> Any:
    from srt_kernel.cli import _policy_from_args

    try:
        return _policy_from_args(args)
    except PolicyError as exc:
        raise UsageError(str(exc)) from exc


# --------------------------------------------------------------------------
# One run


class Outcome(Record, frozen=False):
    """What one sandboxed run produced, once it is over."""

    status: int | None = None
    done: bool = False
    timed_out: bool = False
    error: list[str] | None = None
    error_name: str = ""
    result: SandboxResult | None = None
    outputs: dict[str, tuple[bool, str]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    denials: list[Any] = field(default_factory=list)


class OneShot:
    """Runs one command in a fresh sandbox and relays what it produces.

    ``framed`` commands speak the frame protocol of
    :mod:`srt_kernel.magic_runner` on stdout; others are relayed raw.
    """

    def __init__(
        self,
        policy: Any,
        command: Sequence[str],
        *,
        work: Path,
        run: Any,
        framed: bool,
        timeout: float | None,
    ) -> None:
        self.policy = policy
        self.command = list(command)
        self.work = work
        self.run = run
        self.framed = framed
        self.timeout = timeout
        self.outcome = Outcome()
        self.lock = threading.Lock()
        self.current_stream = ""
        self.sandbox: Any = None

    def _on_audit(self, event: Any) -> None:
        if event.decision == "deny":
            with self.lock:
                self.outcome.denials.append(event)

    def _audit_log(self) -> Any:
        from srt_kernel import locations
        from srt_kernel.audit import AuditLog

        folder = Path(locations.data_dir()) / "audit"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            log = AuditLog(folder / "network.jsonl")
        except OSError as exc:
            logger.warning("the audit log in %s cannot be written: %s", folder, exc)
            log = AuditLog()
        log.subscribe(self._on_audit)
        return log

    def execute(self) -> Outcome:
        """Start the sandbox, relay until it ends (or times out), clean up."""
        from srt_kernel.sandbox.bwrap import Sandbox

        audit = self._audit_log()
        extra_env = {"MPLBACKEND": "agg", "PYTHONUNBUFFERED": "1"}
        self.sandbox = Sandbox(
            self.policy,
            self.command,
            cwd=os.getcwd(),
            audit=audit,
            label="%%sandbox",
            run=self.run,
            always_proxy=True,
            binds=((str(self.work), WORK_INSIDE, True),),
            extra_env=extra_env,
        )
        try:
            process = self.sandbox.start(
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            finished = self._relay(process, deadline)
            if finished:
                self.outcome.status = self._wait(process, deadline)
            self.outcome.timed_out = self.outcome.status is None
            self._flush_streams()
            created = [] if self.outcome.timed_out else self.sandbox.created_protected()
        finally:
            # The run folder holds the -o files: the caller removes it once
            # they are read, so the sandbox must not take it along.
            self.sandbox.run = None
            self.sandbox.close()
            audit.close()
        for path in created:
            self._stream(
                "stderr",
                f"srt-kernel: warning: the cell created {path}, a protected name "
                "that trusted tools read or run; it could not be blocked because "
                "it appeared during the run. Review or delete it.\n",
            )
        return self.outcome

    def _wait(
        self, process: subprocess.Popen[bytes], deadline: float | None
    ) -> int | None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return process.wait(remaining)
        except subprocess.TimeoutExpired:
            return None

    def _relay(self, process: subprocess.Popen[bytes], deadline: float | None) -> bool:
        """Relay output until both pipes close; False when the deadline passed."""
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.fileno(), process.stderr.fileno()
        open_fds = [out, err]
        pending = bytearray()
        # A read may end inside a character: its first bytes wait for the rest.
        decoders = {
            fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in open_fds
        }
        while open_fds:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return False
            ready, _, _ = select.select(open_fds, [], [], wait)
            for fd in ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    open_fds.remove(fd)
                if fd == err or not self.framed:
                    name = "stderr" if fd == err else "stdout"
                    self._stream(name, decoders[fd].decode(data, final=not data))
                elif data:
                    pending += data
                    self._frames(pending)
        if pending:
            raise SandboxCellError(
                "srt-kernel: the sandboxed cell left an incomplete frame on its "
                "output channel; its output was not trusted."
            )
        return True

    def _frames(self, pending: bytearray) -> None:
        while len(pending) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(pending)
            if length > MAX_FRAME:
                raise SandboxCellError(
                    f"srt-kernel: the sandboxed cell sent a frame of {length} "
                    f"bytes (the limit is {MAX_FRAME}); it was stopped."
                )
            if len(pending) < _HEADER.size + length:
                return
            raw = bytes(pending[_HEADER.size : _HEADER.size + length])
            del pending[: _HEADER.size + length]
            try:
                frame = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise SandboxCellError(
                    f"srt-kernel: the sandboxed cell sent a frame that is not "
                    f"JSON ({exc}); it was stopped."
                ) from exc
            if not isinstance(frame, dict):
                raise SandboxCellError(
                    "srt-kernel: the sandboxed cell sent a frame that is not a "
                    "JSON object; it was stopped."
                )
            self._dispatch(frame)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("k")
        if kind == "stream":
            name = "stderr" if frame.get("name") == "stderr" else "stdout"
            self._stream(name, str(frame.get("text", "")))
        elif kind in ("display", "result"):
            bundle = self._bundle(frame)
            if bundle is None:
                return
            if kind == "result":
                self.outcome.result = SandboxResult(*bundle)
            else:
                self._flush_streams()
                _display(bundle[0], bundle[1])
        elif kind == "error":
            lines = frame.get("traceback")
            if not isinstance(lines, list):
                lines = [str(frame.get("evalue", ""))]
            self.outcome.error = [inert_text(str(line)) for line in lines][-500:]
            self.outcome.error_name = inert_text(str(frame.get("ename", "")))[:100]
            self._remember("\n".join(self.outcome.error[-5:]))
        elif kind == "output":
            var = frame.get("name")
            if isinstance(var, str) and var.isidentifier():
                message = inert_text(str(frame.get("message", "")))[:2000]
                self.outcome.outputs[var] = (frame.get("ok") is True, message)
        elif kind == "done":
            self.outcome.done = True

    def _bundle(
        self, frame: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        from srt_kernel.kernel.sanitize import clean_bundle

        data = frame.get("data")
        metadata = frame.get("metadata")
        if not isinstance(data, dict) or not data:
            return None
        if not isinstance(metadata, dict):
            metadata = {}
        if not self.policy.allow_active_output:
            data, _removed = clean_bundle(data, self.outcome.cleaned)
        if isinstance(data.get("text/plain"), str):
            data["text/plain"] = inert_text(data["text/plain"])
        # Metadata only for the types that are left (image sizes and kin).
        metadata = {
            k: v for k, v in metadata.items() if k in data and isinstance(v, dict)
        }
        return data, metadata

    def _remember(self, text: str) -> None:
        if len(self.outcome.texts) < MAX_TEXTS:
            self.outcome.texts.append(text[-20000:])

    def _stream(self, name: str, text: str) -> None:
        if not text:
            return
        text = inert_text(text)
        if self.current_stream and self.current_stream != name:
            self._flush_streams()
        self.current_stream = name
        target = sys.stderr if name == "stderr" else sys.stdout
        target.write(text)
        self._remember(text)

    def _flush_streams(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()


def _blocks(
    args: argparse.Namespace, outcome: Outcome, plan: Any, cwd: str
) -> list[Any]:
    from srt_kernel import locations
    from srt_kernel.kernel import report

    # The cell's own options are the fix: there is no kernel to restart.
    advice = report.Advice(
        settings=locations.settings_hint(args.settings),
        magic=True,
        no_network=args.no_network,
    )
    blocks: list[report.Block] = []
    seen: set[tuple[str, int]] = set()
    for event in outcome.denials:
        if (event.host, event.port) not in seen:
            seen.add((event.host, event.port))
            blocks.append(
                report.network_block(
                    event.host, event.port, event.rule, event.address, advice
                )
            )
    if outcome.cleaned:
        blocks.append(report.output_block(outcome.cleaned, advice))
    if plan is not None:
        for op, path in report.file_paths(outcome.texts, cwd):
            block = report.file_block(op, path, plan.resolved, plan.protected, advice)
            if block is not None:
                blocks.append(block)
    return blocks


def read_output(directory: int, name: str, limit: int = MAX_OUTPUT_BYTES) -> Any:
    """Read ``NAME.srtx`` from the ``out`` folder (an open directory fd).

    The file must be a regular file (no symlink, FIFO or device) within
    ``limit`` bytes, and is decoded strictly; anything else is a
    :class:`transfer.TransferError`.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(f"{name}.srtx", flags, dir_fd=directory)
    except OSError as exc:
        raise transfer.TransferError(
            f"the sandbox's file for {name!r} cannot be opened safely ({exc.strerror})"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise transfer.TransferError(
                f"the sandbox's file for {name!r} is not a regular file"
            )
        if info.st_size > limit:
            raise transfer.TransferError(
                f"the sandbox's file for {name!r} is {info.st_size} bytes, over "
                f"the limit of {limit}"
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise transfer.TransferError(
                    f"the sandbox's file for {name!r} grew over the limit of {limit}"
                )
            chunks.append(chunk)
    finally:
        os.close(fd)
    return transfer.loads(b"".join(chunks), max_bytes=limit)


# --------------------------------------------------------------------------
# The magics


# IPython's decorators and display() carry no type hints.
argument: Any = _argument_untyped
magic_arguments: Any = _magic_arguments_untyped


def _display(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    from IPython.display import display

    show: Any = display
    show(data, raw=True, metadata=metadata or {})


def _options(func: Any) -> Any:
    decorators = [
        argument(
            "--allow",
            action="append",
            default=[],
            metavar="DOMAIN",
            help="also allow this domain (repeatable; *.example.com for names "
            "under it, host:port for one port)",
        ),
        argument(
            "--deny",
            action="append",
            default=[],
            metavar="DOMAIN",
            help="deny this domain (repeatable)",
        ),
        argument(
            "--no-network",
            action="store_true",
            help="no network at all, whatever the settings allow",
        ),
        argument(
            "--write",
            action="append",
            default=[],
            metavar="PATH",
            help="also allow writes below PATH (repeatable)",
        ),
        argument(
            "--deny-read",
            action="append",
            default=[],
            metavar="PATH",
            help="deny reads below PATH (repeatable)",
        ),
        argument(
            "--deny-write",
            action="append",
            default=[],
            metavar="PATH",
            help="deny writes below PATH (repeatable)",
        ),
        argument(
            "--allow-read",
            action="append",
            default=[],
            metavar="PATH",
            help="re-allow reads below PATH inside a read-denied folder",
        ),
        argument(
            "--settings",
            metavar="FILE",
            help="use this settings file instead of "
            "~/.config/srt-kernel/settings.json (or ~/.srt-settings.json)",
        ),
        argument(
            "--bash", action="store_true", help="run the cell with bash, not Python"
        ),
        argument(
            "-i",
            dest="inputs",
            action="append",
            default=[],
            metavar="VAR",
            help="copy this variable into the sandbox (repeatable, or a,b)",
        ),
        argument(
            "-o",
            dest="outputs",
            action="append",
            default=[],
            metavar="VAR",
            help="copy this variable back out after the cell (repeatable, or a,b)",
        ),
        argument(
            "--timeout",
            type=float,
            metavar="S",
            help="stop the cell, killing its sandbox, after S seconds",
        ),
        argument(
            "command",
            nargs=argparse.REMAINDER,
            metavar="CMD [ARG]...",
            help="%%sandbox CMD: run one command in a sandbox (line magic only)",
        ),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return magic_arguments()(func)


@magics_class
class SandboxMagics(Magics):
    """``%sandbox`` and ``%%sandbox``."""

    @_options
    @line_cell_magic
    def sandbox(self, line: str, cell: str | None = None) -> Any:
        """Run a cell, or one command, in a fresh one-shot OS sandbox.

        The sandbox is bubblewrap under your srt-kernel settings
        (~/.config/srt-kernel/settings.json, else ~/.srt-settings.json) plus
        the options: by default no network at all, the working folder
        writable, everything else read-only, credentials (~/.ssh, ~/.aws,
        ...) unreadable.  Output streams while the cell runs; the value of
        the last expression, display() calls and matplotlib figures come
        back as rich output with active content (scripts, event handlers)
        removed; an exception shows its traceback; whatever the sandbox
        blocked (hosts, paths) is listed under the cell with the setting
        that would allow it.

        Usage::

            %sandbox                      show the policy and its sources
            %sandbox [OPTIONS] CMD [ARG]  run one command sandboxed
            %%sandbox [OPTIONS]           run this cell sandboxed

        Variables cross as data only, never pickled: -i VAR copies VAR in,
        -o VAR copies it back out.  Supported: None, bool, int, float, str,
        bytes, lists, tuples and dicts of these, NumPy arrays of plain
        dtypes (no object dtype), pandas Series and DataFrames with NumPy
        or plain pandas dtypes.  Anything else is refused, naming the type.

        Examples::

            %%sandbox
            import os; os.listdir(os.path.expanduser("~/.ssh"))   # empty

            %%sandbox --allow pypi.org --allow files.pythonhosted.org
            import urllib.request
            urllib.request.urlopen("https://pypi.org/simple/").status

            %%sandbox -i df -o summary --timeout 60
            summary = df.describe()

            %%sandbox --bash --write /tmp/out
            ls ~ > /tmp/out/listing.txt

            %sandbox --no-network curl -sI https://example.com

        Inside the sandboxed kernel ("Python (sandboxed)") %sandbox shows
        the policy in force, and %%sandbox as the first line of a cell only
        narrows the network for that cell (--no-network, --allow DOMAIN,
        --deny DOMAIN); the cell otherwise runs as any other cell there.
        """
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(
                f"the options {line!r} cannot be split into words ({exc}); check "
                "the quotes."
            ) from exc
        args = self.sandbox.parser.parse_args(argv)
        command = [c for c in args.command if c != "--"] if args.command else []
        if cell is not None and command:
            raise UsageError(
                f"%%sandbox takes options only, not {' '.join(command)!r}; put the "
                "code in the cell, or use the line magic %sandbox CMD [ARG]..."
            )
        if in_sandbox():
            return self._inside_sandbox(line, cell)
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(
                f"--timeout {args.timeout} is not a positive number of seconds; "
                "write for example --timeout 30."
            )
        inputs = _names(args.inputs, "-i")
        outputs = _names(args.outputs, "-o")
        if (inputs or outputs) and (args.bash or cell is None):
            raise UsageError(
                "-i and -o work with Python cells only (%%sandbox without "
                "--bash); pass data to a command through a file under --write."
            )
        if cell is None and args.bash:
            raise UsageError(
                "--bash is for the cell magic: write %%sandbox --bash above the "
                "lines, or %sandbox bash -c 'LINE' for one line."
            )
        if cell is None and not command:
            from srt_kernel import policy as pol

            print(pol.describe(_policy(args)))
            return None
        policy = _policy(args)
        missing = [n for n in inputs if n not in self._namespace()]
        if missing:
            raise UsageError(
                f"-i {missing[0]}: there is no variable named {missing[0]!r} in "
                "this session; define it first or check the spelling."
            )
        encoded: dict[str, bytes] = {}
        for name in inputs:
            try:
                encoded[name] = transfer.dumps(self._namespace()[name], name=name)
            except transfer.TransferError as exc:
                raise UsageError(f"-i {name}: {exc}") from exc
        return self._run(policy, args, cell, command, encoded, outputs)

    def _namespace(self) -> dict[str, Any]:
        if self.shell is None:
            raise UsageError(
                "%%sandbox needs an IPython shell; load it with %load_ext."
            )
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def _inside_sandbox(self, line: str, cell: str | None) -> None:
        if cell is not None:
            # A cell that starts with %%sandbox never gets here: the
            # transform has made it a plain cell.  A call by other means
            # (run_cell_magic in code) is not seen by the supervisor, so
            # its network would not be narrowed.
            check_narrowing(line)
            options = f" {line.strip()}" if line.strip() else ""
            raise UsageError(
                "inside the sandboxed kernel %%sandbox narrows the network only "
                f"as the first line of a cell; start the cell with %%sandbox{options} "
                "and put the code below it."
            )
        if line.strip():
            raise UsageError(
                "%sandbox CMD cannot build a sandbox inside the sandboxed kernel; "
                "run the command as it is (!CMD is already sandboxed)."
            )
        path = os.environ.get("SRT_KERNEL_POLICY", "")
        try:
            print(Path(path).read_text(encoding="utf-8"), end="")
        except OSError as exc:
            raise UsageError(
                f"the policy description {path!r} cannot be read ({exc})."
            ) from exc

    def _run(
        self,
        policy: Any,
        args: argparse.Namespace,
        cell: str | None,
        command: list[str],
        inputs: dict[str, bytes],
        outputs: list[str],
    ) -> Any:
        from srt_kernel import locations
        from srt_kernel.sandbox.facts import missing_write_notes
        from srt_kernel.sandbox.rundir import RunDir

        for note in missing_write_notes(policy):
            sys.stderr.write(f"srt-kernel: note: {note}\n")
        run = RunDir.create(locations.runtime_root())
        work = Path(run.path) / "magic"
        try:
            out_fd = self._prepare(work, cell, args, inputs, outputs)
        except BaseException:
            run.remove()
            raise
        framed = cell is not None and not args.bash
        if cell is None:
            argv = command
        elif args.bash:
            argv = [shutil.which("bash") or "/bin/sh", f"{WORK_INSIDE}/cell.sh"]
        else:
            argv = [sys.executable, "-m", "srt_kernel.magic_runner", WORK_INSIDE]
        shot = OneShot(
            policy, argv, work=work, run=run, framed=framed, timeout=args.timeout
        )
        try:
            try:
                outcome = shot.execute()
            except SandboxUnavailable as exc:
                raise UsageError(f"{exc}\n\n{exc.diagnosis}") from exc
            except KeyboardInterrupt:
                sys.stderr.write(
                    "srt-kernel: interrupted; the sandbox and every process in it "
                    "were killed.\n"
                )
                raise
            plan = shot.sandbox.plan if shot.sandbox is not None else None
            return self._finish(policy, outcome, plan, out_fd, outputs, framed, args)
        finally:
            os.close(out_fd)
            run.remove()

    def _prepare(
        self,
        work: Path,
        cell: str | None,
        args: argparse.Namespace,
        inputs: dict[str, bytes],
        outputs: list[str],
    ) -> int:
        work.mkdir(mode=0o700)
        (work / "in").mkdir(mode=0o700)
        (work / "out").mkdir(mode=0o700)
        if cell is not None:
            name = "cell.sh" if args.bash else "cell.py"
            (work / name).write_text(cell, encoding="utf-8")
        config = {"inputs": list(inputs), "outputs": outputs}
        (work / "config.json").write_text(json.dumps(config), encoding="utf-8")
        for name, data in inputs.items():
            (work / "in" / f"{name}.srtx").write_bytes(data)
        # Opened now: the sandbox may rename or replace "out" by a symlink,
        # but this descriptor keeps pointing at the folder created here.
        return os.open(work / "out", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def _finish(
        self,
        policy: Any,
        outcome: Outcome,
        plan: Any,
        out_fd: int,
        outputs: list[str],
        framed: bool,
        args: argparse.Namespace,
    ) -> Any:
        from srt_kernel.kernel import report

        text = report.render(_blocks(args, outcome, plan, os.getcwd()))
        if text:
            _display({"text/plain": text})

        if outcome.timed_out:
            message = (
                f"srt-kernel: the cell ran longer than --timeout {args.timeout:g} s "
                "and was stopped; the sandbox and every process in it were killed."
            )
            raise SandboxTimeout(message)
        if outcome.error is not None:
            raise SandboxCellError(
                f"the sandboxed cell raised {outcome.error_name}", outcome.error
            )
        if framed and not outcome.done:
            raise SandboxCellError(
                f"srt-kernel: the sandboxed cell ended before it finished (exit "
                f"status {outcome.status}); a process it started may have killed "
                "it, or it called os._exit()."
            )
        if not framed and outcome.status:
            raise SandboxCellError(
                f"srt-kernel: the sandboxed command exited with status "
                f"{outcome.status}."
            )

        problems: list[str] = []
        for name in outputs:
            ok, message = outcome.outputs.get(name, (False, "no answer from the cell"))
            if not ok:
                problems.append(f"-o {name}: {message}")
                continue
            try:
                self._namespace()[name] = read_output(out_fd, name)
            except transfer.TransferError as exc:
                problems.append(f"-o {name}: {exc}")
        if problems:
            raise UsageError(" ".join(problems))
        return outcome.result


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, and the narrowing transform, with ``ipython``."""
    ipython.register_magics(SandboxMagics)
    transforms = ipython.input_transformers_cleanup
    if narrowing_transform not in transforms:
        transforms.insert(0, narrowing_transform)
