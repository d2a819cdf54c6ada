"""The topics the worker reads and writes, created at start when missing.

Runs before the Faust app, so a shape the worker cannot use stops start-up and every
topic has its contract's settings (contracts/topics.py) before anything subscribes.
"""

from __future__ import annotations

from collections.abc import Sequence

from mode import Service

from contracts.security import KafkaSecurity
from contracts.topics import (
    DEDUPE_CHANGELOG, DLQ, ENRICHED, EVENTS, ITEM_VECTORS, ITEMS, MODELS, RELATIONS,
    USERS_CHANGELOG,
    TopicContractError, TopicSpec, ensure_topics, spec, wait_for_coordinator,
)
from streams.errors import TopicSetupError
from streams.settings import StreamsSettings

CLIENT_ID = "streamrec-streams-setup"
FIX_COMMAND = "python -m streams topics fix"


def topic_specs(settings: StreamsSettings) -> list[TopicSpec]:
    """The contract topics the worker reads or writes (docs/contracts.md §2); ``relations``
    always: a deleted user's edges get tombstones there, read or not."""
    return [
        # User states and dedupe windows are restored per partition of events: the two must match.
        spec(EVENTS, settings.topic_events, settings, copartitioned=True),
        spec(USERS_CHANGELOG, settings.users_changelog(), settings, copartitioned=True),
        spec(DEDUPE_CHANGELOG, settings.dedupe_changelog(), settings, copartitioned=True),
        spec(ENRICHED, settings.topic_enriched, settings),
        spec(DLQ, settings.topic_dlq, settings),
        spec(ITEMS, settings.topic_items, settings),
        spec(ITEM_VECTORS, settings.topic_item_vectors, settings),
        spec(MODELS, settings.topic_models, settings),
        spec(RELATIONS, settings.topic_relations, settings),
    ]


class TopicSetup(Service):
    """Creates missing topics and checks the shape of existing ones, once, at start."""

    def __init__(self, specs: list[TopicSpec], *, bootstrap: str, groups: Sequence[str] = (),
                 security: KafkaSecurity | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.specs = specs
        self._bootstrap = bootstrap
        self._security = security
        self._groups = tuple(groups)

    async def on_start(self) -> None:
        try:
            await ensure_topics(self._bootstrap, self.specs, client_id=CLIENT_ID,
                                fix_command=FIX_COMMAND, security=self._security)
            for group in self._groups:  # on a new broker, before any consumer joins
                await wait_for_coordinator(self._bootstrap, group, client_id=CLIENT_ID,
                                           security=self._security)
        except TopicContractError as error:
            raise TopicSetupError(str(error)) from error
