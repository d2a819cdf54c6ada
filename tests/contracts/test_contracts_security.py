"""contracts.security: one set of Kafka and Redis security settings for every deployable,
the client arguments built from them, and secrets that never show."""

from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from aiokafka.errors import SaslAuthenticationFailed
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.security import (
    KafkaSecurity,
    RedisSecurity,
    faust_credentials,
    kafka_kwargs,
    kafka_refusal,
    redis_kwargs,
    redis_refusal,
)
from ingest.settings import IngestSettings
from serving.settings import ServingSettings
from streams.settings import StreamsSettings
from training.settings import TrainingSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-never-shown"
DEPLOYABLES: list[tuple[type[BaseSettings], str]] = [
    (StreamsSettings, "STREAMREC_STREAMS_"), (ServingSettings, "STREAMREC_SERVING_"),
    (TrainingSettings, "STREAMREC_TRAINING_"), (IngestSettings, "STREAMREC_INGEST_"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(ROOT / "scripts/infra.sh"), "certs", str(directory)],
                   check=True, capture_output=True)
    return directory


@pytest.mark.parametrize(("settings_class", "prefix"), DEPLOYABLES)
def test_every_deployable_reads_the_same_names_after_its_prefix(
    settings_class: type[BaseSettings], prefix: str, certs: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                        "KAFKA_SASL_USERNAME": "shop", "KAFKA_SASL_PASSWORD": SECRET,
                        "KAFKA_SSL_CAFILE": str(certs / "ca.pem"),
                        "KAFKA_SSL_CHECK_HOSTNAME": "false"}.items():
        monkeypatch.setenv(prefix + name, value)
    settings = settings_class()
    assert isinstance(settings, KafkaSecurity)
    kwargs = kafka_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("shop", SECRET)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname is False
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "streamrec-local-ca"),),)
    # The secret is in no printed form of the settings.
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in shown


def test_plaintext_adds_nothing_to_the_clients() -> None:
    assert kafka_kwargs(KafkaSecurity()) == {} and kafka_kwargs(None) == {}
    assert faust_credentials(KafkaSecurity()) == {}


def test_mutual_tls_loads_the_client_certificate(certs: Path) -> None:
    sec = KafkaSecurity(kafka_security_protocol="SSL", kafka_ssl_cafile=certs / "ca.pem",
                        kafka_ssl_certfile=certs / "client.pem",
                        kafka_ssl_keyfile=certs / "client.key")
    kwargs = kafka_kwargs(sec)
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    credentials = faust_credentials(sec)["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    with pytest.raises(ValidationError, match="kafka_ssl_certfile and kafka_ssl_keyfile"):
        KafkaSecurity(kafka_ssl_certfile=certs / "client.pem")


def test_faust_gets_sasl_over_tls(certs: Path) -> None:
    sec = KafkaSecurity(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                        kafka_sasl_username="shop", kafka_sasl_password=SECRET,
                        kafka_ssl_cafile=certs / "ca.pem")
    credentials = faust_credentials(sec)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is not None


def test_a_missing_or_incomplete_setting_is_named_without_the_secret(monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    monkeypatch.setenv("STREAMREC_SERVING_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMREC_SERVING_KAFKA_SASL_PASSWORD", SECRET)
    with pytest.raises(ValidationError) as failed:
        ServingSettings()
    assert "kafka_sasl_username" in str(failed.value) and SECRET not in str(failed.value)
    monkeypatch.setenv("STREAMREC_SERVING_KAFKA_SASL_USERNAME", "shop")
    monkeypatch.setenv("STREAMREC_SERVING_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(ValidationError, match="kafka_ssl_cafile") as failed:
        ServingSettings()
    assert SECRET not in str(failed.value)


def test_refusals_name_the_variable_to_fix() -> None:
    sec = ServingSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="shop",
                          kafka_sasl_password=SECRET)
    line = kafka_refusal(SaslAuthenticationFailed("bad"), sec)
    assert line is not None and "STREAMREC_SERVING_KAFKA_SASL_PASSWORD" in line
    assert SECRET not in line
    verify = ssl.SSLCertVerificationError("verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    assert "STREAMREC_SERVING_KAFKA_SSL_CAFILE" in (kafka_refusal(verify, sec) or "")
    assert kafka_refusal(ConnectionRefusedError(), sec) is None  # left to the client


def test_redis_tls_files_go_to_rediss_urls_only(certs: Path) -> None:
    sec = RedisSecurity(redis_username="streams", redis_password=SECRET,
                        redis_ssl_ca_certs=certs / "ca.pem", redis_ssl_certfile=certs / "client.pem",
                        redis_ssl_keyfile=certs / "client.key")
    assert redis_kwargs("redis://h:6379/0", sec) == {"username": "streams", "password": SECRET}
    tls = redis_kwargs("rediss://h:6390/0", sec)
    assert tls["ssl_ca_certs"] == str(certs / "ca.pem")
    assert tls["ssl_certfile"] == str(certs / "client.pem")
    assert SECRET not in repr(sec)
    with pytest.raises(ValidationError, match="redis_username needs redis_password"):
        RedisSecurity(redis_username="streams")


def test_the_clients_debug_lines_never_show_the_sasl_exchange(caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    kafka_kwargs(KafkaSecurity(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
                               kafka_sasl_password=SECRET))
    caplog.set_level(logging.DEBUG)
    # What aiokafka.conn logs at DEBUG for a PLAIN authentication: the password in clear.
    logging.getLogger("aiokafka.conn").debug(
        "Request 3: %s", f"SaslAuthenticateRequest_v1(sasl_auth_bytes=b'\\x00u\\x00{SECRET}')")
    logging.getLogger("aiokafka.conn").debug("Response 3: %s", "MetadataResponse_v5()")
    assert SECRET not in caplog.text and "MetadataResponse_v5" in caplog.text


def test_redis_refusals_name_the_variable_to_fix() -> None:
    sec = StreamsSettings(redis_username="streams", redis_password=SECRET)
    line = redis_refusal(AuthenticationError("invalid username-password pair"), sec) or ""
    assert "STREAMREC_STREAMS_REDIS_PASSWORD" in line and SECRET not in line
    assert "docs/security.md" in (redis_refusal(NoPermissionError("NOPERM evalsha"), sec) or "")
    assert redis_refusal(RedisConnectionError("refused"), sec) is None  # retried by the caller


def test_a_cluster_url_names_its_seeds_and_refuses_what_a_cluster_lacks() -> None:
    from contracts.security import is_cluster_url, parse_cluster_url

    parsed = parse_cluster_url("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001")
    assert parsed.seeds == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert parsed.first == "redis://u:p@127.0.0.1:7000/0"
    assert parse_cluster_url("rediss+cluster://[::1]:7000/0?x=1").first == \
        "rediss://[::1]:7000/0?x=1"
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")
    for bad, why in [("redis+cluster://", "no seed"), ("redis+cluster://h", "not host:port"),
                     ("redis+cluster://h:1/2", "only database 0"), ("redis://h:1", "not a")]:
        with pytest.raises(ValueError, match=why):
            parse_cluster_url(bad)
