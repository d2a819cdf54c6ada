"""``python -m training``: one training run with settings from ``STREAMREC_TRAINING_*``."""

from __future__ import annotations

import logging
import os
import sys

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from pydantic import ValidationError

from training.encoder import ItemEncoder, default_model_dir
from training.errors import TrainingError
from training.job import run_once
from training.settings import TrainingSettings

log = logging.getLogger("training")


def main() -> int:
    """0 on success, 2 on bad settings or data, 3 when Kafka fails."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # per-connection INFO lines
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    consumer: KafkaConsumer | None = None
    producer: KafkaProducer | None = None
    try:
        settings = TrainingSettings()
        encoder = ItemEncoder.load(
            settings.model_dir or default_model_dir(),
            device=settings.device,
            max_length=settings.max_length,
            bf16=settings.bf16,
        )
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="streamrec-training",
            group_id=None,
            enable_auto_commit=False,
        )
        producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, client_id="streamrec-training", acks="all"
        )
        summary = run_once(settings, consumer=consumer, producer=producer, encoder=encoder)
    except (TrainingError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KafkaError as error:
        print(f"error: Kafka: {error!r}", file=sys.stderr)
        return 3
    finally:
        if producer is not None:
            producer.close()
        if consumer is not None:
            consumer.close()
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
