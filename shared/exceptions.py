"""One exception tree for logagg. Each exception's docstring is its default message."""

from __future__ import annotations


class LogaggError(Exception):
    """logagg failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigurationError(LogaggError):
    """A setting is missing or does not parse."""


class InvalidCursor(LogaggError):
    """The `after` cursor is not one this server handed out."""


class ServerNotInstalled(LogaggError):
    """A server binary that the local stack needs is not installed."""
