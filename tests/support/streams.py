"""Reading a streaming handler's updates through gradio_client."""

from __future__ import annotations

from gradio_client.client import Job

UNCHANGED = {"__type__": "update"}
"""An output a handler left as it was (gr.skip()): how a long batch or quantization keeps its handler closable
between two real updates (ui.common.InBackground.IDLE)."""


def updates_with_values(job: Job) -> list[tuple]:
    """The job's streamed updates that changed some output, without the ones that changed nothing."""
    return [update for update in job.outputs() if any(value != UNCHANGED for value in update)]
