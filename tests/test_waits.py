"""The shared polling helpers: what they return, and what a timeout says."""
import time

import pytest

from tests.waits import poll_until, wait_for_text, wait_until


def test_wait_until_returns_the_seconds_waited():
    ready_at = time.monotonic() + 0.2
    waited = wait_until(lambda: time.monotonic() >= ready_at, 5, "the clock")
    assert 0.15 <= waited < 2


def test_wait_until_names_what_it_waited_for_and_the_timeout():
    with pytest.raises(AssertionError, match=r"^timed out after 0 s waiting for the impossible$"):
        wait_until(lambda: False, 0.1, "the impossible")


def test_poll_until_reports_a_timeout_instead_of_failing():
    assert poll_until(lambda: True, 0) is True
    assert poll_until(lambda: False, 0.1) is False


def test_wait_for_text_shows_the_file_as_it_was_at_the_timeout(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("-> running\n")
    assert wait_for_text(log, "-> running", 1, 1) < 1
    with pytest.raises(AssertionError, match=r"2x '-> running' in the log:\n-> running\n$"):
        wait_for_text(log, "-> running", 2, 0.2)
