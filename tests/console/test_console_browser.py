"""The console as a person uses it, in headless Chromium, against the real stack of
conftest.py (a MovieLens-1M slice replayed, two trained versions): each page's figures match
what the deployables themselves say, the routing controls change serving's routing, and
a dead letter whose cause is fixed is re-driven into the event log. A screenshot of each
page is saved in the test's output directory."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaProducer

from console.figures import total
from contracts.online import RedisKeys
from protos import events_pb2, recommender_pb2
from conftest import REPLAYED, TOKEN, ConsoleStack

pytest.importorskip("playwright", reason="the dev dependency playwright is not installed")
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.timeout(1800)]  # the stack, two trainings and the browser


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, console_stack: ConsoleStack) -> Iterator[Page]:
    """A signed-in tab (the console runs with a token)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(console_stack.url)
    expect(tab).to_have_url(f"{console_stack.url}login?next=/")
    tab.fill("#token", TOKEN)
    tab.click("#sign-in")
    expect(tab.locator("h1")).to_have_text("Overview")
    yield tab
    context.close()


def shot(page: Page, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    assert (out / f"{name}.png").stat().st_size > 0


def card(page: Page, card_id: str) -> str:
    return page.locator(f"#{card_id} .value").inner_text().strip()


def test_without_the_token_a_page_asks_for_it(console_stack: ConsoleStack) -> None:
    request = urllib.request.Request(f"{console_stack.url}experiments/rollback", data=b"",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    with urllib.request.urlopen(console_stack.url, timeout=10) as answer:  # follows the redirect
        assert answer.url.startswith(f"{console_stack.url}login")


def test_the_overview_shows_the_deployables_own_figures(
    page: Page, console_stack: ConsoleStack, known_user: str, tmp_path: Path
) -> None:
    recommender = console_stack.recommender()
    for _ in range(20):  # Recommend latency to show
        recommender.Recommend(recommender_pb2.RecommendRequest(user_id=known_user, k=10), timeout=10)
    streams = console_stack.scrape(console_stack.streams_metrics)
    events_in = total(streams, "streams_events_in_total")
    assert events_in >= REPLAYED

    def shown() -> bool | None:
        page.reload()
        return card(page, "events-in") == f"{events_in:,.0f}" or None

    console_stack.eventually(shown, "the overview's events in matching streams' metrics")
    enriched = total(streams, "streams_events_enriched_total")
    assert card(page, "enriched") == f"{enriched:,.0f}"
    status = console_stack.admin_status()
    assert card(page, "production") == status.production == console_stack.trained
    assert card(page, "previous") == status.previous != ""
    loaded = page.locator("#loaded tr").all_inner_texts()
    for model in status.loaded:
        assert any(model.version in row and f"{model.n_items:,}" in row and model.index_kind in row
                   for row in loaded), loaded
    def latency_shown() -> bool | None:
        page.reload()
        return page.locator("#latency").inner_text().count(" ms") == 6 or None

    console_stack.eventually(latency_shown, "freshness and Recommend percentiles")
    assert page.locator("svg.chart").count() == 5
    shot(page, tmp_path, "overview")


def test_a_user_page_shows_their_state_and_live_recommendations(
    page: Page, console_stack: ConsoleStack, known_user: str, redis_url: str, tmp_path: Path
) -> None:
    page.goto(f"{console_stack.url}user")
    page.fill("#user-id", known_user)
    page.click("#look-up")
    expect(page.locator("#recommendations")).to_be_visible()
    direct = console_stack.recommender().Recommend(
        recommender_pb2.RecommendRequest(user_id=known_user, k=10), timeout=10)
    rows = page.locator("#recommendations tr").all_inner_texts()[1:]
    assert [row.split("\t")[1] for row in rows] == [item.item_id for item in direct.items]
    assert page.locator("#strategy").inner_text() == direct.strategy
    client = redis.Redis.from_url(redis_url)
    try:
        version = client.hget(RedisKeys(console_stack.stack.redis_prefix).user_vector(known_user),
                               "version")
    finally:
        client.close()
    assert version is not None
    assert page.locator("#vector-version").inner_text() == version.decode()
    assert page.locator("#recent tr").count() > 1
    shot(page, tmp_path, "user")


def test_an_item_page_shows_its_catalog_entry_and_similar_items(page: Page, console_stack: ConsoleStack,
                                          known_item: str, tmp_path: Path) -> None:
    page.goto(f"{console_stack.url}item")
    page.fill("#item-id", known_item)
    page.click("#look-up")
    expect(page.locator("#similar")).to_be_visible()
    direct = console_stack.recommender().SimilarItems(
        recommender_pb2.SimilarItemsRequest(item_id=known_item, k=10), timeout=10)
    rows = page.locator("#similar tr").all_inner_texts()[1:]
    assert [row.split("\t")[2] for row in rows] == [item.title for item in direct.items]
    title = page.locator("#catalog-title").inner_text()  # MovieLens: the id is "Title (year)"
    assert title and known_item.startswith(title)
    shot(page, tmp_path, "item")


def test_the_models_page_shows_the_manifest_quality_and_loss_curve(
    page: Page, console_stack: ConsoleStack, tmp_path: Path
) -> None:
    page.goto(f"{console_stack.url}models")
    section = page.locator(f"#model-{console_stack.trained}")
    expect(section.locator("h2")).to_have_text(f"{console_stack.trained} (production)")
    expect(section.locator(".gate")).to_have_text("passed")
    expect(section.locator(".quality")).to_contain_text("hr@10")
    curve = section.locator(f'svg[aria-label="training loss {console_stack.trained}"]')
    expect(curve).to_be_visible()
    assert curve.locator("polyline, circle").count() >= 1
    shot(page, tmp_path, "models")


def test_the_experiments_page_counts_clicks_on_a_versions_recommendations(
    page: Page, console_stack: ConsoleStack, known_user: str, tmp_path: Path
) -> None:
    answer = console_stack.recommender().Recommend(
        recommender_pb2.RecommendRequest(user_id=known_user, k=5), timeout=10)
    assert answer.model_version == console_stack.trained and answer.recommendation_id
    stack = console_stack.stack
    click = events_pb2.Event(event_id="console-click-1", user_id=known_user,
                             item_id=answer.items[0].item_id, type=events_pb2.CLICK,
                             timestamp_ms=int(time.time() * 1000),
                             recommendation_id=answer.recommendation_id)
    producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all")
    producer.send(stack.topics["events"], key=known_user.encode(), value=click.SerializeToString())
    producer.flush()
    producer.close()
    row = page.locator(f'tr.report[data-version="{console_stack.trained}"]')

    def clicked() -> bool | None:
        page.goto(f"{console_stack.url}experiments")
        return (row.count() == 1 and row.locator(".clicked").inner_text() == "1") or None

    console_stack.eventually(clicked, "the click on the trained version's recommendation")
    served = int(row.locator(".served").inner_text())
    assert served >= 1
    assert row.locator(".ctr").inner_text() == f"{100 / served:.2f} %"
    expect(page.locator('svg[aria-label="click-through by version"]')).to_be_visible()
    shot(page, tmp_path, "experiments-report")


def test_rollback_promote_and_split_ask_first_then_change_servings_routing(
    page: Page, console_stack: ConsoleStack, tmp_path: Path
) -> None:
    trained = console_stack.trained
    before = console_stack.admin_status()
    assert before.production == trained and before.previous
    page.goto(f"{console_stack.url}experiments")
    page.click("#rollback")
    expect(page.locator("#question")).to_have_text("Swap production and previous?")
    assert console_stack.admin_status().production == trained  # nothing before confirming
    page.click("#confirm")
    expect(page.locator("#routing-production")).to_have_text(before.previous)
    assert console_stack.admin_status().production == before.previous
    shot(page, tmp_path, "experiments-rolled-back")

    page.click(f'button.promote[data-version="{trained}"]')
    expect(page.locator("#question")).to_have_text(f"Make {trained} production?")
    page.click("#confirm")
    expect(page.locator("#routing-production")).to_have_text(trained)
    status = console_stack.admin_status()
    assert (status.production, status.previous) == (trained, before.previous)

    page.fill('#split-form input[name="percent"]', "10")
    page.select_option('#split-form select[name="version"]', before.previous)
    page.click("#split")
    expect(page.locator("#question")).to_have_text(f"Send 10 % of users to {before.previous}?")
    page.click("#confirm")
    expect(page.locator("#routing-candidate")).to_have_text(f"{before.previous} (10 % of users)")
    status = console_stack.admin_status()
    assert (status.candidate, status.percent) == (before.previous, 10.0)
    shot(page, tmp_path, "experiments")

    page.fill('#split-form input[name="percent"]', "0")
    page.click("#split")
    expect(page.locator("#question")).to_have_text("End the experiment (everyone on production)?")
    page.click("#confirm")
    expect(page.locator("#routing-candidate")).to_contain_text("(0 % of users)")
    assert console_stack.admin_status().percent == 0


def test_a_dead_letter_is_re_driven_once_its_cause_is_fixed(
    page: Page, console_stack: ConsoleStack, known_user: str, tmp_path: Path
) -> None:
    stack = console_stack.stack
    producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all")
    event = events_pb2.Event(event_id="console-redrive-1", user_id=known_user, item_id="new-film",
                             type=events_pb2.CLICK, timestamp_ms=int(time.time() * 1000))
    producer.send(stack.topics["events"], key=known_user.encode(), value=event.SerializeToString())
    producer.flush()

    def unknown_item_row() -> bool | None:
        page.goto(f"{console_stack.url}deadletters")
        row = page.locator('tr.reason[data-reason="unknown_item"]')
        return (row.count() == 1 and row.locator(".count").inner_text() == "1") or None

    console_stack.eventually(unknown_item_row, "the unknown_item dead letter on the page")
    shot(page, tmp_path, "deadletters")
    enriched_before = total(console_stack.scrape(console_stack.streams_metrics),
                            "streams_events_enriched_total")

    # the fix: the item joins the catalog (streams knows it once serving has its vector)
    item = events_pb2.Item(item_id="new-film", title="A New Film (2026)", categories=["Drama"],
                           availability=events_pb2.IN_STOCK)
    producer.send(stack.topics["items"], key=b"new-film", value=item.SerializeToString())
    producer.flush()
    producer.close()
    recommender = console_stack.recommender()

    def embedded() -> bool | None:
        try:
            recommender.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="new-film", k=1),
                                     timeout=5)
        except Exception:  # NOT_FOUND until the vector arrives
            return None
        return True

    console_stack.eventually(embedded, "the new item's vector in serving")

    page.click('button.redrive[data-reason="unknown_item"]')
    expect(page.locator("#question")).to_contain_text("unknown_item")
    page.click("#confirm")
    expect(page.locator("#state")).to_contain_text("done", timeout=60_000)
    expect(page.locator("#progress")).to_have_text(re.compile(r"re-driven 1$"))
    shot(page, tmp_path, "redrive")

    def enriched_now() -> float | None:
        now = total(console_stack.scrape(console_stack.streams_metrics),
                    "streams_events_enriched_total")
        return now if now == enriched_before + 1 else None

    console_stack.eventually(enriched_now, "the re-driven event in events.enriched")
