"""The Kafka ACLs each deployable needs, and nothing more (docs/security.md lists them).

Usage: python acls.py --bootstrap HOST:PORT --cafile CA [--mechanism M] [--timeout S]
users|grant|show (the admin's password in STREAMREC_ADMIN_PASSWORD). ``users`` sets each
deployable's SCRAM-SHA-512 password from STREAMS_PASSWORD, SERVING_PASSWORD, ...;
``grant`` waits for the broker, then creates every deployable's ACLs for the default
topic names; ``show`` prints them. Tests call :func:`plan` and :func:`grant` with their
own names.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from dataclasses import dataclass

from kafka.admin import (  # type: ignore[attr-defined]
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
    UserScramCredentialUpsertion,
)
from kafka.errors import KafkaError

READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS = (
    ACLOperation.READ, ACLOperation.WRITE, ACLOperation.CREATE, ACLOperation.DESCRIBE,
    ACLOperation.DESCRIBE_CONFIGS)
TOPIC, GROUP, TXN = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
LITERAL, PREFIXED = ACLResourcePatternType.LITERAL, ACLResourcePatternType.PREFIXED
CREATED = (CREATE, DESCRIBE_CONFIGS)  # a deployable creates and checks the topics it uses


@dataclass(frozen=True)
class Names:
    """The topic names and the worker's app id (which prefixes its groups, its own topics
    and its transactional ids), as the deployables' settings have them."""

    events: str = "events"
    enriched: str = "events.enriched"
    dlq: str = "events.dlq"
    items: str = "items"
    item_vectors: str = "item-vectors"
    models: str = "models"
    recommendations: str = "recommendations"
    relations: str = "relations"
    deletions: str = "deletions"
    routing: str = "model-routing"
    streams_app_id: str = "streamrec-streams"
    serving_client_id: str = "streamrec-serving"  # prefixes DeleteUser's transactional ids


Grant = tuple[ResourceType, str, ACLResourcePatternType, ACLOperation]


def _topics(names: list[str], *operations: ACLOperation) -> list[Grant]:
    return [(TOPIC, name, LITERAL, op) for name in names for op in operations]


def plan(n: Names) -> dict[str, list[Grant]]:
    """User name -> what it is allowed (each a resource, its pattern and one operation)."""
    own = f"{n.streams_app_id}-"  # changelogs, Faust's assignor topic, groups, transactions
    return {
        "streams": [
            *_topics([n.events, n.items, n.item_vectors, n.models, n.relations], READ),
            *_topics([n.enriched, n.dlq, n.item_vectors, n.relations], WRITE),
            *_topics([n.events, n.enriched, n.dlq, n.items, n.item_vectors, n.models,
                      n.relations], *CREATED),
            *[(TOPIC, own, PREFIXED, op) for op in (READ, WRITE, *CREATED)],
            (GROUP, n.streams_app_id, LITERAL, READ),
            (GROUP, own, PREFIXED, READ),
            (TXN, own, PREFIXED, WRITE),
        ],
        "serving": [
            *_topics([n.items, n.item_vectors, n.routing, n.events, n.recommendations,
                      n.enriched, n.dlq, n.relations, f"{n.streams_app_id}-users-changelog",
                      n.deletions], READ),
            *_topics([n.events, n.recommendations, n.routing, n.relations, n.deletions], WRITE),
            *_topics([n.events, n.recommendations, n.routing, n.relations, n.deletions],
                     *CREATED),
            # DeleteUser: one transaction over `deletions` and the control record on `events`.
            (TXN, f"{n.serving_client_id}-", PREFIXED, WRITE),
        ],
        "training": [
            *_topics([n.enriched, n.items, n.routing, n.deletions], READ),
            *_topics([n.models, n.routing, n.item_vectors], WRITE),
            *_topics([n.models, n.routing, n.item_vectors], *CREATED),
        ],
        "ingest": [
            *_topics([n.events, n.items, n.relations], WRITE),
            *_topics([n.events, n.items, n.relations], *CREATED),
        ],
    }


def admin_client(bootstrap: str, cafile: str, password: str, timeout_s: float,
                 mechanism: str = "SCRAM-SHA-512") -> KafkaAdminClient:
    """The admin's client, once the broker answers over SASL_SSL (within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap, client_id="streamrec-acls",
                security_protocol="SASL_SSL", ssl_context=ssl.create_default_context(cafile=cafile),
                sasl_mechanism=mechanism, sasl_plain_username="admin",
                sasl_plain_password=password, request_timeout_ms=10_000)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def grant(admin: KafkaAdminClient, grants: dict[str, list[Grant]]) -> int:
    """Create `grants` (creating one that exists is a no-op); the number of ACLs."""
    acls = [ACL(f"User:{user}", "*", op, ACLPermissionType.ALLOW,
                ResourcePattern(kind, name, pattern))
            for user, items in grants.items() for kind, name, pattern, op in items]
    result = admin.create_acls(acls)
    if result["failed"]:
        raise RuntimeError(f"ACLs refused: {result['failed']}")
    return len(acls)


def set_passwords(admin: KafkaAdminClient, passwords: dict[str, str]) -> None:
    """Create or update each user's SCRAM-SHA-512 credential."""
    failed = {user: error for user, error in admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, "SCRAM-SHA-512", password)
         for user, password in passwords.items()]).items() if error}
    if failed:
        raise RuntimeError(f"SCRAM users refused: {failed}")


def lines(grants: dict[str, list[Grant]]) -> list[str]:
    return [f"User:{user} {op.name} {kind.name} {pattern.name} {name}"
            for user, items in grants.items() for kind, name, pattern, op in items]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9192")
    parser.add_argument("--cafile", default="var/secure/certs/ca.pem")
    parser.add_argument("--mechanism", default="SCRAM-SHA-512", help="the admin's SASL mechanism")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("command", choices=["users", "grant", "show"])
    args = parser.parse_args(argv)
    grants = plan(Names())
    if args.command == "show":
        print("\n".join(lines(grants)))
        return 0
    admin = admin_client(args.bootstrap, args.cafile, os.environ["STREAMREC_ADMIN_PASSWORD"],
                         args.timeout, args.mechanism)
    try:
        if args.command == "users":
            set_passwords(admin, {user: os.environ[f"{user.upper()}_PASSWORD"] for user in grants})
            print(f"[infra] SCRAM-SHA-512 users {', '.join(grants)} set")
        else:
            print(f"[infra] {grant(admin, grants)} ACLs granted to {', '.join(grants)}")
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
