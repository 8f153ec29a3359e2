"""Where things are on this machine: the IO edge of the policy.

Gathers the facts that :mod:`srt_kernel.policy` resolves settings against
(home, working folder, the Jupyter runtime and data folders, the installed
package) and reads settings files.  The policy core itself reads nothing.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Sequence

from srt_kernel import policy as pol
from srt_kernel.errors import SettingsFileError
from srt_kernel.log import get_logger
from srt_kernel.record import replace

logger = get_logger(__name__)

#: The documented system-wide settings folder (administrator).
SYSTEM_DIR = "/etc/srt-kernel"


def home() -> str:
    return os.path.expanduser("~")


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home(), ".config")
    return os.path.join(base, "srt-kernel")


def data_dir() -> str:
    """srt-kernel's own data (approvals, audit logs): never visible inside."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(home(), ".local", "share")
    return os.path.join(base, "srt-kernel")


def settings_path() -> str:
    return os.path.join(config_dir(), "settings.json")


def srt_settings_path() -> str:
    return os.path.join(home(), ".srt-settings.json")


#: Unix socket paths are limited to 107 bytes; run directories hold
#: sockets a few levels down, so their root must stay short.
_MAX_RUNTIME_ROOT = 60


def runtime_root() -> str:
    """The parent of every sandbox's private run directory (mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        root = os.path.join(base, "srt-kernel")
        if len(root) <= _MAX_RUNTIME_ROOT:
            return root
    return f"/tmp/srt-kernel-{os.getuid()}"


def jupyter_dirs() -> tuple[list[str], list[str], list[str]]:
    """(runtime dirs, data dirs, config dirs) where Jupyter looks on Linux.

    The places jupyter_core documents (its environment variables, the user's
    folders, the Python user base, ``sys.prefix``, ``/usr/local`` and
    ``/usr``), computed here without importing it, to start fast.  Where
    jupyter_core could choose between two places (``JUPYTER_PLATFORM_DIRS``),
    both are listed: protecting one more folder costs nothing.
    """
    env = os.environ
    h = home()
    xdg_data = env.get("XDG_DATA_HOME") or os.path.join(h, ".local", "share")
    xdg_config = env.get("XDG_CONFIG_HOME") or os.path.join(h, ".config")
    data_dir = env.get("JUPYTER_DATA_DIR") or os.path.join(xdg_data, "jupyter")
    runtime = env.get("JUPYTER_RUNTIME_DIR") or os.path.join(data_dir, "runtime")
    userbase = site.getuserbase()

    data = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    data += [data_dir, os.path.join(userbase, "share", "jupyter")]
    data += [os.path.join(sys.prefix, "share", "jupyter")]
    data += ["/usr/local/share/jupyter", "/usr/share/jupyter"]

    config = [p for p in env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep) if p]
    config += [
        env.get("JUPYTER_CONFIG_DIR") or os.path.join(h, ".jupyter"),
        os.path.join(xdg_config, "jupyter"),
        os.path.join(userbase, "etc", "jupyter"),
        os.path.join(sys.prefix, "etc", "jupyter"),
        "/usr/local/etc/jupyter",
        "/etc/jupyter",
    ]
    unique = dict.fromkeys
    return list(unique([runtime])), list(unique(data)), list(unique(config))


def _package_paths() -> list[str]:
    """The installed srt_kernel package and the interpreter's site-packages."""
    # site's list holds sysconfig's purelib and platlib (and, on Debian,
    # the dist-packages folders too), without importing sysconfig
    paths = [os.path.dirname(os.path.realpath(__file__))]
    paths.extend(site.getsitepackages())
    user_site = site.getusersitepackages()
    if user_site:
        paths.append(user_site)
    paths.append(os.path.join(sys.prefix, "bin"))
    # IPython reads configuration (Python) from here in every session
    paths.append(os.path.join(sys.prefix, "etc", "ipython"))
    return paths


def gather_context(base_dir: str | None = None) -> pol.Context:
    """Gather the facts a policy is resolved against, for this process."""
    h = home()
    runtime, data, config = jupyter_dirs()
    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(h, ".ipython")
    protected = [
        *config,
        *(os.path.join(d, "kernels") for d in data),
        *(os.path.join(d, "nbextensions") for d in data),
        *(os.path.join(d, "lab") for d in data),
        *runtime,
        ipython_dir,
        config_dir(),
        data_dir(),
        SYSTEM_DIR,
        *_package_paths(),
    ]
    deny_read = [*runtime, data_dir()]
    return pol.Context(
        home=h,
        base_dir=os.path.abspath(base_dir or os.getcwd()),
        deny_read=tuple(deny_read),
        protected=tuple(dict.fromkeys(protected)),
    )


def read_settings_file(
    path: str | os.PathLike[str], context: pol.Context, *, named: bool = True
) -> pol.Layer:
    """Read one settings file: every failure is an error.

    ``named`` says the user named it (``--settings``), so a fix may be to
    drop the option.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise SettingsFileError(
            f"settings file {path!r} does not exist; check the path.",
            field="settings",
            value=path,
            source=path,
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsFileError(
            f"settings file {path!r} cannot be read ({exc}); check its "
            "permissions and encoding (UTF-8).",
            field="settings",
            value=path,
            source=path,
        ) from exc
    return pol.parse_settings_text(text, source=path, context=context, named=named)


def settings_file(settings: str | None = None) -> str | None:
    """The settings file :func:`user_layers` reads, or None when there is none.

    With ``settings`` given, that file; otherwise
    ``~/.config/srt-kernel/settings.json`` when it exists, else
    ``~/.srt-settings.json`` when that exists.
    """
    if settings is not None:
        return settings
    for candidate in (settings_path(), srt_settings_path()):
        if os.path.exists(candidate):
            return candidate
    return None


def settings_hint(settings: str | None = None) -> str:
    """The settings file a fix should name: the one in use, else ours.

    The home folder is shown as ``~``.
    """
    path = settings_file(settings) or settings_path()
    h = home().rstrip("/")
    absolute = os.path.abspath(path)
    if h and absolute.startswith(h + "/"):
        return "~" + absolute[len(h) :]
    return absolute


def user_layers(settings: str | None, context: pol.Context) -> list[pol.Layer]:
    """The trusted layers: the named file, or ours, or srt's; never a mix.

    With ``settings`` given, that file alone is used and must be readable.
    Otherwise the first of ours and srt's that exists (:func:`settings_file`);
    when both exist, the layer carries a note that srt's is not read.
    """
    path = settings_file(settings)
    if path is None:
        return []
    layer = read_settings_file(path, context, named=settings is not None)
    srt = srt_settings_path()
    if settings is None and path != srt and os.path.exists(srt):
        note = (
            f"{path}: used as your settings; {srt} exists too and is not read "
            "(srt-kernel reads one settings file, never a mix). Copy what you "
            "need from it into the first, or name the one to use with --settings."
        )
        layer = replace(layer, warnings=(*layer.warnings, note))
    return [layer]


def load_policy(
    settings: str | None = None,
    base_dir: str | None = None,
    untrusted: Sequence[pol.Layer] = (),
) -> pol.Policy:
    """Defaults + the user's settings + untrusted layers, for this machine."""
    context = gather_context(base_dir)
    policy = pol.resolve(context, user_layers(settings, context), untrusted)
    for note in policy.notes:
        logger.warning("%s", note)
    return policy
