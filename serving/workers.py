"""``python -m serving`` with ``workers`` > 1: a supervisor and that many server processes.

One Python process answers on one core (the GIL). With ``workers`` N the supervisor:

- **Port.** Binds the public ``host:port`` with SO_REUSEPORT and never listens on it, so
  the port stays taken while workers come and go (``port`` 0 picks one), and holds a
  lock file on it so that a second supervisor cannot join the port. Each worker is a
  ``python -m serving`` process listening on that port with ``reuse_port``; the kernel
  spreads new connections over them. A client keeps its connection to one worker, so
  load spreads over frontends and connections, not over the calls of one connection.
- **Index.** Workers share ``index_cache_dir`` (a temporary directory when unset): the
  first to need an IVF index builds it while the others wait for its file and read it,
  for the production version at start and for every version loaded later.
- **Routing.** Every worker follows ``model-routing`` itself (:mod:`serving.routing`),
  as separate replicas do: a worker started again reads the record in force before it
  serves. Workers serve Admin on Unix sockets in a private directory; the supervisor's
  ``admin_host:admin_port`` hands each call to one running worker, which writes the
  record and answers once it applied it. Nothing is fanned out or aligned.
- **Metrics.** Worker i serves /metrics on ``metrics_port + i``.
- **Faults.** A worker that exits after its Admin socket answered is started again
  (after 1 s, doubling up to 30 s while it keeps failing); until its socket answers,
  Admin calls go to the others. At start, one that exits before it ever answered stops
  the server with its exit status: a bad artifact or setting would fail again. Workers
  stop when the supervisor dies (``stop_with_parent``), so none is left serving on the port.
- **Stop.** SIGTERM/SIGINT: the admin port closes and every worker gets SIGTERM (each
  goes NOT_SERVING, answers for ``shutdown_delay_s`` more and drains within ``grace_s``);
  what still runs ``shutdown_delay_s`` + ``grace_s`` + 30 s later is killed.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import grpc

from protos import recommender_pb2, recommender_pb2_grpc
from serving.errors import AddressUnavailable, ServingError
from serving.server import create_admin_server, stop_on_signals
from serving.settings import ServingSettings

Reply = TypeVar("Reply")

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STARTED_AFTER_S = 60.0  # a worker that ran this long before exiting starts again at the first delay
KILL_AFTER_S = 30.0  # beyond shutdown_delay_s + grace_s
CONVERGE_S = 10.0  # an Admin change waits this long at most for every worker to apply it


class WorkerFailed(ServingError):
    """A worker exited before it ever served: starting it again would fail again."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket on host:port (0: a free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _own_port(host: str, port: int) -> IO[str]:
    """An exclusive lock on host:port among supervisors (SO_REUSEPORT alone would let a
    second one join the port); held while the returned file is open."""
    path = Path(tempfile.gettempdir()) / f"streamrec-serving-{host.strip('[]')}-{port}.lock"
    owner = open(path, "w")
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        owner.close()
        raise AddressUnavailable(f"cannot listen on {host}:{port}: another serving supervisor "
                                 "holds it") from error
    return owner


@dataclass
class Worker:
    """One server process and the Admin stub on its Unix socket."""

    number: int
    socket_path: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    channel: grpc.aio.Channel | None = None
    started_at: float = 0.0
    answered: bool = False  # its Admin socket has answered since it was (re)started
    delay_s: float = RESTART_DELAY_S
    watch: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def stub(self) -> recommender_pb2_grpc.AdminStub:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}")
        return recommender_pb2_grpc.AdminStub(self.channel)

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.answered = False
        if self.channel is not None:  # its reconnect back-off grew while the worker was down
            await self.channel.close()
            self.channel = None
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving", env=self.env, stdin=asyncio.subprocess.DEVNULL,
        )
        log.info("worker %s started: pid %s", self.number, self.process.pid)

    async def wait_answering(self, poll_s: float = 0.5) -> None:
        """Until the Admin socket answers; WorkerFailed if the process exits first."""
        assert self.process is not None
        while True:
            if self.process.returncode is not None:
                raise WorkerFailed(f"worker {self.number} exited with status "
                                   f"{self.process.returncode} before it served",
                                   self.process.returncode)
            if self.socket_path.exists():
                try:
                    await self.stub.Status(recommender_pb2.StatusRequest(), timeout=poll_s * 4)
                    self.answered = True
                    return
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(poll_s)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


def worker_env(settings: ServingSettings, number: int, port: int, run_dir: Path,
               cache_dir: Path) -> dict[str, str]:
    """The environment of worker `number`: the supervisor's, with its own sockets and ports."""
    env = dict(os.environ)
    env.update({
        "STREAMREC_SERVING_WORKERS": "1",
        "STREAMREC_SERVING_PORT": str(port),
        "STREAMREC_SERVING_REUSE_PORT": "true",
        "STREAMREC_SERVING_ADMIN_SOCKET": str(run_dir / f"worker-{number}.sock"),
        "STREAMREC_SERVING_INDEX_CACHE_DIR": str(cache_dir),
        "STREAMREC_SERVING_CLIENT_ID": f"{settings.client_id}-{number}",
        "STREAMREC_SERVING_STOP_WITH_PARENT": "true",
    })
    if settings.metrics_port is not None:
        env["STREAMREC_SERVING_METRICS_PORT"] = str(settings.metrics_port + number if settings.metrics_port else 0)
    return env


class ForwardedAdmin(recommender_pb2_grpc.AdminServicer):
    """The supervisor's Admin port: each call goes to one running worker, which writes the
    routing record and answers once it applied it; the others follow the topic, and a
    change is answered once every running worker applied it too (or `CONVERGE_S` passed),
    so a client's next call sees it whichever worker its connection reaches."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def _forward(self, method: str, request: object, context: grpc.aio.ServicerContext,
                       empty: Callable[[], Reply]) -> Reply:
        remaining = context.time_remaining()
        error: grpc.aio.AioRpcError | None = None
        for worker in self._supervisor.running():
            try:
                reply: Reply = await getattr(worker.stub, method)(
                    request, timeout=remaining if remaining is not None else 600.0)
                return reply
            except grpc.aio.AioRpcError as failed:
                if failed.code() != grpc.StatusCode.UNAVAILABLE:  # the worker's answer
                    await context.abort(failed.code(), failed.details() or "",
                                        trailing_metadata=tuple(failed.trailing_metadata() or ()))
                error = failed  # the worker is going away: the next one
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(f"no worker answered: {error.details() if error else 'none is running'}")
        return empty()

    async def _change(self, method: str, request: object,
                      context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        reply = await self._forward(method, request, context, recommender_pb2.ModelStatus)
        if reply.revision:
            await self._converged(reply.revision)
        return reply

    async def _converged(self, revision: int) -> None:
        """Wait until every running worker has applied `revision` (they read it from the
        topic within milliseconds); past `CONVERGE_S`, log who lags and answer anyway:
        the record is durable, and the lagging worker applies it when it reads it."""
        deadline = asyncio.get_running_loop().time() + CONVERGE_S
        lagging = self._supervisor.running()
        while lagging:
            behind = []
            for worker in lagging:
                try:
                    status = await worker.stub.Status(recommender_pb2.StatusRequest(), timeout=2.0)
                except grpc.aio.AioRpcError:
                    continue  # going away: its restart reads the routing from the topic
                if status.revision < revision:
                    behind.append(worker)
            lagging = behind
            if lagging and asyncio.get_running_loop().time() > deadline:
                log.warning("routing revision %s not yet applied by worker(s) %s after %.0f s",
                            revision, ", ".join(str(w.number) for w in lagging), CONVERGE_S)
                return
            if lagging:
                await asyncio.sleep(0.02)

    async def Promote(self, request: recommender_pb2.PromoteRequest,
                      context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return await self._change("Promote", request, context)

    async def Rollback(self, request: recommender_pb2.RollbackRequest,
                       context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return await self._change("Rollback", request, context)

    async def SetSplit(self, request: recommender_pb2.SetSplitRequest,
                       context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return await self._change("SetSplit", request, context)

    async def Status(self, request: recommender_pb2.StatusRequest,
                     context: grpc.aio.ServicerContext) -> recommender_pb2.ModelStatus:
        return await self._forward("Status", request, context, recommender_pb2.ModelStatus)

    async def DeleteUser(self, request: recommender_pb2.DeleteUserRequest,
                         context: grpc.aio.ServicerContext) -> recommender_pb2.DeleteUserResponse:
        # Any worker writes it: the deletion is on Kafka once answered, for all of them.
        return await self._forward("DeleteUser", request, context,
                                   recommender_pb2.DeleteUserResponse)


class Supervisor:
    """Starts, watches, restarts and stops the workers."""

    def __init__(self, settings: ServingSettings, port: int, run_dir: Path, cache_dir: Path) -> None:
        self.settings = settings
        self.workers = [
            Worker(n, run_dir / f"worker-{n}.sock", worker_env(settings, n, port, run_dir, cache_dir))
            for n in range(settings.workers)
        ]
        self._stopping = False

    async def start(self) -> None:
        """Every worker started and answering; WorkerFailed (the others stopped) if one fails."""
        for worker in self.workers:
            await worker.start()
        try:
            await asyncio.gather(*(worker.wait_answering() for worker in self.workers))
        except WorkerFailed:
            await self.stop()
            raise
        for worker in self.workers:
            worker.watch = asyncio.create_task(self._watch(worker), name=f"worker {worker.number}")

    def running(self) -> list[Worker]:
        """The workers whose process runs and whose Admin socket answered."""
        return [w for w in self.workers if w.answered
                and w.process is not None and w.process.returncode is None]

    async def _watch(self, worker: Worker) -> None:
        """Start `worker` again whenever it exits, until the supervisor stops."""
        while not self._stopping:
            try:
                await self._restart_when_gone(worker)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. no memory to start a process: try again later
                log.exception("worker %s: restart failed; trying again in %.0f s", worker.number,
                              worker.delay_s)
                await self._back_off(worker)

    @staticmethod
    async def _back_off(worker: Worker) -> None:
        """Wait the worker's restart delay, and double it for the next time."""
        await asyncio.sleep(worker.delay_s)
        worker.delay_s = min(MAX_RESTART_DELAY_S, worker.delay_s * 2)

    async def _restart_when_gone(self, worker: Worker) -> None:
        if worker.process is not None:
            status = await worker.process.wait()
            if self._stopping:
                return
            ran_s = time.monotonic() - worker.started_at
            if ran_s >= STARTED_AFTER_S:
                worker.delay_s = RESTART_DELAY_S
            log.error("worker %s (pid %s) exited with status %s after %.0f s; starting it again in %.0f s",
                      worker.number, worker.process.pid, status, ran_s, worker.delay_s)
            await self._back_off(worker)
            if self._stopping:
                return
        await worker.start()
        try:
            await worker.wait_answering()
        except WorkerFailed as error:
            log.error("%s", error)
            return
        log.info("worker %s answering again: pid %s", worker.number, worker.process.pid if worker.process else None)

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after shutdown_delay_s +
        grace_s + 30 s."""
        self._stopping = True
        for worker in self.workers:
            if worker.watch is not None:
                worker.watch.cancel()
            worker.signal(signal.SIGTERM)
        waits = [w.process.wait() for w in self.workers if w.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits),
                                   self.settings.shutdown_delay_s + self.settings.grace_s + KILL_AFTER_S)
        except TimeoutError:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    log.error("worker %s did not stop in time: killed", worker.number)
                    worker.signal(signal.SIGKILL)
            await asyncio.gather(*(w.process.wait() for w in self.workers if w.process is not None))
        for worker in self.workers:
            if worker.watch is not None:
                await asyncio.gather(worker.watch, return_exceptions=True)
            if worker.channel is not None:
                await worker.channel.close()
                worker.channel = None


async def supervise(settings: ServingSettings) -> int:
    """Run ``settings.workers`` servers until SIGTERM or SIGINT; the exit status."""
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    try:
        owner = _own_port(settings.host, port)
    except AddressUnavailable:
        reserved.close()
        raise
    run_dir = Path(tempfile.mkdtemp(prefix="streamrec-serving-"))
    cache_dir = settings.index_cache_dir or run_dir / "index-cache"
    stop = stop_on_signals()
    supervisor = Supervisor(settings, port, run_dir, cache_dir)
    admin_server: grpc.aio.Server | None = None
    try:
        starting = asyncio.ensure_future(supervisor.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal while the index builds or workers start
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("signal received while starting: stopping")
            return 0
        stopped.cancel()
        starting.result()  # WorkerFailed
        admin_port = None
        if settings.admin_port is not None or settings.admin_socket is not None:
            admin_server, admin_port = create_admin_server(settings, admin=ForwardedAdmin(supervisor))
            await admin_server.start()
        log.info("%s workers: listening on %s:%s (admin %s)", settings.workers, settings.host, port,
                 admin_port)
        await stop.wait()
        log.info("signal received: stopping %s workers within %.1f s", settings.workers, settings.grace_s)
        return 0
    except WorkerFailed as error:
        log.error("%s", error)
        return error.returncode if error.returncode > 0 else 1
    finally:
        if admin_server is not None:
            await admin_server.stop(0)
        await supervisor.stop()
        reserved.close()
        owner.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("stopped")
