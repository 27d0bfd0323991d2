"""pytest plugin: a time limit per test, for tools/gpu_verify.sh (the GPU machine may lack
pytest-timeout). Loaded with `-p per_test_timeout` (tools/ on PYTHONPATH).

RNNFAST_TEST_TIMEOUT_S seconds (default 60) into a test (setup, call and teardown together), a
SIGALRM fails it with a traceback and the run goes on with the next test. A test stuck inside C
(a kernel that never finishes, a hung synchronize) never returns to Python to see that exception:
RNNFAST_TEST_TIMEOUT_GRACE_S seconds later (default 15) faulthandler prints every thread's stack
and ends the process, so the step's own `timeout` is not the only guard and the log says where it
hung. POSIX only (SIGALRM).
"""
import faulthandler
import os
import signal
import sys

import pytest

LIMIT_S = float(os.environ.get("RNNFAST_TEST_TIMEOUT_S", "60"))
GRACE_S = float(os.environ.get("RNNFAST_TEST_TIMEOUT_GRACE_S", "15"))


class TestTimeout(Exception):
    """A test ran past RNNFAST_TEST_TIMEOUT_S."""

    __test__ = False  # not a test class


def _on_alarm(signum, frame):
    raise TestTimeout(f"test ran past its limit of {LIMIT_S:g} s (RNNFAST_TEST_TIMEOUT_S)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    faulthandler.dump_traceback_later(LIMIT_S + GRACE_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def pytest_report_header(config):
    return f"per_test_timeout: {LIMIT_S:g} s per test, hard exit {GRACE_S:g} s later"
