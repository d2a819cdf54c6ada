"""Fixtures of the training tests: Kafka clients for fresh topics, a CPU encoder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer

from contracts.encoder import ItemEncoder, pretrained_model_dir


@pytest.fixture
def consumer(kafka_bootstrap: str) -> Iterator[KafkaConsumer]:
    client = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    yield client
    client.close()


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    yield client
    client.close()


@pytest.fixture(scope="session")
def cpu_encoder() -> ItemEncoder:
    return ItemEncoder.load(pretrained_model_dir(), device="cpu", max_length=64, bf16="off")
