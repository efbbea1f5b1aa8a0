"""The project's own exceptions: each carries a message fit for one status line."""


class KvmError(Exception):
    """Anything that keeps a command from doing its job; the message is for people."""


class ConnectError(KvmError):
    """The hypervisor could not be reached (missing socket, refused, denied)."""


class NotFound(KvmError):
    """A domain or other object named by the user does not exist."""


class LibvirtFailure(KvmError):
    """A libvirt call failed; the message names the call and libvirt's reason."""


class CallTimeout(KvmError):
    """A call did not answer within its deadline."""


class ReadOnlyRefused(LibvirtFailure):
    """libvirt refused a call because the connection is read-only."""


class AccessDenied(LibvirtFailure):
    """libvirt's access control (polkit, ACLs) or authentication refused the call."""


class Unsupported(LibvirtFailure):
    """The hypervisor driver does not support the call."""


class AgentUnavailable(LibvirtFailure):
    """The guest agent is not connected, not answering or out of sync."""


class Disconnected(LibvirtFailure):
    """The connection to libvirtd broke (RPC failure, daemon gone)."""


class BadRequest(KvmError):
    """The request cannot be done as asked (bad input: a name taken, a raw disk, ...): nothing changed."""


class Refused(KvmError):
    """The request is valid but the host or libvirt cannot do it now or safely (no space, domain busy):
    nothing changed."""


class Corrupt(KvmError):
    """An archive is damaged, truncated, or not a kvm-backup archive."""


class Interrupted(KvmError):
    """SIGINT, SIGTERM or SIGHUP arrived; everything is undone on the way out."""


class NotUndone(KvmError):
    """A run failed and putting the domain back failed too: what is left is in its journal."""

    def __init__(self, message: str, interrupted: bool = False) -> None:
        super().__init__(message)
        self.interrupted = interrupted


class ImageError(KvmError):
    """An image file that cannot be read as what it claims to be (truncated, corrupt, unreadable)."""
