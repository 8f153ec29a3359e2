"""The notebook a kernel serves, and the policy its metadata leads to.

The notebook's ``"sandbox"`` metadata is untrusted: unapproved, it may only
tighten the user's baseline; approved with ``srt-kernel trust``, it may
widen it up to the ceiling (:mod:`srt_kernel.trust`).  Invalid metadata
fails closed.
"""

from __future__ import annotations

import os
from pathlib import Path

from srt_kernel import locations, trust
from srt_kernel import policy as pol
from srt_kernel.errors import PolicyError
from srt_kernel.record import Record, replace
from srt_kernel.sandbox.facts import missing_write_notes, real_filesystem, real_layer

# Not typing.TYPE_CHECKING: importing typing costs the kernel's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def find_notebook(connection: dict[str, Any], cwd: str) -> Path | None:
    """The notebook this kernel serves, if any frontend said which."""
    candidates = [
        os.environ.get("SRT_KERNEL_NOTEBOOK"),
        os.environ.get("JPY_SESSION_NAME"),
        connection.get("jupyter_session"),
    ]
    for value in candidates:
        if not value or not isinstance(value, str):
            continue
        path = Path(value)
        if not path.is_absolute():
            # jupyter_server gives a path relative to its root, and starts the
            # kernel in the notebook's folder.
            for guess in (Path(cwd) / path, Path(cwd) / path.name):
                if guess.is_file():
                    path = guess
                    break
        if path.suffix == ".ipynb" and path.is_file():
            return path.resolve()
    return None


def existing_notebook(path: str) -> Path:
    """The notebook named on the command line, or a :class:`PolicyError`."""
    notebook = Path(path).resolve()
    if not notebook.is_file():
        raise PolicyError(
            f"the notebook {path!r} does not exist; check the path.",
            field="NOTEBOOK",
            value=path,
            source="command line",
        )
    return notebook


def read_metadata(notebook: Path) -> object:
    """The notebook's ``"sandbox"`` metadata, or None when it has none.

    A key given twice on the way to it or inside it is a
    :class:`PolicyError`: JSON would keep the last one, and whoever reviews
    the file may read the first.
    """
    data = pol.loads_json(notebook.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise PolicyError(
            "the notebook is not a JSON object", field="notebook", source=str(notebook)
        )
    metadata = data.get("metadata")
    sandbox = metadata.get("sandbox") if isinstance(metadata, dict) else None
    if "metadata" in pol.repeated_keys(data):
        repeated: str | None = "metadata"
    elif "sandbox" in pol.repeated_keys(metadata):
        repeated = "metadata.sandbox"
    else:
        repeated = pol.first_repeated_key(sandbox, "metadata.sandbox")
    if repeated is not None:
        raise pol.repeated_key_error(repeated, str(notebook))
    return sandbox


class PolicyState(Record, frozen=False):
    """The policy in force and how it was made."""

    base: pol.Policy
    policy: pol.Policy
    problem: str = ""
    notes: tuple[str, ...] = ()
    approved: bool = False


def notebook_policy(
    base: pol.Policy, notebook: Path | None, context: pol.Context
) -> PolicyState:
    """Tighten ``base`` with the notebook's metadata; fail closed on bad input.

    The notes also name each writable folder that does not exist.
    """
    state = _notebook_policy(base, notebook, context)
    missing = missing_write_notes(state.policy)
    if not missing:
        return state
    return replace(state, notes=state.notes + tuple(missing))


def _notebook_policy(
    base: pol.Policy, notebook: Path | None, context: pol.Context
) -> PolicyState:
    if notebook is None:
        return PolicyState(base, base)
    try:
        metadata = read_metadata(notebook)
        if metadata is None:
            return PolicyState(base, base)
        layer = request_layer(metadata, notebook, context)
    except (OSError, ValueError, PolicyError) as exc:
        # Unreadable or invalid metadata: no network and no writes until fixed.
        closed = replace(
            base,
            network=pol.NetworkPolicy(),
            filesystem=replace(base.filesystem, allow_write=()),
        )
        problem = (
            f"the notebook's sandbox metadata cannot be used ({exc}); until it is "
            "fixed, cells run with no network and no writes."
        )
        return PolicyState(base, closed, problem=problem)
    try:
        ceiling = real_ceiling(base, context)
        approved = approvals().is_approved(notebook, metadata)
    except PolicyError as exc:
        ceiling, approved = None, False
        extra = [f"approval could not be checked ({exc}); running unapproved."]
    else:
        extra = []
    base = real_base(base)
    wanted = trust.widening(base, layer)
    result, cut = trust.apply_notebook(base, layer, approved=approved, ceiling=ceiling)
    pinned = (layer.allow_read or ()) + (layer.allow_write or ())
    result = replace(result, filesystem=replace(result.filesystem, pinned=pinned))
    notes = [n for n in result.notes if n not in base.notes] + cut + extra
    if wanted and not approved:
        notes.append(
            f"to grant what it asks for, review and approve it with: "
            f"srt-kernel trust {notebook}"
        )
    return PolicyState(base, result, notes=tuple(notes), approved=approved)


# A notebook's request is judged as what its paths lead to (a symlink in the
# notebook's folder may lead anywhere), against the settings and the ceiling
# resolved likewise: the kernel and `srt-kernel trust` both judge through these.


def request_layer(metadata: object, notebook: Path, context: pol.Context) -> pol.Layer:
    """The notebook's ``"sandbox"`` metadata as an untrusted layer, resolved."""
    source = f"notebook metadata ({notebook.name})"
    return real_layer(
        pol.parse_layer(metadata, source=source, context=context, trusted=False)
    )


def real_base(base: pol.Policy) -> pol.Policy:
    """The user's policy with its paths resolved."""
    return replace(base, filesystem=real_filesystem(base.filesystem))


def real_ceiling(base: pol.Policy, context: pol.Context) -> pol.Layer | None:
    """The ceiling in force, its paths resolved."""
    ceiling = trust.load_ceiling(base.notebook_ceiling, context)
    return None if ceiling is None else real_layer(ceiling)


def approvals() -> trust.ApprovalStore:
    """The user's approvals, in srt-kernel's data folder."""
    return trust.ApprovalStore(Path(locations.data_dir()) / "approvals.json")
