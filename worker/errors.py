"""One base exception; each subclass's docstring is its default message."""

from __future__ import annotations


class RunwardenError(Exception):
    """runwarden failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(RunwardenError):
    """The configuration is invalid."""

    exit_code = 2


class PolicyError(ConfigurationError):
    """The lifecycle policy file is invalid."""


class InvalidOptionsError(RunwardenError):
    """The options are invalid."""

    exit_code = 2


class DatabaseUnavailableError(RunwardenError):
    """The database cannot be reached."""


class DatabaseMissingError(DatabaseUnavailableError):
    """The database does not exist: run `runwarden migrate` to create it."""


class DatabaseNotMigratedError(DatabaseUnavailableError):
    """The database has not been migrated: run `runwarden migrate`."""


class DatabaseLockedError(DatabaseUnavailableError):
    """The database is locked by another session."""


class MigrationCancelledError(RunwardenError):
    """The migration was cancelled before it wrote anything."""


class BrokerUnavailableError(RunwardenError):
    """The message broker cannot be reached."""


class RunNotFoundError(RunwardenError):
    """No operation run has that id."""

    exit_code = 2


class InvalidInputError(RunwardenError, ValueError):
    """The input is invalid."""

    exit_code = 2


class UnknownReferenceError(InvalidInputError):
    """An id names no row."""
