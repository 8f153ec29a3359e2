"""The one exception tree of srt-kernel.

::

    SrtKernelError                  anything this package raises on purpose
    ├── PolicyError                 a setting, metadata entry or option is wrong;
    │   │                           the message names the field, the value, the fix
    │   └── SettingsFileError       a settings file is missing, empty, unreadable
    │                               or not JSON
    ├── HostError                   a host name or address that is not valid host
    │                               grammar (also a ValueError)
    ├── SandboxUnavailable          this machine cannot build the sandbox; carries
    │                               the diagnosis and how to fix it
    ├── SandboxError                one step of building or launching a sandbox
    │   └── SeccompError            failed; the launch was aborted
    ├── ProxyError                  the proxy could not start or serve
    └── KernelError                 the sandboxed kernel could not start or relay

Security code treats any exception it did not expect as a refusal: an
unknown error denies the connection or aborts the launch.  Foreign
exceptions are translated once, at the boundary, and raised ``from`` the
original.
"""

from __future__ import annotations


class SrtKernelError(Exception):
    """Root of every error that srt-kernel raises on purpose."""


class PolicyError(SrtKernelError):
    """A policy setting is invalid.

    ``field`` is the dotted name of the setting (``network.allowedDomains``),
    ``value`` the offending value, ``source`` where it came from (a file
    path, ``notebook metadata``, a command-line option).
    """

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        value: object = None,
        source: str = "",
    ) -> None:
        self.field = field
        self.value = value
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class SettingsFileError(PolicyError):
    """A settings file given by name cannot be used."""


class HostError(SrtKernelError, ValueError):
    """A host name or IP literal is not valid host grammar."""


class SandboxUnavailable(SrtKernelError):
    """The sandbox cannot be built on this machine.

    ``diagnosis`` is the full text that ``srt-kernel doctor`` prints: what
    failed and the exact fix.
    """

    def __init__(self, message: str, diagnosis: str = "") -> None:
        self.diagnosis = diagnosis or message
        super().__init__(message)


class SandboxError(SrtKernelError):
    """A step of building or launching the sandbox failed."""


class SeccompError(SandboxError):
    """The seccomp filter could not be built or applied."""


class ProxyError(SrtKernelError):
    """The filtering proxy could not start or serve."""


class KernelError(SrtKernelError):
    """The sandboxed kernel could not start or relay messages."""
