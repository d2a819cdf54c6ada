"""The gRPC servicers: decode, call the recommender or the model admin, encode.

Every method goes through :func:`translated`: it bounds the work by the caller's
deadline, turns a ServingError into the status code of errors.STATUS_CODES (with
``google.rpc.BadRequest`` details when it names bad fields), and records latency and
errors in the server's metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from protos import recommender_pb2, recommender_pb2_grpc
from serving.deletions import DeletionWriter, check_user_id
from serving.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ServingError,
    status_code,
    status_trailers,
)
from serving.metrics import Metrics
from serving.models import Routing
from serving.recommender import Recommendation, Recommender, Shown
from serving.releases import ModelAdmin
from serving.requests import (
    Limits,
    check_events,
    check_relations,
    parse_batch,
    parse_recommend,
    parse_similar,
)
from serving.tracking import EventSink, RelationSink

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def translated(method: Method[Request, Response]) -> Method[Request, Response]:
    """Bounds the call by its deadline, maps ServingError to its status code, measures it."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        metrics: Metrics | None = self.metrics
        started = time.perf_counter()
        try:
            remaining = context.time_remaining()
            try:
                if remaining is None:
                    return await method(self, request, context)
                async with asyncio.timeout(remaining):
                    return await method(self, request, context)
            except TimeoutError as error:
                raise DeadlineExceeded(f"deadline of {remaining:.3f} s exceeded") from error
        except asyncio.CancelledError:
            # gRPC cancels the handler when the caller's deadline passes first (a busy loop
            # may see that before its own timer): still a deadline miss, counted as one.
            if metrics is not None and remaining is not None and (context.time_remaining() or 0) <= 0:
                metrics.errors.labels(name, grpc.StatusCode.DEADLINE_EXCEEDED.name).inc()
            raise
        except ServingError as error:
            code = status_code(error)
            if metrics is not None:
                metrics.errors.labels(name, code.name).inc()
            level = logging.WARNING if code == grpc.StatusCode.UNAVAILABLE else logging.DEBUG
            log.log(level, "%s: %s %s", name, code.name, error)
            await context.abort(code, str(error), trailing_metadata=status_trailers(error))
            raise AssertionError("context.abort returned") from error  # abort always raises
        finally:
            if metrics is not None:
                metrics.method_latency(name).observe(time.perf_counter() - started)

    return call


def _scored(item: Shown) -> recommender_pb2.ScoredItem:
    return recommender_pb2.ScoredItem(
        item_id=item.item_id,
        score=item.score,
        title=item.title,
        reason=item.reason,
        categories=item.categories,
        social_proof=item.social_proof,
        social_count=item.social_count,
        social_user_ids=item.social_user_ids,
    )


def _response(result: Recommendation) -> recommender_pb2.RecommendResponse:
    """The response, its items added in place (not built apart and then copied in)."""
    response = recommender_pb2.RecommendResponse(
        model_version=result.model_version,
        recommendation_id=result.recommendation_id,
        strategy=result.strategy,
    )
    add = response.items.add
    for item in result.items:
        add(item_id=item.item_id, score=item.score, title=item.title, reason=item.reason,
            categories=item.categories, social_proof=item.social_proof,
            social_count=item.social_count, social_user_ids=item.social_user_ids)
    return response


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Thin edge over :class:`Recommender`, :class:`EventSink` and :class:`RelationSink`."""

    def __init__(self, *, recommender: Recommender, sink: EventSink, relations: RelationSink,
                 limits: Limits, metrics: Metrics | None = None) -> None:
        self._recommender = recommender
        self._sink = sink
        self._relations = relations
        self._limits = limits
        self.metrics = metrics

    @translated
    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        return _response(await self._recommender.recommend(parse_recommend(request, self._limits)))

    @translated
    async def RecommendBatch(
        self, request: recommender_pb2.RecommendBatchRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendBatchResponse:
        results = await self._recommender.recommend_batch(parse_batch(request, self._limits))
        return recommender_pb2.RecommendBatchResponse(responses=[_response(r) for r in results])

    @translated
    async def SimilarItems(
        self, request: recommender_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.SimilarItemsResponse:
        result = await self._recommender.similar(parse_similar(request, self._limits))
        return recommender_pb2.SimilarItemsResponse(
            items=[_scored(item) for item in result.items],
            model_version=result.model_version,
            recommendation_id=result.recommendation_id,
        )

    @translated
    async def TrackEvents(
        self, request: recommender_pb2.TrackEventsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.TrackEventsResponse:
        events = check_events(request, self._limits, now_ms=int(time.time() * 1000))
        accepted = await self._sink.send(events)
        return recommender_pb2.TrackEventsResponse(accepted=accepted)

    @translated
    async def TrackRelations(
        self, request: recommender_pb2.TrackRelationsRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.TrackRelationsResponse:
        relations = check_relations(request, self._limits, now_ms=int(time.time() * 1000))
        accepted = await self._relations.send(relations)
        return recommender_pb2.TrackRelationsResponse(accepted=accepted)


class DiagnosticsServicer(recommender_pb2_grpc.DiagnosticsServicer):
    """Echo on the public server stack: the baseline a load test compares Recommend with."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    @translated
    async def Echo(
        self, request: recommender_pb2.EchoMessage, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.EchoMessage:
        return request


def model_status(admin: ModelAdmin, routing: Routing) -> recommender_pb2.ModelStatus:
    return recommender_pb2.ModelStatus(
        production=routing.production,
        previous=routing.previous or "",
        candidate=routing.candidate or "",
        percent=routing.percent,
        loaded=[
            recommender_pb2.LoadedModel(version=m.version, n_items=len(m.index), index_kind=m.index.kind)
            for m in admin.models.loaded()
        ],
        **admin.status_fields(),
    )


class AdminServicer(recommender_pb2_grpc.AdminServicer):
    """Model versions and the traffic split, changed without restart; users' deletions."""

    def __init__(self, admin: ModelAdmin, metrics: Metrics | None = None, *,
                 deletions: DeletionWriter | None = None, max_id_chars: int = 1024) -> None:
        self._admin = admin
        self.metrics = metrics
        self._deletions = deletions
        self._max_id_chars = max_id_chars

    def _status(self, routing: Routing) -> recommender_pb2.ModelStatus:
        return model_status(self._admin, routing)

    @translated
    async def Promote(self, request: recommender_pb2.PromoteRequest,
                      context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        if not request.version:
            raise InvalidRequest("version is required")
        return self._status(await self._admin.promote(request.version, request.uri))

    @translated
    async def Rollback(self, request: recommender_pb2.RollbackRequest,
                       context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return self._status(await self._admin.rollback())

    @translated
    async def SetSplit(self, request: recommender_pb2.SetSplitRequest,
                       context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        if not 0 <= request.percent <= 100:
            raise InvalidRequest(f"percent must be between 0 and 100, got {request.percent}")
        if request.percent and not request.version:
            raise InvalidRequest("version is required")
        try:
            return self._status(await self._admin.set_split(request.version, request.percent,
                                                            request.uri))
        except ValueError as error:
            raise InvalidRequest(str(error)) from error

    @translated
    async def Status(self, request: recommender_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return self._status(self._admin.models.routing)

    @translated
    async def DeleteUser(self, request: recommender_pb2.DeleteUserRequest,
                         context: grpc.aio.ServicerContext) -> recommender_pb2.DeleteUserResponse:
        user_id = check_user_id(request.user_id, self._max_id_chars)
        if self._deletions is None:
            raise ServingError("this server has no deletion writer")
        deletion = await self._deletions.delete(user_id)
        return recommender_pb2.DeleteUserResponse(user_id=deletion.user_id,
                                                  requested_at_ms=deletion.requested_at_ms)
