"""Errors raised while loading or replaying a data set."""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error this package raises on purpose."""


class DatasetNotInstalledError(IngestError):
    """A packaged data set is not installed."""


class SourceFileNotFoundError(IngestError):
    """An input file does not exist."""


class UnsupportedFormatError(IngestError):
    """An input file has an extension this package cannot read."""


class EmptyFileError(IngestError):
    """An input file has no data rows."""


class MissingColumnError(IngestError):
    """A required column is absent from an input file."""


class TimestampParseError(IngestError):
    """A timestamp cannot be read as epoch seconds, epoch milliseconds or ISO-8601."""


class UnknownEventTypeError(IngestError):
    """An event type is not one of the known interaction types."""


class InvalidValueError(IngestError):
    """A cell holds a value its column does not allow."""


class InvalidRowsError(IngestError):
    """Rows of an input file break the contract's rules; the message names each one."""


class ReplayOptionError(IngestError):
    """Selection or pacing options are inconsistent or out of range."""
