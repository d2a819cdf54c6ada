"""Concurrent calls in one event-loop turn go out as one batch; errors reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from serving.coalesce import Coalescer


def test_calls_of_one_turn_share_a_batch_and_get_their_own_answers() -> None:
    batches: list[list[int]] = []

    async def square_all(numbers: list[int]) -> list[int]:
        batches.append(numbers)
        await asyncio.sleep(0)
        return [n * n for n in numbers]

    async def scenario() -> tuple[list[int], int]:
        coalescer: Coalescer[int, int] = Coalescer(square_all)
        together = await asyncio.gather(*(coalescer(n) for n in range(8)))
        later = await coalescer(9)  # a later turn: a batch of its own
        return list(together), later

    together, later = asyncio.run(scenario())
    assert together == [n * n for n in range(8)] and later == 81
    assert batches == [list(range(8)), [9]]


def test_a_failed_batch_fails_every_caller_and_the_next_batch_works() -> None:
    calls = 0

    async def flaky(numbers: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return numbers

    async def scenario() -> list[int]:
        coalescer: Coalescer[int, int] = Coalescer(flaky)
        results = await asyncio.gather(*(coalescer(n) for n in range(3)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        return list(await asyncio.gather(coalescer(1), coalescer(2)))

    assert asyncio.run(scenario()) == [1, 2]


def test_a_batch_answering_the_wrong_number_of_results_is_an_error() -> None:
    async def short(numbers: list[int]) -> list[int]:
        return numbers[:1]

    async def scenario() -> None:
        coalescer: Coalescer[int, int] = Coalescer(short)
        await asyncio.gather(coalescer(1), coalescer(2))

    with pytest.raises(RuntimeError, match="1 results for a batch of 2"):
        asyncio.run(scenario())
