"""The hello exchange's verdicts: which failed hello means the client and the daemon speak
different protocol versions, and the error that says so (naming both versions and the fix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modcoord.actors.errors import InvalidMessageError
from modcoord.supervisor.protocol.errors import ProtocolVersionError
from modcoord.supervisor.protocol.signatures import PROTOCOL_VERSION

__all__ = ["refused_hello", "version_mismatch"]


def version_mismatch(daemon_version: Any, path: Path) -> ProtocolVersionError:
    """The error for a daemon whose hello answer names another protocol version."""
    return ProtocolVersionError(
        f"hello: this client speaks protocol version {PROTOCOL_VERSION} but the daemon at "
        f"{path} speaks version {daemon_version!r}; use the same modcoord version for the "
        "modules and the daemon (restart the daemon after an upgrade)")


def refused_hello(error: BaseException | None, path: Path) -> ProtocolVersionError | None:
    """The version error a failed hello amounts to, if any: a daemon of another version
    refuses it (ProtocolVersionError), and one that predates protocol versioning refuses
    the hello's ``protocol`` field as unknown."""
    if isinstance(error, ProtocolVersionError):
        return error
    if isinstance(error, InvalidMessageError) and "'protocol'" in str(error):
        return ProtocolVersionError(
            f"hello: the daemon at {path} predates protocol versioning (it refused this "
            f"client's protocol version {PROTOCOL_VERSION}: {error}); use the same modcoord "
            "version for the modules and the daemon (restart the daemon after an upgrade)")
    return None
