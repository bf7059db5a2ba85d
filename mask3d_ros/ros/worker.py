"""A worker thread with a latest-wins slot of one.

The producer (a subscription or timer callback) never waits: :meth:`LatestWinsWorker.submit`
puts a job in the single slot and returns at once. If the slot already held a job that the worker
had not started, that job is replaced and counted as dropped, so at most one job waits and
latency cannot grow however slowly the jobs run. A job that raises is counted and reported to
``on_error``; the thread carries on. Nothing here knows ROS.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class WorkerStats:
    submitted: int = 0
    dropped: int = 0  # replaced in the slot before the worker started them
    discarded: int = 0  # removed from the slot by clear() (e.g. inference disabled)
    completed: int = 0
    failed: int = 0
    busy: bool = False
    last_duration_s: float = 0.0
    total_duration_s: float = 0.0
    last_error: str = ""

    @property
    def mean_duration_s(self) -> float:
        done = self.completed + self.failed
        return self.total_duration_s / done if done else 0.0


class LatestWinsWorker:
    """Runs ``process(job)`` for the newest submitted job in a daemon thread.

    ``on_error(job, exception)`` is called (in the worker thread) when ``process`` raises;
    exceptions from ``on_error`` itself are swallowed so the worker cannot die. ``run_in_worker``
    queues a control action (e.g. releasing GPU memory) that runs between jobs, in the thread
    that owns the model.
    """

    def __init__(self, process: Callable[[Any], Any], on_error: Callable[[Any, BaseException], None] | None = None,
                 name: str = "latest-wins-worker", clock: Callable[[], float] = time.monotonic):
        self._process = process
        self._on_error = on_error
        self._clock = clock
        self._cv = threading.Condition()
        self._slot: Any = None
        self._has_job = False
        self._actions: list[Callable[[], Any]] = []
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- producer side -------------------------------------------------------------------

    def submit(self, job: Any) -> bool:
        """Offer a job; returns True if it replaced (dropped) a waiting one."""
        with self._cv:
            if self._stopping:
                return False
            replaced = self._has_job
            self.stats.submitted += 1
            if replaced:
                self.stats.dropped += 1
            self._slot, self._has_job = job, True
            self._idle.clear()
            self._cv.notify()
            return replaced

    def clear(self) -> bool:
        """Remove the waiting job, if any; True if one was removed."""
        with self._cv:
            removed = self._has_job
            if removed:
                self.stats.discarded += 1
            self._slot, self._has_job = None, False
            if not self.stats.busy and not self._actions:
                self._idle.set()
            return removed

    def run_in_worker(self, action: Callable[[], Any]) -> None:
        """Run ``action`` in the worker thread after the job in progress (before the next one)."""
        with self._cv:
            self._actions.append(action)
            self._idle.clear()
            self._cv.notify()

    @property
    def pending(self) -> bool:
        return self._has_job

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits or runs (tests, shutdown); True if idle."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop taking jobs, drop the waiting one, and wait up to ``timeout`` s for the thread.

        Returns False if a job was still running at the deadline; the thread is a daemon, so it
        cannot keep the process alive.
        """
        with self._cv:
            self._stopping = True
            self._slot, self._has_job = None, False
            self._cv.notify_all()
        if self._thread is threading.current_thread():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- worker side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._has_job or self._actions)
                if self._stopping:
                    return
                actions, self._actions = self._actions, []
                if actions:
                    job, has_job = None, False
                else:
                    job, has_job = self._slot, self._has_job
                    self._slot, self._has_job = None, False
                    self.stats.busy = True
            for action in actions:
                try:
                    action()
                except Exception as error:  # noqa: BLE001 - the worker must survive
                    self._report(None, error)
            if has_job:
                start = self._clock()
                failed = False
                try:
                    self._process(job)
                except Exception as error:  # noqa: BLE001 - a failed job must not stop the worker
                    failed = True
                    self._report(job, error)
                duration = self._clock() - start
                with self._cv:
                    self.stats.busy = False
                    self.stats.last_duration_s = duration
                    self.stats.total_duration_s += duration
                    if failed:
                        self.stats.failed += 1
                    else:
                        self.stats.completed += 1
            with self._cv:
                if not self._has_job and not self._actions and not self.stats.busy:
                    self._idle.set()

    def _report(self, job: Any, error: BaseException) -> None:
        self.stats.last_error = f"{type(error).__name__}: {error}"
        if self._on_error is not None:
            try:
                self._on_error(job, error)
            except Exception:  # noqa: BLE001
                pass
