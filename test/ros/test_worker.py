"""LatestWinsWorker: one waiting slot, counted drops, errors survived, control actions, stop."""
import threading

from mask3d_ros.ros.worker import LatestWinsWorker


class Blocking:
    """A job function that blocks until released, recording what it ran."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran = []

    def __call__(self, job):
        self.ran.append(job)
        self.started.set()
        self.release.wait(5)
        if job == "boom":
            raise RuntimeError("model exploded")


def test_latest_job_wins_and_drops_are_counted():
    fn = Blocking()
    worker = LatestWinsWorker(fn)
    worker.submit(0)
    assert fn.started.wait(5)
    replaced = [worker.submit(i) for i in range(1, 31)]  # a flood while job 0 runs
    assert replaced == [False] + [True] * 29
    assert worker.pending, "exactly one job waits"
    fn.release.set()
    assert worker.wait_idle(5)
    assert fn.ran == [0, 30], "the newest job ran, the 29 in between were dropped"
    s = worker.stats
    assert (s.submitted, s.dropped, s.completed, s.failed) == (31, 29, 2, 0)
    worker.stop()


def test_a_failing_job_is_reported_and_the_worker_carries_on():
    errors = []
    fn = Blocking()
    fn.release.set()
    worker = LatestWinsWorker(fn, on_error=lambda job, e: errors.append((job, str(e))))
    worker.submit("boom")
    assert worker.wait_idle(5)
    worker.submit("fine")
    assert worker.wait_idle(5)
    assert errors == [("boom", "model exploded")]
    assert worker.stats.failed == 1 and worker.stats.completed == 1
    assert "RuntimeError: model exploded" in worker.stats.last_error
    assert worker.alive
    worker.stop()


def test_clear_discards_the_waiting_job_and_actions_run_between_jobs():
    fn = Blocking()
    worker = LatestWinsWorker(fn)
    order = []
    worker.submit("a")
    assert fn.started.wait(5)
    worker.submit("b")
    assert worker.clear()
    worker.run_in_worker(lambda: order.append(("release", threading.current_thread().name)))
    fn.release.set()
    assert worker.wait_idle(5)
    assert fn.ran == ["a"] and worker.stats.discarded == 1
    assert order == [("release", "latest-wins-worker")], "actions run in the worker thread"
    worker.stop()


def test_stop_returns_promptly_even_while_a_job_runs():
    fn = Blocking()
    worker = LatestWinsWorker(fn)
    worker.submit(1)
    assert fn.started.wait(5)
    assert worker.stop(timeout=0.05) is False, "the running job is abandoned (daemon thread)"
    assert worker.submit(2) is False
    fn.release.set()
    worker._thread.join(5)
    assert not worker.alive and fn.ran == [1]
