"""The stream's one timer, sans-IO: times in, decisions out, no clock to wait on."""

from __future__ import annotations

from math import inf

import pytest

from asgi_sse._timer import Due, Timer


def test_an_idle_stream_pings_after_the_heartbeat_and_once_per_silence() -> None:
    timer = Timer(heartbeat=15, send_timeout=30, now=100)
    assert timer.delay(100) == 15  # the next look is when the heartbeat is due
    assert timer.due(114.9) is Due.NOTHING
    assert timer.due(115) is Due.HEARTBEAT
    assert timer.due(115.1) is Due.NOTHING  # not again until the next silence
    assert timer.delay(115.1) == pytest.approx(14.9)


def test_a_send_begun_resets_the_silence() -> None:
    timer = Timer(heartbeat=15, send_timeout=30, now=0)
    timer.sending(10)
    timer.sent()
    assert timer.due(15) is Due.NOTHING
    assert timer.delay(15) == 10
    assert timer.due(25) is Due.HEARTBEAT


def test_a_send_that_takes_the_send_timeout_gives_up_exactly_then() -> None:
    timer = Timer(heartbeat=15, send_timeout=30, now=0)
    timer.sending(5)
    assert timer.delay(5) == 15  # a heartbeat on: it looks again then, the send may have ended
    assert timer.due(20) is Due.NOTHING  # no heartbeat while a send is under way
    assert timer.delay(20) == 15  # then the deadline is next
    assert timer.due(34.9) is Due.NOTHING
    assert timer.due(35) is Due.GIVE_UP


def test_sends_that_each_finish_in_time_never_add_up_to_a_timeout() -> None:
    timer = Timer(heartbeat=None, send_timeout=0.2, now=0)
    for i in range(100):  # a slow client: each send takes 0.15 s, 15 s in all
        timer.sending(i * 0.15)
        assert timer.due(i * 0.15 + 0.149) is Due.NOTHING
        timer.sent()
    assert timer.due(100) is Due.NOTHING


def test_silence_longer_than_the_send_timeout_is_not_a_stuck_send() -> None:
    timer = Timer(heartbeat=None, send_timeout=0.1, now=0)
    assert timer.due(1000) is Due.NOTHING
    # ...but the timer still looks every send_timeout: a send may begin at any moment.
    assert timer.delay(1000) == 0.1


def test_without_either_the_timer_never_wakes() -> None:
    timer = Timer(heartbeat=None, send_timeout=None, now=0)
    assert timer.delay(0) == inf
    timer.sending(1)
    assert timer.delay(1e9) == inf
    assert timer.due(1e9) is Due.NOTHING


def test_a_heartbeat_alone_looks_again_after_a_heartbeat_while_a_send_is_stuck() -> None:
    timer = Timer(heartbeat=5, send_timeout=None, now=0)
    timer.sending(1)
    assert timer.delay(100) == 5  # no deadline to watch, and no ping during a send
    assert timer.due(100) is Due.NOTHING


def test_a_send_that_ends_while_the_timer_sleeps_does_not_hold_back_the_next_heartbeat() -> None:
    """The stream's first send (its status line) may still be under way when the
    timer first looks (the trio worker of hypercorn runs them in that order):
    the first heartbeat is due one heartbeat after it began, not at its deadline."""
    timer = Timer(heartbeat=0.05, send_timeout=30, now=0)
    timer.sending(0)
    wake = timer.delay(0)
    timer.sent()  # ...while the timer sleeps
    assert wake == 0.05
    assert timer.due(wake) is Due.HEARTBEAT


def test_while_a_send_is_under_way_the_heartbeat_counts_from_its_start() -> None:
    timer = Timer(heartbeat=15, send_timeout=None, now=0)
    timer.sending(5)
    assert timer.delay(12) == 8  # due 15 s after the send began, not 15 s from now
    assert timer.delay(25) == 15  # past due while it was busy: look again a heartbeat on
