"""Errors the server raises on purpose, and the one table that turns them into gRPC codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServingError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``events[3].event_id``), a reason in
    UPPER_SNAKE_CASE and a sentence; sent as a ``google.rpc.BadRequest`` field violation."""

    field: str
    reason: str
    description: str


class InvalidRequest(ServingError):
    """A request field is missing, malformed or beyond a configured limit."""

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations)


class ItemNotFound(ServingError):
    """The item is not in the index of the serving model version."""


class StoreUnavailable(ServingError):
    """Redis cannot be reached or did not answer in time."""


class BrokerUnavailable(ServingError):
    """Kafka cannot be reached or did not acknowledge in time."""


class ArtifactError(ServingError):
    """The artifact store names a model version that cannot be read."""


class ModelNotLoaded(ServingError):
    """An admin call names a model version serving does not hold (and no uri to load it)."""


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the answer was ready."""


class Unauthenticated(ServingError):
    """The call carries no valid bearer token."""


class AddressUnavailable(ServingError):
    """The server cannot listen on its address (taken by another process, or not this host's)."""


STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    BrokerUnavailable: grpc.StatusCode.UNAVAILABLE,
    ArtifactError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotLoaded: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    AddressUnavailable: grpc.StatusCode.UNAVAILABLE,
    ServingError: grpc.StatusCode.INTERNAL,
}


def status_code(error: ServingError) -> grpc.StatusCode:
    """The gRPC code of `error`: its own class's entry, else its nearest ancestor's."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def status_trailers(error: ServingError) -> tuple[tuple[str, bytes], ...]:
    """The ``grpc-status-details-bin`` trailer of `error`: a ``google.rpc.Status`` with a
    ``google.rpc.BadRequest`` of its field violations; none for an error without them."""
    if not isinstance(error, InvalidRequest) or not error.violations:
        return ()
    details = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(
            field=violation.field, reason=violation.reason, description=violation.description)
        for violation in error.violations
    ])
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error))
    status.details.add().Pack(details)
    return tuple(rpc_status.to_status(status).trailing_metadata)
