"""How a client reaches the Recommender: one channel over every serving replica.

Serving replicas are independent processes, each on its own address; the client spreads
calls over them itself (no proxy). What a frontend in any language needs is the standard
gRPC service config in ``protos/recommender_service_config.json``:

- ``round_robin`` over every address the target resolves to (each call to the next
  replica whose connection is ready);
- ``healthCheckConfig``: the client watches each replica's health service
  (``streamrec.v1.Recommender``) and sends nothing to one that is NOT_SERVING, so a replica
  that is starting (loading its index) or stopping (after SIGTERM) gets no new calls;
- a ``retryPolicy`` on the read-only methods (``Recommend``, ``RecommendBatch``,
  ``SimilarItems``): an UNAVAILABLE attempt (a replica that went away mid-call) is tried
  again on another, at most 3 attempts within the call's deadline, with
  ``retryThrottling`` so an outage of every replica does not triple the load. Writes
  (``TrackEvents``, ``TrackRelations``) are not retried by the channel.

The target names the replicas: ``ipv4:10.0.0.5:50051,10.0.0.6:50051`` (a fixed list, what
:func:`recommender_target` makes of several addresses), or one ``dns:///serving:50051`` name
whose A records are the replicas (re-resolved when a connection is lost).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

import grpc

SERVICE_CONFIG_FILE = "recommender_service_config.json"  # in the protos package
MAX_RECONNECT_BACKOFF_MS = 2000  # a restarted replica is reconnected to within 2 s (gRPC's default: 120 s)


def service_config() -> dict[str, Any]:
    """The Recommender's service config (round robin, health checking, retries), parsed."""
    text = resources.files("protos").joinpath(SERVICE_CONFIG_FILE).read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def channel_options() -> list[tuple[str, str | int]]:
    """gRPC channel arguments for a channel to the replicas: the service config, and a
    short reconnect backoff (a replica restarted in a rolling restart takes calls again
    soon after it is SERVING)."""
    return [
        ("grpc.service_config", json.dumps(service_config())),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def recommender_target(addresses: str | Sequence[str]) -> str:
    """One gRPC target for the replicas at `addresses` (a list, or one comma-separated string).

    One address is used as given (``host:port``, ``dns:///name:port``, ``ipv4:...``). Several
    must be ``IP:port`` (``[IPv6]:port``) of one family and become an ``ipv4:``/``ipv6:``
    target; a host name among several is refused (ValueError): give one DNS name that
    resolves to every replica instead, so the list follows DNS.
    """
    parts = [addresses] if isinstance(addresses, str) else list(addresses)
    names = [name.strip() for part in parts for name in part.split(",") if name.strip()]
    if not names:
        raise ValueError("no serving address given")
    if len(names) == 1:
        return names[0]
    families = {_ip_family(name) for name in names}
    if len(families) != 1:
        raise ValueError(f"serving addresses {names} mix IPv4 and IPv6: give one family")
    return f"{families.pop()}:{','.join(names)}"


def _ip_family(address: str) -> str:
    """``ipv4`` or ``ipv6`` for ``IP:port``; ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"serving address {address!r} is not IP:port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(f"serving address {address!r}: several addresses must be IP:port "
                         "(for host names, give one dns:///name:port that resolves to every replica)") from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"serving address {address!r}: write an IPv6 address as [IP]:port")
    return f"ipv{ip.version}"


def recommender_channel(
    addresses: str | Sequence[str], *, credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel over the replicas at `addresses` with the service config above
    (TLS with `credentials`; more channel arguments in `options`)."""
    target = recommender_target(addresses)
    arguments = [*channel_options(), *options]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=arguments)
    return grpc.aio.secure_channel(target, credentials, options=arguments)
