"""Worker processes that stop when asked and die with their parent. Torch-free.

:class:`WorkerPool` runs ``fn(*task)`` in a few spawned processes and yields the results in the
order of the tasks. Unlike :class:`concurrent.futures.ProcessPoolExecutor` it has no background
threads, so an interruption (Ctrl-C, SIGTERM turned into KeyboardInterrupt) or an error in the
parent ends the pool at once: its workers are terminated and joined when the pool is left.

Workers ignore SIGINT (a Ctrl-C reaches every process of the terminal's group; the parent decides)
and die with the parent however it ends, kill -9 included: on Linux the kernel kills them when the
thread that started them exits (``prctl(PR_SET_PDEATHSIG)``, set only when the pool is started from
the main thread), every worker watches its parent's pid, and an idle worker sees its pipe close.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator

__all__ = ["WorkerPool", "WorkerError"]

_PR_SET_PDEATHSIG = 1
#: How often (s) a worker checks that its parent is alive.
PARENT_POLL_S = 0.5
#: How long (s) a worker may take to stop after being asked, before it is killed.
STOP_TIMEOUT_S = 5.0


class WorkerError(RuntimeError):
    """A worker process ended without answering (killed, out of memory, crashed)."""


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while workers are started: they inherit the mask and so cannot be
    interrupted before they ignore SIGINT; a Ctrl-C meanwhile is delivered to this process afterwards."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _die_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def _send(conn: Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except (TypeError, AttributeError, ValueError) as err:  # an exception or result that does not pickle
        status, index, value = message
        text = f"{type(value).__name__}: {value}" if status == "error" else f"unpicklable result ({err})"
        conn.send(("error", index, RuntimeError(text)))


def _worker_main(conn: Connection, parent_pid: int, pdeathsig: bool, initializer: Callable | None,
                 initargs: tuple) -> None:
    """A worker's loop: receive (index, fn, args), answer ("ok" | "error", index, value); None stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent_pid, pdeathsig)
    try:
        if initializer is not None:
            initializer(*initargs)
    except Exception as err:
        err.add_note(traceback.format_exc())
        _send(conn, ("error", None, err))
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:  # stop now: the interpreter's own teardown (torch's) can take seconds
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        index, fn, args = task
        try:
            message = ("ok", index, fn(*args))
        except Exception as err:
            err.add_note(f"in a worker process:\n{traceback.format_exc()}")
            message = ("error", index, err)
        _send(conn, message)


class WorkerPool:
    """``workers`` spawned processes, each set up by ``initializer(*initargs)``; use it as a context
    manager (leaving it stops the workers, terminating them if the block ended with an exception)."""

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = ()):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        context = multiprocessing.get_context("spawn")
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        try:
            with _sigint_blocked():
                for _ in range(workers):
                    ours, theirs = context.Pipe()
                    process = context.Process(target=_worker_main, name="samhw-worker", daemon=True,
                                              args=(theirs, os.getpid(), pdeathsig, initializer, initargs))
                    process.start()
                    theirs.close()
                    self.processes.append(process)
                    self._conns.append(ours)
        except BaseException:
            self.terminate()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def imap(self, fn: Callable[..., Any], tasks: Iterable[tuple], ahead: int | None = None) -> Iterator[Any]:
        """``fn(*task)`` for each task, in order; at most ``ahead`` tasks (default twice the workers)
        are sent or finished before their turn. A worker's exception is raised here, its type kept."""
        ahead = ahead or 2 * len(self.processes)
        tasks = iter(tasks)
        idle = list(range(len(self.processes)))[::-1]
        busy: dict[int, int] = {}  # worker -> task index
        finished: dict[int, Any] = {}
        sent = turn = 0
        exhausted = False
        while True:
            while idle and not exhausted and sent < turn + ahead:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                worker = idle.pop()
                self._send(worker, (sent, fn, tuple(task)))
                busy[worker] = sent
                sent += 1
            if turn in finished:
                yield finished.pop(turn)
                turn += 1
                continue
            if not busy:
                return
            wait([self._conns[w] for w in busy] + [self.processes[w].sentinel for w in busy])
            for worker in list(busy):
                if self._conns[worker].poll():
                    finished[busy.pop(worker)] = self._receive(worker)
                    idle.append(worker)
                elif not self.processes[worker].is_alive():
                    raise self._died(worker)

    def _send(self, worker: int, task: tuple) -> None:
        try:
            self._conns[worker].send(task)
        except (BrokenPipeError, ConnectionResetError):
            if self._conns[worker].poll():  # it stopped with an error to tell (its initializer failed)
                self._receive(worker)
            raise self._died(worker) from None

    def _receive(self, worker: int) -> Any:
        try:
            status, _, value = self._conns[worker].recv()
        except (EOFError, OSError):
            raise self._died(worker) from None
        if status == "error":
            raise value
        return value

    def _died(self, worker: int) -> WorkerError:
        process = self.processes[worker]
        process.join(1.0)
        code = process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return WorkerError(f"worker process {process.pid} ended without answering ({how}); "
                           "if it ran out of memory, use fewer --workers")

    def close(self) -> None:
        """Ask the workers to stop and wait for them (terminated after :data:`STOP_TIMEOUT_S`)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        self._join(STOP_TIMEOUT_S)

    def terminate(self) -> None:
        """Stop the workers now (SIGTERM, then SIGKILL) and reap them."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        self._join(STOP_TIMEOUT_S)

    def _join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self._conns:
            conn.close()
