"""Operator CLI over the ``Admin`` service on the admin port (changes apply without restart).

    python -m serving.admin status
    python -m serving.admin promote --version 20261123T010000Z --uri var/artifacts/20261123T010000Z
    python -m serving.admin rollback
    python -m serving.admin split --version 20261123T010000Z --percent 10   # 0 ends the experiment
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from contracts.console import add_verbose_flag, setup_logging
from protos import recommender_pb2, recommender_pb2_grpc


def describe(status: recommender_pb2.ModelStatus) -> str:
    lines = [f"production: {status.production}",
             f"previous:   {status.previous or '-'}",
             f"candidate:  {status.candidate or '-'} ({status.percent:g} % of users)"]
    lines += [f"loaded:     {m.version} ({m.n_items} items, {m.index_kind})" for m in status.loaded]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = recommender_pb2_grpc.AdminStub(channel)
        try:
            if args.command == "promote":
                reply = await stub.Promote(
                    recommender_pb2.PromoteRequest(version=args.version, uri=args.uri),
                    timeout=args.deadline)
            elif args.command == "rollback":
                reply = await stub.Rollback(recommender_pb2.RollbackRequest(), timeout=args.deadline)
            elif args.command == "split":
                reply = await stub.SetSplit(
                    recommender_pb2.SetSplitRequest(version=args.version, percent=args.percent,
                                                    uri=args.uri),
                    timeout=args.deadline)
            else:
                reply = await stub.Status(recommender_pb2.StatusRequest(), timeout=args.deadline)
        except grpc.aio.AioRpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(describe(reply))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50052", help="admin host:port")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds; loading a large version takes a while")
    add_verbose_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="versions loaded and the split")
    promote = commands.add_parser("promote", help="make a version production")
    promote.add_argument("--version", required=True)
    promote.add_argument("--uri", default="", help="artifact directory, if not loaded yet")
    commands.add_parser("rollback", help="swap production and previous")
    split = commands.add_parser("split", help="send a share of users to a loaded version")
    split.add_argument("--version", default="")
    split.add_argument("--percent", type=float, required=True)
    split.add_argument("--uri", default="", help="artifact directory, if not loaded yet")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
