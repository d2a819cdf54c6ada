"""The trained user tower in a process of its own (the ``tower_process`` setting).

On the event loop, a tower pass holds up every batch behind it for its whole length
(~3-15 ms on this CPU); in a thread of the worker, each of its operators waits for the
GIL while the loop runs Python (~300 ms a pass). In a child process it runs beside the
loop: the worker pads the inputs (the catalog's vectors stay in the worker), hands the
arrays over and awaits the vectors, and batches go on meanwhile.

One child serves every loaded version: it loads an exported program the first time a
call names its file and keeps the newest few. A child that dies fails the calls in
flight (:class:`TowerProcessError`) and the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

log = logging.getLogger(__name__)

PROGRAMS_KEPT = 2  # exported towers a child keeps loaded: the version in use and the last

_programs: OrderedDict[str, torch.nn.Module] = OrderedDict()  # in the child: path -> module


class TowerProcessError(RuntimeError):
    """The tower's process died or could not run the call."""


def run_program(module: torch.nn.Module, arrays: tuple[np.ndarray, ...], *,
                device: torch.device, bf16: bool) -> np.ndarray:
    """float32 [B, dim]: an exported tower on its padded input arrays (here or in the
    child: the one place a pass is run)."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                enabled=bf16):
        output = module(*(torch.from_numpy(a).to(device) for a in arrays))
    return output.float().cpu().numpy()  # type: ignore[no-any-return]


def _start(threads: int) -> None:
    """The child's initialiser: its intra-op threads (1: it shares the host's cores)."""
    torch.set_num_threads(max(1, threads))


def _run(path: str, arrays: tuple[np.ndarray, ...], bf16: bool) -> np.ndarray:
    """In the child: the exported tower of `path` on the padded `arrays`."""
    module = _programs.get(path)
    if module is None:
        module = torch.export.load(path).module()
        _programs[path] = module
        while len(_programs) > PROGRAMS_KEPT:
            _programs.popitem(last=False)
    _programs.move_to_end(path)
    return run_program(module, arrays, device=torch.device("cpu"), bf16=bf16)


class TowerProcess:
    """A one-process pool for tower passes; :meth:`run` awaits one pass."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start, initargs=(self.threads,))
            return self._pool

    async def run(self, path: str, arrays: tuple[np.ndarray, ...], bf16: bool) -> np.ndarray:
        """The tower of `path` on `arrays` in the child, which is started on first use."""
        pool = self._executor()
        try:
            return await asyncio.wrap_future(pool.submit(_run, path, arrays, bf16))
        except BrokenProcessPool as error:
            self._replace(pool)
            raise TowerProcessError(f"the user tower's process died: {error}") from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.warning("the user tower's process died; the next pass starts another")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
