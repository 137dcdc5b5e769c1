"""Exceptions the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations


class VockerError(Exception):
    """Base for every error a user can cause or fix; the message is shown as is."""

    exit_code = 1


class UsageError(VockerError):
    """Bad arguments: a malformed tag, a path that is not a directory, a refused mount point."""

    exit_code = 2


class NotFoundError(VockerError):
    """No such image or container: exit 1 from every command (as docker's), so a script can
    tell it from a usage error (2); `vocker run` and `shell` exit 125 for it, as for any
    failure of vocker itself there."""

    exit_code = 1


class CommandNotRunError(VockerError):
    """`vocker run` could not start the command: 127 when it is not found, 126 when it
    cannot be executed, as a shell (and `docker run`) would exit."""

    def __init__(self, message: str, not_found: bool) -> None:
        super().__init__(message)
        self.exit_code = 127 if not_found else 126


class BuildError(VockerError):
    """Resolution, installation or the build's test failed; nothing was tagged.

    ``details`` holds the installer's whole error output (the message is its gist).
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class FormatError(VockerError):
    """Stored or received data is not valid vocker format (corrupt CBOR, bad names, ...)."""


class IntegrityError(VockerError):
    """Bytes do not match the digest they are stored under."""


class MissingObjectError(IntegrityError):
    """An object the image needs is not in the store."""


class FuseUnavailableError(VockerError):
    """This machine or user cannot make FUSE mounts (the message says why and how to fix it);
    exports still work."""


class NoInterpreterError(VockerError):
    """No host Python matches the one the image was built with."""
