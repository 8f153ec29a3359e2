"""The ``srt-kernel`` command line.

``run`` runs a command in the sandbox, ``doctor`` says whether this machine
can build one, ``policy`` shows the policy that would apply and where each
part comes from.  Exit statuses: the command's own for ``run``; 2 for a
mistake in the settings or options, or in the sandbox metadata of the
notebook that ``policy`` or ``trust`` was given (nothing ran); 125 when the
sandbox could not be built (nothing ran); 1 when another command could not
do its work (a kernelspec folder that cannot be written, say).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from srt_kernel import __version__, locations, log
from srt_kernel import policy as pol
from srt_kernel.errors import PolicyError, SandboxUnavailable, SrtKernelError
from srt_kernel.hosts import HostPattern, parse_pattern
from srt_kernel.log import get_logger

logger = get_logger(__name__)

FAILED = 1
USAGE_ERROR = 2
SANDBOX_FAILED = 125


def _add_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--settings",
        metavar="FILE",
        help="settings file (default: ~/.config/srt-kernel/settings.json, "
        "else ~/.srt-settings.json)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="also allow this domain (repeatable)",
    )
    p.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="deny this domain (repeatable)",
    )
    p.add_argument(
        "--no-network",
        action="store_true",
        help="no network at all, whatever the settings allow",
    )
    p.add_argument(
        "--write",
        action="append",
        default=[],
        metavar="PATH",
        help="also allow writes below PATH (repeatable)",
    )
    p.add_argument(
        "--deny-write",
        action="append",
        default=[],
        metavar="PATH",
        help="deny writes below PATH (repeatable)",
    )
    p.add_argument(
        "--deny-read",
        action="append",
        default=[],
        metavar="PATH",
        help="deny reads below PATH (repeatable)",
    )
    p.add_argument(
        "--allow-read",
        action="append",
        default=[],
        metavar="PATH",
        help="re-allow reads below PATH inside a denied one",
    )


def _run_options(run: argparse.ArgumentParser) -> None:
    _add_policy_options(run)
    run.add_argument(
        "-c", dest="shell", metavar="STRING", help="run STRING with bash (or sh)"
    )
    run.add_argument(
        "--debug", action="store_true", help="say what the sandbox was built from"
    )
    run.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARG]...",
        help="the command to run and its arguments, after --",
    )


def _no_options(_p: argparse.ArgumentParser) -> None:
    pass


def _policy_options(show: argparse.ArgumentParser) -> None:
    _add_policy_options(show)
    show.add_argument(
        "notebook",
        nargs="?",
        metavar="NOTEBOOK",
        help="apply this notebook's sandbox metadata too",
    )


def _trust_options(trust_p: argparse.ArgumentParser) -> None:
    trust_p.add_argument(
        "notebook", metavar="NOTEBOOK", help="the notebook whose request to review"
    )
    trust_p.add_argument(
        "--yes", action="store_true", help="approve without asking (for scripts)"
    )
    trust_p.add_argument(
        "--revoke", action="store_true", help="withdraw the approval of NOTEBOOK"
    )
    trust_p.add_argument(
        "--settings",
        metavar="FILE",
        help="settings file (default: ~/.config/srt-kernel/settings.json, "
        "else ~/.srt-settings.json)",
    )


def _where_options(
    parser: argparse.ArgumentParser, user: str, sys_prefix: str, prefix: str
) -> None:
    """``--user``, ``--sys-prefix`` and ``--prefix P``: one of them at most."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help=user)
    where.add_argument("--sys-prefix", action="store_true", help=sys_prefix)
    where.add_argument("--prefix", metavar="P", help=prefix)


def _install_options(install: argparse.ArgumentParser) -> None:
    _where_options(
        install,
        user="for this user only",
        sys_prefix="into this Python environment (sys.prefix)",
        prefix="under the prefix P",
    )
    install.add_argument(
        "--name",
        default="python-sandboxed",
        metavar="N",
        help="the kernelspec's name, which frontends and --kernel use "
        "(default python-sandboxed)",
    )
    install.add_argument(
        "--display-name",
        default="Python (sandboxed)",
        metavar="D",
        help="the name shown in the frontend's kernel list "
        "(default 'Python (sandboxed)')",
    )
    install.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable for the kernel",
    )


def _uninstall_options(uninstall: argparse.ArgumentParser) -> None:
    _where_options(
        uninstall,
        user="only from this user's kernelspecs",
        sys_prefix="only from this Python environment (sys.prefix)",
        prefix="only from under the prefix P",
    )
    uninstall.add_argument(
        "--name",
        default="python-sandboxed",
        metavar="N",
        help="the kernelspec to remove (default python-sandboxed)",
    )


def _execute_options(execute: argparse.ArgumentParser) -> None:
    execute.add_argument("notebook", metavar="NOTEBOOK", help="the notebook to run")
    execute.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the executed notebook (default: NOTEBOOK with .out.ipynb)",
    )
    execute.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when anything was blocked or failed",
    )
    execute.add_argument(
        "--timeout",
        type=float,
        default=600,
        metavar="S",
        help="seconds a cell may run (default 600)",
    )
    execute.add_argument(
        "--kernel",
        default="python-sandboxed",
        metavar="NAME",
        help="kernelspec to use (default python-sandboxed)",
    )


AddOptions = Callable[[argparse.ArgumentParser], None]

#: Each command: its help line, its description and what adds its options.
SUBCOMMANDS: dict[str, tuple[str, str | None, AddOptions]] = {
    "run": (
        "run a command in the sandbox",
        "Run CMD in the sandbox under your settings plus these options. Use -- "
        "before the command, or -c 'STRING' for a shell line.",
        _run_options,
    ),
    "doctor": (
        "check that this machine can build the sandbox",
        "Check that bubblewrap, user namespaces and seccomp work here, and say "
        "exactly what to fix if not. Exits with 1 when the sandbox cannot be "
        "built.",
        _no_options,
    ),
    "policy": (
        "show the policy that would apply, and where each part comes from",
        "Show the policy that `srt-kernel run` with these options would apply "
        "(or, with NOTEBOOK, that the notebook's kernel would run under), and "
        "where each part comes from. Exits with 2 when the settings or the "
        "notebook's sandbox metadata cannot be used.",
        _policy_options,
    ),
    "trust": (
        "review and approve what a notebook's metadata asks for",
        "Show what NOTEBOOK's sandbox metadata asks for beyond your settings, "
        "and record your approval. Any later change to the request voids it.",
        _trust_options,
    ),
    "install": (
        'install the "Python (sandboxed)" kernel',
        'Install the "Python (sandboxed)" kernelspec, which runs every cell in '
        "the sandbox, with this Python. Without --user, --sys-prefix or "
        "--prefix it goes to the system-wide Jupyter folder.",
        _install_options,
    ),
    "uninstall": (
        "remove the kernelspec",
        "Remove the kernelspec N. Without --user, --sys-prefix or --prefix, "
        "the first one that Jupyter finds is removed.",
        _uninstall_options,
    ),
    "execute": (
        "run every cell of a notebook headless under its policy",
        "Run every cell of NOTEBOOK in the sandboxed kernel, carrying on past "
        "errors, and summarise what was blocked and what failed.",
        _execute_options,
    ),
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized to the terminal without shutil.

    argparse imports shutil to measure the terminal whenever it builds a
    formatter, which it does for every option added; that import (with the
    compression modules shutil brings) would cost every run.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal on stdout, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    stdout = sys.__stdout__
    try:
        return os.get_terminal_size(stdout.fileno()).columns if stdout else 80
    except (ValueError, OSError):
        return 80


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, for that command alone.

    :func:`main` passes the command the user named, which spares building
    the parsers of the others (a start-up cost ``srt-kernel run`` would pay
    every time); the top-level ``--help`` and mistakes get the full parser.
    """
    parser = argparse.ArgumentParser(
        prog="srt-kernel",
        formatter_class=_Formatter,
        description="Run untrusted code in an OS sandbox (bubblewrap) whose only "
        "way out is a filtering proxy.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_line, description, add_options) in SUBCOMMANDS.items():
        if only is None or only == name:
            command = sub.add_parser(
                name,
                help=help_line,
                description=description,
                formatter_class=_Formatter,
            )
            add_options(command)
            # so that main() reports a command's unknown options with its usage
            command.set_defaults(command_parser=command)
    return parser


def _policy_from_args(args: argparse.Namespace) -> pol.Policy:
    source = "command line"
    context = locations.gather_context()
    policy = pol.resolve(context, locations.user_layers(args.settings, context))

    def patterns(values: Sequence[str], flag: str) -> list[HostPattern]:
        return [parse_pattern(v, field=flag, source=source) for v in values]

    def paths(values: Sequence[str], flag: str) -> list[str]:
        return [
            pol.normalize_path(v, context=context, field=flag, source=source)
            for v in values
        ]

    return pol.with_options(
        policy,
        allow=patterns(args.allow, "--allow"),
        deny=patterns(args.deny, "--deny"),
        no_network=args.no_network,
        write=paths(args.write, "--write"),
        deny_write=paths(args.deny_write, "--deny-write"),
        deny_read=paths(args.deny_read, "--deny-read"),
        allow_read=paths(args.allow_read, "--allow-read"),
        source=source,
        home=context.home,
    )


def _refuse_contradictions(args: argparse.Namespace) -> None:
    """Options of ``run`` and ``policy`` that cannot both be meant."""
    if args.no_network and args.allow:
        raise PolicyError(
            f"--no-network and --allow {args.allow[0]} contradict each other; "
            "give --no-network for no network at all, or --allow for the hosts "
            "to reach, not both.",
            field="--no-network",
            value=args.allow[0],
            source="command line",
        )


def _command_from_args(args: argparse.Namespace) -> list[str]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.shell is not None:
        if argv:
            raise PolicyError(
                "give either -c 'STRING' or -- CMD [ARG]..., not both.",
                field="-c",
                value=args.shell,
                source="command line",
            )
        from srt_kernel.sandbox.bwrap import which

        shell = which("bash") or "/bin/sh"
        return [shell, "-c", args.shell]
    if not argv:
        raise PolicyError(
            "no command given; write `srt-kernel run -- CMD [ARG]...` or "
            "`srt-kernel run -c 'STRING'`.",
            field="command",
            value="",
            source="command line",
        )
    return argv


def cmd_run(args: argparse.Namespace) -> int:
    from srt_kernel.sandbox.bwrap import run_command
    from srt_kernel.sandbox.facts import missing_write_notes

    _refuse_contradictions(args)
    policy = _policy_from_args(args)
    command = _command_from_args(args)
    for note in (*policy.notes, *missing_write_notes(policy)):
        print(f"srt-kernel: note: {note}", file=sys.stderr)
    return run_command(policy, command, cwd=os.getcwd(), debug=args.debug)


def cmd_doctor(_args: argparse.Namespace) -> int:
    from srt_kernel import doctor

    diagnosis = doctor.diagnose()
    print(diagnosis.text())
    return 0 if diagnosis.ok else 1


def cmd_policy(args: argparse.Namespace) -> int:
    from srt_kernel.sandbox.facts import missing_write_notes

    _refuse_contradictions(args)
    if args.notebook is None:
        policy = _policy_from_args(args)
        print(pol.describe(policy))
        for note in missing_write_notes(policy):
            print(f"Note: {note}")
        return 0
    from srt_kernel.kernel.notebook import existing_notebook, notebook_policy

    notebook = existing_notebook(args.notebook)
    context = locations.gather_context(str(notebook.parent))
    base = pol.resolve(context, locations.user_layers(args.settings, context))
    state = notebook_policy(base, notebook, context)
    print(f"Notebook: {notebook}")
    print(pol.describe(state.policy))
    if state.problem:
        print(f"Problem: {state.problem}")
    for note in state.notes:
        if note not in state.policy.notes:  # describe() printed those
            print(f"Note: {note}")
    # the kernel would run this notebook closed off: scripts must notice
    return USAGE_ERROR if state.problem else 0


def cmd_trust(args: argparse.Namespace) -> int:
    from srt_kernel import trust
    from srt_kernel.kernel.notebook import (
        approvals,
        existing_notebook,
        read_metadata,
        real_base,
        real_ceiling,
        request_layer,
    )

    notebook = existing_notebook(args.notebook)
    store = approvals()
    if args.revoke:
        done = store.revoke(notebook)
        print(
            f"Approval of {notebook} " + ("withdrawn." if done else "was not recorded.")
        )
        return 0
    try:
        metadata = read_metadata(notebook)
    except ValueError as exc:
        raise PolicyError(
            f"the notebook is not valid JSON ({exc}).",
            field="NOTEBOOK",
            value=str(notebook),
            source=str(notebook),
        ) from exc
    if metadata is None:
        print(f"{notebook.name} has no sandbox metadata: it asks for nothing.")
        return 0
    context = locations.gather_context(str(notebook.parent))
    base = real_base(
        pol.resolve(context, locations.user_layers(args.settings, context))
    )
    layer = request_layer(metadata, notebook, context)
    wanted = trust.widening(base, layer)
    if not wanted:
        print(
            f"{notebook.name} asks for nothing beyond your settings; no approval "
            "is needed (its metadata can always tighten)."
        )
        return 0
    ceiling = real_ceiling(base, context)
    capped, cut = trust.cap(layer, ceiling, base)
    granted = trust.widening(base, capped).lines()
    print(f"{notebook.name} asks to let its code:")
    for line in wanted.lines():
        print(f"  - {line}")
    for line in cut:
        print(f"  (refused whatever you answer: {line})")
    if not granted:
        print("Nothing of this is within the ceiling; there is nothing to approve.")
        return 1
    if store.is_approved(notebook, metadata):
        print("You approved exactly this request before.")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "Not approved: run this at a terminal to answer, or pass --yes.",
                file=sys.stderr,
            )
            return 1
        answer = input(
            "Approve? Anyone who can edit this notebook wrote this request. [y/N] "
        )
        if answer.strip().lower() not in {"y", "yes"}:
            print("Not approved.")
            return 1
    store.approve(notebook, metadata, granted)
    print(
        "Approved. Restart the notebook's kernel to apply it. Any change to "
        "the request voids this approval."
    )
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from srt_kernel.kernel import spec

    dest = spec.install(
        user=args.user,
        sys_prefix=args.sys_prefix,
        prefix=args.prefix,
        name=args.name,
        display_name=args.display_name,
        env=spec.parse_env(args.env),
    )
    print(f"Installed kernelspec {args.name} in {dest}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from srt_kernel.kernel import spec

    removed = spec.uninstall(
        args.name, user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix
    )
    print(f"Removed kernelspec {args.name} from {removed}")
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from srt_kernel.execute import execute_notebook
    from srt_kernel.kernel.notebook import existing_notebook

    # The kernel reads the same settings: a mistake in them is said here,
    # before a kernel that could run nothing is started.
    notebook = existing_notebook(args.notebook)
    locations.user_layers(None, locations.gather_context(str(notebook.parent)))
    return execute_notebook(
        args.notebook,
        output=args.output,
        strict=args.strict,
        timeout=args.timeout,
        kernel_name=args.kernel,
    )


COMMANDS = {
    "run": cmd_run,
    "doctor": cmd_doctor,
    "policy": cmd_policy,
    "install": cmd_install,
    "uninstall": cmd_uninstall,
    "execute": cmd_execute,
    "trust": cmd_trust,
}


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    only = words[0] if words and words[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args, unknown = parser.parse_known_args(words)
    if unknown:
        command_parser = getattr(args, "command_parser", None) or parser
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return USAGE_ERROR
    log.configure(level="WARNING", format="srt-kernel: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except PolicyError as exc:
        print(f"srt-kernel: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except SandboxUnavailable as exc:
        print(f"srt-kernel: {exc}\n\n{exc.diagnosis}", file=sys.stderr)
        return SANDBOX_FAILED
    except SrtKernelError as exc:
        print(f"srt-kernel: error: {exc}", file=sys.stderr)
        # only run builds a sandbox; elsewhere this is a plain failure
        return SANDBOX_FAILED if args.command == "run" else FAILED


def entry() -> None:
    """The ``srt-kernel`` executable: :func:`main`, then exit with its status.

    After ``run`` the process ends at once (``os._exit``) once its output is
    flushed: the sandbox is gone and its files removed, and the
    interpreter's own clean-up would only add milliseconds to every run.
    """
    status = main()
    if sys.argv[1:2] == ["run"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
