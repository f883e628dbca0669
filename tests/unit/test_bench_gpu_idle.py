"""bench.common.gpu_idle, which the GPU plans use to say where a profiled Batch job left the GPU idle, on a
hand-made timeline (this machine's profiler records no GPU events)."""

from types import SimpleNamespace

import pytest
import torch
from torch.autograd.profiler_util import Interval

from bench.common import gpu_idle

CPU, CUDA = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA


def event(name: str, device, start: float, end: float, annotation: bool = False):
    return SimpleNamespace(name=name, device_type=device, time_range=Interval(start, end),
                           is_user_annotation=annotation)


def test_gaps_are_split_by_range_and_blamed_on_the_host_calls_running_in_them():
    events = [
        event("job", CPU, -50, 200_000),  # encloses everything: left out of the blame
        event("prefill", CPU, 0, 300), event("decode", CPU, 400, 1_200),
        event("prefill", CUDA, 0, 300, annotation=True),  # the range's GPU-side copy: not work
        event("kernel a", CUDA, 0, 100), event("kernel b", CUDA, 90, 110),  # overlapping: one busy stretch
        event("kernel c", CUDA, 150, 300),  # a 40 us gap inside prefill
        event("kernel d", CUDA, 1_000, 1_100),  # a 700 us gap: 100 outside the ranges, 600 in decode
        event("kernel e", CUDA, 1_105, 1_110),  # a 5 us gap: below the threshold
        event("aten::item", CPU, 310, 390), event("cudaStreamSynchronize", CPU, 320, 380),
        event("aten::mm", CPU, 120, 130),  # host work during the prefill gap
    ]
    idle = gpu_idle(events, ("prefill", "decode"), min_gap_us=20)
    assert idle["gaps"] == 2
    assert idle["lead_in_s"] == pytest.approx(50e-6) and idle["tail_s"] == pytest.approx((200_000 - 1_110) * 1e-6)
    assert idle["span_s"] == pytest.approx(1_110e-6)
    assert idle["busy_s"] == pytest.approx((110 + 150 + 100 + 5) * 1e-6)
    assert idle["idle_s"] == pytest.approx(740e-6)
    assert idle["idle_in"] == pytest.approx({"prefill": 40e-6, "decode": 600e-6, "outside": 100e-6})
    assert idle["longest_gaps_ms"] == pytest.approx([0.7, 0.04])
    blamed = {w["call"]: (w["seconds"], w["calls"]) for w in idle["waiting_for"]}
    assert "job" not in blamed
    assert blamed["aten::item"] == pytest.approx((80e-6, 1)) and blamed["aten::mm"] == pytest.approx((10e-6, 1))
    assert idle["synchronizing_calls"] == {"aten::item": {"outside": 1}, "cudaStreamSynchronize": {"outside": 1}}


def test_a_timeline_without_gpu_work_has_no_gaps():
    idle = gpu_idle([event("aten::mm", CPU, 0, 10)], ("prefill",))
    assert idle["gaps"] == 0 and idle["idle_s"] == 0 and idle["idle_in"] == {"prefill": 0.0, "outside": 0.0}
