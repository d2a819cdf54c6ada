from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    VIEW: _ClassVar[EventType]
    CLICK: _ClassVar[EventType]
    ADD_TO_CART: _ClassVar[EventType]
    PURCHASE: _ClassVar[EventType]
    RATING: _ClassVar[EventType]

class Availability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AVAILABILITY_UNSPECIFIED: _ClassVar[Availability]
    IN_STOCK: _ClassVar[Availability]
    OUT_OF_STOCK: _ClassVar[Availability]
    DISCONTINUED: _ClassVar[Availability]

class RelationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELATION_KIND_UNSPECIFIED: _ClassVar[RelationKind]
    FOLLOW: _ClassVar[RelationKind]
    FRIEND: _ClassVar[RelationKind]
EVENT_TYPE_UNSPECIFIED: EventType
VIEW: EventType
CLICK: EventType
ADD_TO_CART: EventType
PURCHASE: EventType
RATING: EventType
AVAILABILITY_UNSPECIFIED: Availability
IN_STOCK: Availability
OUT_OF_STOCK: Availability
DISCONTINUED: Availability
RELATION_KIND_UNSPECIFIED: RelationKind
FOLLOW: RelationKind
FRIEND: RelationKind

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "type", "timestamp_ms", "session_id", "context", "properties", "value", "recommendation_id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    timestamp_ms: int
    session_id: str
    context: _containers.ScalarMap[str, str]
    properties: _containers.ScalarMap[str, str]
    value: float
    recommendation_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., timestamp_ms: _Optional[int] = ..., session_id: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., properties: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., recommendation_id: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "title", "description", "categories", "price", "availability", "updated_at_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    description: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    price: float
    availability: Availability
    updated_at_ms: int
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., price: _Optional[float] = ..., availability: _Optional[_Union[Availability, str]] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class EnrichedEvent(_message.Message):
    __slots__ = ("event", "item", "weight", "processed_at_ms", "source_topic", "source_partition", "source_offset")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    event: Event
    item: Item
    weight: float
    processed_at_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., item: _Optional[_Union[Item, _Mapping]] = ..., weight: _Optional[float] = ..., processed_at_ms: _Optional[int] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("payload", "key", "reason", "detail", "origin_topic", "origin_partition", "origin_offset", "failed_at_ms")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_TOPIC_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_PARTITION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_OFFSET_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    key: bytes
    reason: str
    detail: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    failed_at_ms: int
    def __init__(self, payload: _Optional[bytes] = ..., key: _Optional[bytes] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., origin_topic: _Optional[str] = ..., origin_partition: _Optional[int] = ..., origin_offset: _Optional[int] = ..., failed_at_ms: _Optional[int] = ...) -> None: ...

class ItemVector(_message.Message):
    __slots__ = ("item_id", "model_version", "vector", "updated_at_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    model_version: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    updated_at_ms: int
    def __init__(self, item_id: _Optional[str] = ..., model_version: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class ModelRelease(_message.Message):
    __slots__ = ("version", "uri", "created_at_ms", "action", "previous_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    uri: str
    created_at_ms: int
    action: str
    previous_version: str
    def __init__(self, version: _Optional[str] = ..., uri: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., action: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class Routing(_message.Message):
    __slots__ = ("production", "production_uri", "previous", "previous_uri", "candidate", "candidate_uri", "percent", "revision", "changed_at_ms", "changed_by", "change")
    PRODUCTION_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_URI_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_URI_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_URI_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    production: str
    production_uri: str
    previous: str
    previous_uri: str
    candidate: str
    candidate_uri: str
    percent: float
    revision: int
    changed_at_ms: int
    changed_by: str
    change: str
    def __init__(self, production: _Optional[str] = ..., production_uri: _Optional[str] = ..., previous: _Optional[str] = ..., previous_uri: _Optional[str] = ..., candidate: _Optional[str] = ..., candidate_uri: _Optional[str] = ..., percent: _Optional[float] = ..., revision: _Optional[int] = ..., changed_at_ms: _Optional[int] = ..., changed_by: _Optional[str] = ..., change: _Optional[str] = ...) -> None: ...

class RecommendationLog(_message.Message):
    __slots__ = ("recommendation_id", "model_version", "user_id", "item_ids", "strategy", "served_at_ms", "method")
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    recommendation_id: str
    model_version: str
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    strategy: str
    served_at_ms: int
    method: str
    def __init__(self, recommendation_id: _Optional[str] = ..., model_version: _Optional[str] = ..., user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., strategy: _Optional[str] = ..., served_at_ms: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class Relation(_message.Message):
    __slots__ = ("follower_id", "followee_id", "kind", "timestamp_ms", "removed", "share_name")
    FOLLOWER_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOWEE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SHARE_NAME_FIELD_NUMBER: _ClassVar[int]
    follower_id: str
    followee_id: str
    kind: RelationKind
    timestamp_ms: int
    removed: bool
    share_name: bool
    def __init__(self, follower_id: _Optional[str] = ..., followee_id: _Optional[str] = ..., kind: _Optional[_Union[RelationKind, str]] = ..., timestamp_ms: _Optional[int] = ..., removed: _Optional[bool] = ..., share_name: _Optional[bool] = ...) -> None: ...

class UserDeletion(_message.Message):
    __slots__ = ("user_id", "requested_at_ms", "requested_by")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    requested_at_ms: int
    requested_by: str
    def __init__(self, user_id: _Optional[str] = ..., requested_at_ms: _Optional[int] = ..., requested_by: _Optional[str] = ...) -> None: ...
