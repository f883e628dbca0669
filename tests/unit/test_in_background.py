"""ui.common.InBackground: a handler streaming a long blocking call can be closed (a cancel, a closed page) while the
call is between two of its updates, and closing it stops the call."""

from __future__ import annotations

import threading
import time

from ui.common import InBackground


def test_a_silent_call_gives_idle_ticks_and_closing_stops_it():
    stop, started = threading.Event(), threading.Event()

    def work(emit):
        emit("first")
        started.set()
        stop.wait(30)  # a long prompt or layer: nothing emitted until it ends or is stopped
        return "stopped" if stop.is_set() else "ran out"

    job = iter(InBackground(work, stop, idle_seconds=0.05))
    assert next(job) == "first"
    assert next(job) is InBackground.IDLE  # Gradio gets the handler back long before the call emits again
    assert started.is_set() and not stop.is_set()
    job.close()  # what Gradio does on a cancel
    assert stop.is_set()


def test_values_and_result_come_through_without_idle_ticks_when_the_call_keeps_emitting():
    def work(emit):
        for i in range(3):
            emit(i)
            time.sleep(0.01)
        return "done"

    background = InBackground(work, threading.Event(), idle_seconds=5)
    assert list(background) == [0, 1, 2]
    assert background.result == "done"


def test_the_calls_error_reaches_the_handler():
    def work(emit):
        raise ValueError("bad prompt file")

    background = InBackground(work, threading.Event(), idle_seconds=0.05)
    try:
        list(background)
    except ValueError as exc:
        assert str(exc) == "bad prompt file"
    else:
        raise AssertionError("the error was swallowed")
