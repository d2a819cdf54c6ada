"""Per model version click-through and conversion (docs/contracts.md): the join of the
``recommendations`` log with the clicks and purchases on ``events.enriched`` that carry a
served ``recommendation_id``, what ``python -m serving.cli.report`` prints and the
operator console's experiments page draws.

- served: recommendations logged for the version;
- click-through: share of served recommendations with at least one CLICK;
- conversion: share of served recommendations with at least one PURCHASE.

Events whose id no served recommendation has are counted as unattributed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protos import events_pb2


@dataclass
class VersionReport:
    """What one model version served and what users did with it."""

    version: str
    served: int = 0
    items_shown: int = 0
    clicked: int = 0  # recommendations with at least one click
    converted: int = 0  # recommendations with at least one purchase
    clicks: int = 0
    purchases: int = 0

    @property
    def click_through(self) -> float:
        return self.clicked / self.served if self.served else 0.0

    @property
    def conversion(self) -> float:
        return self.converted / self.served if self.served else 0.0


def compute(
    served: Iterable[events_pb2.RecommendationLog], events: Iterable[events_pb2.Event]
) -> tuple[dict[str, VersionReport], int]:
    """Reports by version and the number of unattributed click/purchase events."""
    reports: dict[str, VersionReport] = {}
    version_of: dict[str, str] = {}
    for entry in served:
        report = reports.setdefault(entry.model_version, VersionReport(entry.model_version))
        if entry.recommendation_id not in version_of:
            report.served += 1
            report.items_shown += len(entry.item_ids)
            version_of[entry.recommendation_id] = entry.model_version
    clicked: set[str] = set()
    converted: set[str] = set()
    unattributed = 0
    for event in events:
        if event.type not in (events_pb2.CLICK, events_pb2.PURCHASE) or not event.recommendation_id:
            continue
        version = version_of.get(event.recommendation_id)
        if version is None:
            unattributed += 1
            continue
        report = reports[version]
        if event.type == events_pb2.CLICK:
            report.clicks += 1
            clicked.add(event.recommendation_id)
        else:
            report.purchases += 1
            converted.add(event.recommendation_id)
    for recommendation_id in clicked:
        reports[version_of[recommendation_id]].clicked += 1
    for recommendation_id in converted:
        reports[version_of[recommendation_id]].converted += 1
    return reports, unattributed
