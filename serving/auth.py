"""Optional protection of the public port: TLS credentials and bearer-token authentication."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from serving.settings import ServingSettings

log = logging.getLogger(__name__)

# Probes and service discovery work without a token.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")


def token_of(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, else None."""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def accepted(token: str | None, tokens: Iterable[str]) -> bool:
    """True when `token` is one of `tokens` (compared in constant time)."""
    if token is None:
        return False
    given = token.encode()
    return any(hmac.compare_digest(given, known.encode()) for known in tokens)


async def _reject(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "a valid 'authorization: Bearer <token>' header is required")


class TokenAuth(grpc.aio.ServerInterceptor):
    """Rejects calls without a configured bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(tokens)
        self._reject = grpc.unary_unary_rpc_method_handler(_reject)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        if accepted(token_of(handler_call_details.invocation_metadata or ()), self._tokens):
            return await continuation(handler_call_details)
        log.debug("%s: UNAUTHENTICATED", method)
        return self._reject


def server_credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured certificate chain and key, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
    )
