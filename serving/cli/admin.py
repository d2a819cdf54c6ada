"""Operator CLI over the ``Admin`` service on the admin port (changes apply without restart).

    python -m serving.cli.admin status
    python -m serving.cli.admin promote --version 20261123T010000Z --uri var/artifacts/20261123T010000Z
    python -m serving.cli.admin rollback
    python -m serving.cli.admin split --version 20261123T010000Z --percent 10   # 0 ends the experiment
    python -m serving.cli.admin export-user USER [--out FILE] [--relations]   # reads the stores
    python -m serving.cli.admin delete-user USER   # everywhere: online state, graph, training
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

import grpc

from contracts.console import add_verbose_flag, setup_logging
from protos import recommender_pb2, recommender_pb2_grpc
from serving.cli import export


def describe(status: recommender_pb2.ModelStatus) -> str:
    lines = [f"production: {status.production}",
             f"previous:   {status.previous or '-'}",
             f"candidate:  {status.candidate or '-'} ({status.percent:g} % of users)"]
    lines += [f"loaded:     {m.version} ({m.n_items} items, {m.index_kind})" for m in status.loaded]
    return "\n".join(lines)


# A subcommand: one call on the Admin stub, its answer as the text to print.
Command = Callable[[recommender_pb2_grpc.AdminStub, argparse.Namespace], Awaitable[str]]


async def status(stub: recommender_pb2_grpc.AdminStub, args: argparse.Namespace) -> str:
    return describe(await stub.Status(recommender_pb2.StatusRequest(), timeout=args.deadline))


async def promote(stub: recommender_pb2_grpc.AdminStub, args: argparse.Namespace) -> str:
    request = recommender_pb2.PromoteRequest(version=args.version, uri=args.uri)
    return describe(await stub.Promote(request, timeout=args.deadline))


async def rollback(stub: recommender_pb2_grpc.AdminStub, args: argparse.Namespace) -> str:
    return describe(await stub.Rollback(recommender_pb2.RollbackRequest(), timeout=args.deadline))


async def split(stub: recommender_pb2_grpc.AdminStub, args: argparse.Namespace) -> str:
    request = recommender_pb2.SetSplitRequest(version=args.version, percent=args.percent, uri=args.uri)
    return describe(await stub.SetSplit(request, timeout=args.deadline))


async def delete_user(stub: recommender_pb2_grpc.AdminStub, args: argparse.Namespace) -> str:
    reply = await stub.DeleteUser(recommender_pb2.DeleteUserRequest(user_id=args.user),
                                  timeout=args.deadline)
    return f"deletion of user {reply.user_id} requested at {reply.requested_at_ms} ms"


async def run(args: argparse.Namespace) -> int:
    """The subcommand's call on the admin port; its text, or the gRPC error and exit 1."""
    command: Command = args.call
    async with grpc.aio.insecure_channel(args.target) as channel:
        try:
            text = await command(recommender_pb2_grpc.AdminStub(channel), args)
        except grpc.aio.AioRpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(text)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.cli.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50052", help="admin host:port")
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds; loading a large version takes a while")
    add_verbose_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="versions loaded and the split").set_defaults(call=status)
    promoting = commands.add_parser("promote", help="make a version production")
    promoting.add_argument("--version", required=True)
    promoting.add_argument("--uri", default="", help="artifact directory, if not loaded yet")
    promoting.set_defaults(call=promote)
    commands.add_parser("rollback", help="swap production and previous").set_defaults(call=rollback)
    splitting = commands.add_parser("split", help="send a share of users to a loaded version")
    splitting.add_argument("--version", default="")
    splitting.add_argument("--percent", type=float, required=True)
    splitting.add_argument("--uri", default="", help="artifact directory, if not loaded yet")
    splitting.set_defaults(call=split)
    export.add_parser(commands)
    deleting = commands.add_parser("delete-user", help="delete a user's data everywhere")
    deleting.add_argument("user", help="the user id")
    deleting.set_defaults(call=delete_user)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    if hasattr(args, "direct"):  # a command on the stores themselves, not the admin port
        return int(args.direct(args))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
