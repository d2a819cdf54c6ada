"""contracts/channel.py: the Recommender's service config and the target of several replicas."""

from __future__ import annotations

import json

import pytest

from contracts.channel import channel_options, recommender_target, service_config
from protos import recommender_pb2

RECOMMENDER = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]


def test_service_config_balances_round_robin_and_watches_health() -> None:
    config = service_config()
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"]["serviceName"] == RECOMMENDER.full_name


def test_only_the_read_methods_are_retried_and_only_on_unavailable() -> None:
    (method_config,) = service_config()["methodConfig"]
    names = {(name["service"], name["method"]) for name in method_config["name"]}
    assert names == {(RECOMMENDER.full_name, m) for m in ("Recommend", "RecommendBatch", "SimilarItems")}
    assert all(method in RECOMMENDER.methods_by_name for _, method in names)  # no stale names
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps it at 5


def test_channel_options_carry_the_service_config_as_json() -> None:
    options = dict(channel_options())
    assert json.loads(str(options["grpc.service_config"])) == service_config()


@pytest.mark.parametrize(("addresses", "target"), [
    ("127.0.0.1:50051", "127.0.0.1:50051"),
    ("dns:///serving:50051", "dns:///serving:50051"),
    ("serving:50051", "serving:50051"),
    ("127.0.0.1:50061,127.0.0.1:50062", "ipv4:127.0.0.1:50061,127.0.0.1:50062"),
    (["10.0.0.5:50051", " 10.0.0.6:50051 "], "ipv4:10.0.0.5:50051,10.0.0.6:50051"),
    ("[::1]:50061,[::1]:50062", "ipv6:[::1]:50061,[::1]:50062"),
])
def test_a_target_names_every_replica(addresses: str | list[str], target: str) -> None:
    assert recommender_target(addresses) == target


@pytest.mark.parametrize(("addresses", "message"), [
    ("", "no serving address"),
    ("serving-1:50051,serving-2:50051", "dns:///name:port"),
    ("127.0.0.1:50061,[::1]:50062", "mix IPv4 and IPv6"),
    ("127.0.0.1,127.0.0.2:50051", "not IP:port"),
    ("127.0.0.1:99999,127.0.0.2:50051", "not IP:port"),
    ("::1:50061,::1:50062", r"\[IP\]:port"),
])
def test_a_target_that_cannot_name_the_replicas_is_refused(addresses: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recommender_target(addresses)

