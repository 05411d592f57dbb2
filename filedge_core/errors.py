"""The error hierarchy. Every error filedge raises on purpose is a ``FiledgeError``.

Each class decides two things in one place: the command line's exit code and, for errors
raised while a file is processed, what state the file's audit row goes to
(``FileOutcome``)."""

from __future__ import annotations

import enum


class FileOutcome(enum.Enum):
    """What an error raised while processing a file does to its audit row."""

    TERMINAL = "terminal"  # FAILED until `filedge requeue`: the bytes will not change
    RETRY = "retry"  # FAILED, claimable again by a later run until retry_cap
    RELEASE = "release"  # back to PENDING, claimable again (the file changed under us)
    FENCED = "fenced"  # a newer claim owns the file: touch nothing
    GIVE_BACK = "give_back"  # not the file's fault: PENDING again, the attempt not charged


class FiledgeError(Exception):
    """Filedge failed."""

    exit_code: int = 1
    outcome: FileOutcome = FileOutcome.RETRY

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(FiledgeError):
    """The configuration is invalid."""

    exit_code = 2
    outcome = FileOutcome.TERMINAL


class UsageError(FiledgeError):
    """The command was used wrongly."""

    exit_code = 2


class DataError(FiledgeError):
    """The file's content cannot be loaded as configured."""

    outcome = FileOutcome.TERMINAL


class TransientError(FiledgeError):
    """A temporary failure; the file will be retried."""

    outcome = FileOutcome.RETRY


class DatabaseUnavailable(TransientError):
    """A database could not be reached."""


class DestinationUnreachable(DatabaseUnavailable):
    """No connection to the destination could be opened: no file is to blame, and a run that
    meets this stops claiming files instead of failing each of them."""

    outcome = FileOutcome.GIVE_BACK


class FileChanged(TransientError):
    """The file changed while it was being read."""

    outcome = FileOutcome.RELEASE


class LeaseLost(FiledgeError):
    """Another worker now holds this file's lease; this worker's write was refused."""

    outcome = FileOutcome.FENCED

    def __init__(self, message: str | None = None, ledger_token: int | None = None) -> None:
        super().__init__(message)
        self.ledger_token = ledger_token  # the destination's token that refused the write, if known


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__

