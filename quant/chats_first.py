"""Chats first: while an eager chat waits for its first token, batch work in the same process steps aside (issue 26: "a
chat on the same model while a batch job runs is not starved: its first token within 1 s").

A chat that arrives during a Batch job runs eagerly on a CUDA stream of its own (quant.generation.chat_stream), yet it
still shares two things with the job: the GPU, whose SMs the job's prefill fills with large matrix products, and the
GIL, which its eager forward gives up and takes back at each of its hundreds of operations, while a thread running
Python (dynamo compiling the job's batch size, the job's own eager prefill) keeps it up to the interpreter's switch
interval (5 ms) each time. On an H200 (8B bf16) such chats waited 0.5-2.3 s for their first token against 0.12 s
alone. So from a chat's submission to its first token:

- batch work pauses at its next safe point (`pause_for_chats`: before each prefill group of quant.ragged, before each
  step of quant.decode's loop), for at most `PAUSE_LIMIT_S` a time;
- the switch interval is `CHAT_SWITCH_INTERVAL_S`, so work that cannot pause (a compile) hands the GIL over sooner;
  the interpreter's own interval is back once no chat waits.
"""

from __future__ import annotations

import sys
import threading

PAUSE_LIMIT_S = 1.0
"""The longest one safe point of batch work waits for chats (a chat with a long prompt must not stall the job)."""
CHAT_SWITCH_INTERVAL_S = 0.0005

_waiting = 0
_saved_switch_interval: float | None = None
_changed = threading.Condition()


class ChatWait:
    """One chat waiting for its first token; `release()` (idempotent) when it has it or has ended."""

    def __init__(self) -> None:
        global _waiting, _saved_switch_interval
        self._released = False
        with _changed:
            if _waiting == 0:
                _saved_switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(CHAT_SWITCH_INTERVAL_S)
            _waiting += 1

    def release(self) -> None:
        global _waiting
        with _changed:
            if self._released:
                return
            self._released = True
            _waiting -= 1
            if _waiting == 0:
                sys.setswitchinterval(_saved_switch_interval)
                _changed.notify_all()


def chats_waiting() -> int:
    return _waiting


def pause_for_chats() -> bool:
    """Called by batch work at a safe point: wait while chats wait for their first token (at most PAUSE_LIMIT_S).
    Returns whether it waited."""
    if not _waiting:  # unlocked read: the common case costs nothing; a chat that arrives now is seen at the next point
        return False
    with _changed:
        _changed.wait_for(lambda: _waiting == 0, timeout=PAUSE_LIMIT_S)
    return True
