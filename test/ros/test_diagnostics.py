"""The pipeline status: rates, the time since the last cloud after a pause, and the level rules."""
from diagnostic_msgs.msg import DiagnosticStatus

from mask3d_ros.ros.diagnostics import RateMeter, level_and_message


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_over_the_window():
    clock = FakeClock()
    meter = RateMeter(window_s=5.0, clock=clock)
    assert meter.rate() == 0.0 and meter.since_last() is None
    for _ in range(11):
        meter.tick()
        clock.now += 0.1
    assert abs(meter.rate() - 10 / 1.1) < 1e-9


def test_a_pause_longer_than_the_window_keeps_the_time_since_the_last_cloud():
    """A bag that ended or an on-demand trigger: the clouds were received, only long ago."""
    clock = FakeClock()
    meter = RateMeter(window_s=5.0, clock=clock)
    meter.tick()
    clock.now += 0.5
    meter.tick()
    clock.now += 12.0
    assert meter.rate() == 0.0
    assert meter.since_last() == 12.0
    level, message = level_and_message({"seconds_since_last_cloud": meter.since_last(), "input_topic": "/points"},
                                       None, input_timeout_s=5.0)
    assert level == DiagnosticStatus.WARN
    assert message == "no cloud for 12.0 s"


def test_no_cloud_yet_names_the_topic():
    level, message = level_and_message({"seconds_since_last_cloud": None, "input_topic": "/points"}, None, 5.0)
    assert level == DiagnosticStatus.WARN and "no cloud received on /points yet" in message
