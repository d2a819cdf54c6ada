"""``python -m training evaluate``: every finished model's figures are on disk before the
next one starts, and the training budget holds the text cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.__main__ import main
from training.offline import training_budget


def _csv(tmp_path: Path) -> Path:
    lines = ["user_id,item_id,timestamp"]
    for u in range(8):
        for t in range(6):
            lines.append(f"u{u},i{(u + t) % 5},{1_700_000_000 + t}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_results_are_written_after_each_model_even_when_a_later_one_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    code = main(["evaluate", "--interactions", str(_csv(tmp_path)),
                 "--models", "popular,item-knn,no-such-model", "--out", str(out)])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["popular", "item-knn"]
    assert list(result["unfiltered"]) == ["popular", "item-knn"]
    assert result["protocol"]["items"] == 5
    for row in result["models"].values():
        assert {"hr@10", "ndcg@10", "mrr", "train_seconds", "peak_rss_mb"} <= set(row)


def test_the_training_budget_holds_the_text_cache_and_its_refresh() -> None:
    assert training_budget(300.0, 150.0, refresh_s=30.0) == 120.0  # cache, refresh, train
    assert training_budget(300.0, 2.0, refresh_s=0.0) == 298.0
    assert training_budget(300.0, 400.0, refresh_s=30.0) == 1.0
