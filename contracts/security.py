"""How every Kafka and Redis client of streamrec authenticates and encrypts: one set of
settings (`KafkaSecurity`, `RedisSecurity`) each deployable's settings inherit, so the same
variable names (after the deployable's prefix) work everywhere, and the one place that
turns them into client arguments.

Secrets are `SecretStr`: their repr, str, JSON and the settings' repr show ``**********``;
only the builders below read them, to hand them to the client library.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, FilePath, SecretStr, model_validator
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, RedisClusterException, RedisError

# What a Redis client raises when Redis fails: redis-py's cluster client raises
# RedisClusterException (no RedisError) when it cannot reach the cluster or a slot has no node.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROBE_TIMEOUT_MS = 10_000
# The Kafka clients' DEBUG lines print each SASL request whole: with PLAIN, the password.
_SASL_LOGGERS = ("aiokafka.conn", "kafka.conn", "kafka.protocol.parser")


class SecurityError(Exception):
    """A broker or Redis refused this client's TLS or credentials."""


class KafkaSecurity(BaseModel):
    """How a deployable's Kafka clients connect (Kafka's own names, ``kafka_`` first)."""

    # A settings error would otherwise quote every input, a raw password among them.
    model_config = ConfigDict(hide_input_in_errors=True)

    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs "
                             "kafka_sasl_username and kafka_sasl_password")
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together")
        return self

    @property
    def kafka_uses_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")


class RedisSecurity(BaseModel):
    """How a deployable's Redis client authenticates (ACL user) and verifies TLS
    (a ``rediss://`` URL turns TLS on)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: FilePath | None = None
    redis_ssl_certfile: FilePath | None = None
    redis_ssl_keyfile: FilePath | None = None

    @model_validator(mode="after")
    def _complete(self) -> RedisSecurity:
        if self.redis_username and self.redis_password is None:
            raise ValueError("redis_username needs redis_password")
        if (self.redis_ssl_certfile is None) != (self.redis_ssl_keyfile is None):
            raise ValueError("redis_ssl_certfile and redis_ssl_keyfile go together")
        return self


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _path(value: Path | None) -> str | None:
    return None if value is None else str(value)


def kafka_ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context of `sec`'s Kafka connections; None without TLS."""
    if not sec.kafka_uses_tls:
        return None
    context = create_ssl_context(
        cafile=_path(sec.kafka_ssl_cafile), certfile=_path(sec.kafka_ssl_certfile),
        keyfile=_path(sec.kafka_ssl_keyfile), password=_secret(sec.kafka_ssl_key_password))
    context.check_hostname = sec.kafka_ssl_check_hostname
    return context


class _NoSaslBytes(logging.Filter):
    """Drops a log record that shows SASL exchange bytes (the credentials themselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sasl_auth_bytes" not in record.getMessage()


_NO_SASL_BYTES = _NoSaslBytes()


def kafka_kwargs(sec: KafkaSecurity | None) -> dict[str, Any]:
    """Keyword arguments of an aiokafka (or kafka-python) client, admin, consumer or
    producer: nothing for PLAINTEXT (the libraries' default). With SASL, the clients'
    loggers stop showing the exchange's bytes from here on."""
    if sec is None or sec.kafka_security_protocol == "PLAINTEXT":
        return {}
    if sec.kafka_security_protocol.startswith("SASL_"):
        for name in _SASL_LOGGERS:
            logger = logging.getLogger(name)
            if _NO_SASL_BYTES not in logger.filters:
                logger.addFilter(_NO_SASL_BYTES)
    kwargs: dict[str, Any] = {"security_protocol": sec.kafka_security_protocol}
    context = kafka_ssl_context(sec)
    if context is not None:
        kwargs["ssl_context"] = context
    if sec.kafka_security_protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=sec.kafka_sasl_mechanism,
                      sasl_plain_username=sec.kafka_sasl_username,
                      sasl_plain_password=_secret(sec.kafka_sasl_password))
    return kwargs


def faust_credentials(sec: KafkaSecurity) -> dict[str, Any]:
    """``broker_credentials`` (and nothing else) of ``faust.App`` for `sec`."""
    import faust  # the worker's library; the other deployables never import it

    credentials: Any
    if sec.kafka_security_protocol == "PLAINTEXT":
        return {}
    if sec.kafka_security_protocol == "SSL":
        credentials = faust.SSLCredentials(kafka_ssl_context(sec))
    else:
        credentials = faust.SASLCredentials(
            username=sec.kafka_sasl_username, password=_secret(sec.kafka_sasl_password),
            ssl_context=kafka_ssl_context(sec), mechanism=sec.kafka_sasl_mechanism)
    return {"broker_credentials": credentials}


def _hosts(bootstrap: str | list[str]) -> list[tuple[str, int]]:
    servers = bootstrap.split(",") if isinstance(bootstrap, str) else bootstrap
    hosts = []
    for server in (s.strip() for s in servers if s.strip()):
        host, _, port = server.rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def env_name(sec: BaseModel, field: str) -> str:
    """The variable that sets `field` of `sec` (a deployable's settings have a prefix)."""
    return f"{sec.model_config.get('env_prefix', '')}{field}".upper()


def kafka_refusal(error: BaseException, sec: KafkaSecurity) -> str | None:
    """One line naming the setting to fix when `error` is the broker refusing `sec`'s
    TLS or credentials; None for any other error."""
    name = env_name(sec, "kafka_")
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the Kafka broker's TLS certificate is not trusted ({error.verify_message}): "
                f"check {name}SSL_CAFILE (and {name}SSL_CHECK_HOSTNAME)")
    if isinstance(error, ssl.SSLError):
        return (f"TLS with the Kafka broker failed ({error.reason}): check "
                f"{name}SECURITY_PROTOCOL, {name}SSL_CAFILE, {name}SSL_CERTFILE/KEYFILE")
    if isinstance(error, KafkaError) and "auth" in type(error).__name__.lower():
        return (f"the Kafka broker refused SASL {sec.kafka_sasl_mechanism} authentication of "
                f"user {sec.kafka_sasl_username!r}: check {name}SASL_USERNAME, "
                f"{name}SASL_PASSWORD and {name}SASL_MECHANISM")
    return None


async def probe_kafka(bootstrap: str | list[str], sec: KafkaSecurity | None, *,
                      client_id: str) -> None:
    """Open one connection to a bootstrap server with `sec` and raise `SecurityError`
    with one line naming the setting when the broker refuses its TLS or credentials
    (aiokafka itself logs such a refusal and retries the next host, then says only that
    it could not bootstrap). A host it cannot reach is left to the client's own errors."""
    if sec is None or sec.kafka_security_protocol == "PLAINTEXT":
        return
    kwargs = kafka_kwargs(sec)
    for host, port in _hosts(bootstrap):
        try:
            conn = await create_conn(host, port, client_id=client_id,
                                     request_timeout_ms=PROBE_TIMEOUT_MS, **kwargs)
        except (OSError, KafkaError, asyncio.TimeoutError) as error:
            line = kafka_refusal(error, sec)
            if line is not None:
                raise SecurityError(line) from None
            continue
        conn.close()
        return


def redis_kwargs(url: str, sec: RedisSecurity | None) -> dict[str, Any]:
    """Keyword arguments of redis-py's ``from_url`` of `url` for `sec` (the TLS files
    apply to a ``rediss://`` URL only)."""
    if sec is None:
        return {}
    kwargs: dict[str, Any] = {}
    if sec.redis_username:
        kwargs["username"] = sec.redis_username
    if sec.redis_password is not None:
        kwargs["password"] = _secret(sec.redis_password)
    if not url.startswith("rediss://"):
        return kwargs
    if sec.redis_ssl_ca_certs is not None:
        kwargs["ssl_ca_certs"] = str(sec.redis_ssl_ca_certs)
    if sec.redis_ssl_certfile is not None:
        kwargs["ssl_certfile"] = str(sec.redis_ssl_certfile)
        kwargs["ssl_keyfile"] = str(sec.redis_ssl_keyfile)
    return kwargs


def redis_refusal(error: BaseException, sec: RedisSecurity) -> str | None:
    """One line naming the setting to fix when `error` is Redis refusing `sec`'s TLS or
    credentials; None for any other error (an unreachable Redis is retried)."""
    name = env_name(sec, "redis_")
    if isinstance(error, ssl.SSLCertVerificationError) or (
            isinstance(error, RedisError) and "CERTIFICATE_VERIFY_FAILED" in str(error)):
        return f"Redis's TLS certificate is not trusted: check {name}SSL_CA_CERTS"
    if isinstance(error, AuthenticationError) or "WRONGPASS" in str(error):
        return (f"Redis refused user {sec.redis_username or 'default'!r}: check "
                f"{name}USERNAME and {name}PASSWORD")
    if isinstance(error, NoPermissionError):
        return (f"Redis user {sec.redis_username or 'default'!r} may not run this deployable's "
                f"commands ({error}): see the ACL rules in docs/security.md")
    return None


async def probe_redis(url: str, sec: RedisSecurity) -> None:
    """Ping Redis with `sec` and raise `SecurityError` with one line naming the setting
    when it refuses the TLS or the credentials (other errors are left to the caller)."""
    client = async_redis_client(url, sec, socket_connect_timeout=10, socket_timeout=10)
    try:
        await client.ping()
    except (RedisError, RedisClusterException, OSError) as error:
        line = redis_refusal(error, sec)
        if line is not None:
            raise SecurityError(line) from None
    finally:
        await client.aclose()


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ClusterUrl(NamedTuple):
    """A ``redis+cluster://[user:password@]host:port[,host:port...]`` URL (``rediss+cluster``
    for TLS): the seed nodes redis-py's cluster client discovers the cluster from, and the
    plain URL of the first seed (its scheme, credentials and options)."""

    seeds: tuple[tuple[str, int], ...]
    first: str


def is_cluster_url(url: str) -> bool:
    """True for a Redis Cluster URL (:class:`ClusterUrl`)."""
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    """The seeds of a cluster URL; ValueError naming what is wrong (no seed, a seed
    without a port, a database other than 0: a cluster has only database 0)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port,...): {url!r}")
    auth, _, hosts = rest.rpartition("@")
    hosts, _, tail = hosts.partition("/")
    path, _, query = tail.partition("?")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}: {url!r}")
    seeds = []
    for seed in filter(None, hosts.split(",")):
        host, colon, port = seed.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"seed {seed!r} of {url!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    if not seeds:
        raise ValueError(f"no seed node in Redis Cluster URL {url!r}")
    first_seed = next(filter(None, hosts.split(",")))
    first = f"{CLUSTER_SCHEMES[scheme]}://{auth + '@' if auth else ''}{first_seed}/0"
    return ClusterUrl(tuple(seeds), first + (f"?{query}" if query else ""))


def _plain_and_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    parsed = parse_cluster_url(url)
    return parsed.first, list(parsed.seeds)


def redis_client(url: str, sec: RedisSecurity | None, **options: Any) -> Redis:
    """A synchronous redis-py client of `url` with `sec`'s ACL user and TLS files; a
    :class:`ClusterUrl` gives redis-py's cluster client (``RedisCluster``), which has the
    commands of ``Redis`` for keys of one slot."""
    if is_cluster_url(url):
        first, seeds = _plain_and_seeds(url)
        return cast(Redis, RedisCluster.from_url(
            first, startup_nodes=[ClusterNode(h, p) for h, p in seeds],
            **redis_kwargs(first, sec), **options))
    return Redis.from_url(url, **redis_kwargs(url, sec), **options)


def async_redis_client(url: str, sec: RedisSecurity | None, **options: Any) -> AsyncRedis:
    """The asyncio twin of :func:`redis_client`."""
    if is_cluster_url(url):
        first, seeds = _plain_and_seeds(url)
        return cast(AsyncRedis, AsyncRedisCluster.from_url(
            first, startup_nodes=[AsyncClusterNode(h, p) for h, p in seeds],
            **redis_kwargs(first, sec), **options))
    return AsyncRedis.from_url(url, **redis_kwargs(url, sec), **options)
