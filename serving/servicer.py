"""The ``streamrec.v1.Recommender`` servicer: decode, call the recommender, encode."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from protos import recommender_pb2, recommender_pb2_grpc
from serving.errors import ServingError, status_code
from serving.recommender import Recommender, Shown
from serving.requests import Limits, check_events, parse_recommend, parse_similar
from serving.tracking import EventSink

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[["RecommenderServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def translated(method: Method[Request, Response]) -> Method[Request, Response]:
    """Ends the call with the status code of errors.STATUS_CODES for a ServingError."""

    @functools.wraps(method)
    async def call(
        self: RecommenderServicer, request: Request, context: grpc.aio.ServicerContext
    ) -> Response:
        try:
            return await method(self, request, context)
        except ServingError as error:
            code = status_code(error)
            level = logging.WARNING if code == grpc.StatusCode.UNAVAILABLE else logging.DEBUG
            log.log(level, "%s: %s %s", method.__name__, code.name, error)
            await context.abort(code, str(error))
            raise AssertionError("context.abort returned") from error  # abort always raises

    return call


def _scored(item: Shown) -> recommender_pb2.ScoredItem:
    return recommender_pb2.ScoredItem(
        item_id=item.item_id,
        score=item.score,
        title=item.title,
        reason=item.reason,
        categories=item.categories,
    )


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Thin edge over :class:`Recommender` and :class:`EventSink`."""

    def __init__(self, *, recommender: Recommender, sink: EventSink, limits: Limits) -> None:
        self._recommender = recommender
        self._sink = sink
        self._limits = limits

    @translated
    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        result = await self._recommender.recommend(parse_recommend(request, self._limits))
        return recommender_pb2.RecommendResponse(
            items=[_scored(item) for item in result.items],
            model_version=result.model_version,
            recommendation_id=result.recommendation_id,
            strategy=result.strategy,
        )

    @translated
    async def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.SimilarItemsResponse:
        items = self._recommender.similar(parse_similar(request, self._limits))
        return recommender_pb2.SimilarItemsResponse(
            items=[_scored(item) for item in items],
            model_version=self._recommender.model_version,
        )

    @translated
    async def TrackEvents(
        self, request: recommender_pb2.TrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.TrackEventsResponse:
        accepted = await self._sink.send(check_events(request, self._limits))
        return recommender_pb2.TrackEventsResponse(accepted=accepted)
