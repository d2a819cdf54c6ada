"""Errors the training job raises on purpose."""

from __future__ import annotations


class TrainingError(Exception):
    """Root of every error this package raises on purpose."""


class EmptyLogError(TrainingError):
    """The event log holds no events in the window to read."""


class LogReadError(TrainingError):
    """The event log or the catalog could not be read to its end offsets."""
