"""quant.awq_gemv (QUANT_INT4_GEMV=awq): an int4pack layer's codes, scales and zeros in llm-awq's gemv_fast layout are
what gptqmodel's own AwqGEMVFastLinear.pack makes of the same weight, bit for bit; gptqmodel's sources built for it
launch every kernel on PyTorch's current stream; the product's build is the decode kernel alone, on ATen's headers;
off a GPU, or with the setting off, layers keep tinygemm and the load report says why; a failed build is reported,
not repeated. The kernel itself runs on a GPU only (tests/gpu/test_gpu_fastpath.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from quant import awq_gemv, int4pack
from quant.settings import SettingsError, load_settings

GROUP = awq_gemv.GROUP_SIZE


def awq_weight(n: int, k: int, seed: int = 0):
    """AWQ-style integers: codes q [n, k], zero points z and fp16 scales s [n, k / GROUP]; w = s * (q - z)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    zero_points = torch.randint(0, 16, (n, k // GROUP), generator=generator, dtype=torch.int32)
    scales = (torch.rand(n, k // GROUP, generator=generator) * 0.02 + 0.001).half()
    return codes, zero_points, scales


@pytest.mark.parametrize(("n", "k"), [(64, 256), (8, 128), (48, 1024)])
def test_codes_are_packed_as_gptqmodels_pack_intweight_packs_them(n, k):
    from gptqmodel.nn_modules.qlinear.gemv_fast_awq import pack_intweight

    codes, _, _ = awq_weight(n, k)
    want = pack_intweight(codes, interleave=awq_gemv.INTERLEAVE, kstride=awq_gemv.K_STRIDE)
    got = awq_gemv.pack_codes(codes)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize(("n", "k"), [(64, 256), (16, 1152)])
def test_an_int4pack_layers_tensors_are_what_gptqmodel_packs_for_the_same_weight(n, k):
    """int4pack's form of an AWQ weight (tinygemm's zero = s * (8 - z)) through awq_gemv.pack equals
    AwqGEMVFastLinear.pack of the weight itself: the codes, the scales and the scaled zeros (-s * z), with the groups
    padded to a multiple of 8 (1152 inputs: 9 groups, padded to 16)."""
    from gptqmodel.nn_modules.qlinear.gemv_fast_awq import AwqGEMVFastLinear

    codes, zero_points, scales = awq_weight(n, k)
    expand = lambda t: t.repeat_interleave(GROUP, dim=1)  # noqa: E731
    linear = torch.nn.Linear(k, n, bias=False)
    linear.weight.data = ((codes - expand(zero_points)).float() * expand(scales).float()).half().float()
    reference = AwqGEMVFastLinear(bits=4, group_size=GROUP, sym=False, desc_act=False, in_features=k, out_features=n,
                                  register_buffers=False)
    reference.pack(linear, scales.float(), zero_points.float())

    tinygemm_scales = scales.float().t()  # [groups, n]
    tinygemm_zeros = tinygemm_scales * (8 - zero_points.float().t())
    weight, got_scales, got_zeros = awq_gemv.pack(codes, tinygemm_scales, tinygemm_zeros)
    assert torch.equal(weight, reference.qweight)
    assert got_scales.dtype == torch.int16 and torch.equal(got_scales.view(torch.float16), reference.scales)
    assert torch.equal(got_zeros.view(torch.float16), reference.qzeros)


def test_gptqmodels_awq_sources_are_rebuilt_with_every_launch_on_the_current_stream(tmp_path):
    """The installed sources, transformed: launches without a stream get PyTorch's current one, launches with one
    keep it, the ops move to our namespace; a second pass leaves the files untouched (ninja keeps the build)."""
    changed = awq_gemv.patched_sources("awq", tmp_path)
    assert changed >= 10
    launches, namespaces = [], []
    for path in tmp_path.rglob("*"):
        if path.suffix in (".cu", ".cuh"):
            launches += re.findall(r"<<<([^<>]*)>>>", path.read_text())
        if path.suffix in (".cpp", ".cu"):
            namespaces += re.findall(r"TORCH_LIBRARY(?:_IMPL)?\((\w+),", path.read_text())
    assert launches and all(len(launch.split(",")) == 4 for launch in launches), launches
    assert namespaces and set(namespaces) == {"quant_awq_stream"}
    times = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    awq_gemv.patched_sources("awq", tmp_path)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == times


def test_a_launch_that_names_its_stream_is_kept():
    source = "k<<<grid, block>>>(a); k<<<g, b, smem>>>(a); k<<<g, b, 0, stream>>>(a);"
    patched, changed = awq_gemv.on_current_stream(source)
    assert changed == 2
    assert "k<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(a)" in patched
    assert "k<<<g, b, smem, c10::cuda::getCurrentCUDAStream()>>>(a)" in patched
    assert "k<<<g, b, 0, stream>>>(a)" in patched


def test_shapes_gemv_fast_cannot_take_are_refused_with_the_reason():
    assert awq_gemv.shape_refusal(4096, 14336, 128) is None
    assert "groups of 128" in awq_gemv.shape_refusal(4096, 4096, 64)
    assert "multiples of 64" in awq_gemv.shape_refusal(4000, 4096, 128)


def test_the_setting_is_tinygemm_unless_asked_and_unknown_values_are_refused(monkeypatch):
    monkeypatch.delenv("QUANT_INT4_GEMV", raising=False)
    assert load_settings().int4_gemv == "tinygemm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert awq_gemv.extra_bytes_per_weight(128) == 0.0
    monkeypatch.setenv("QUANT_INT4_GEMV", "awq")
    assert awq_gemv.extra_bytes_per_weight(128) == 0.5 + 4 / 128  # the estimate before loading holds the 2nd copy
    assert awq_gemv.extra_bytes_per_weight(64) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert awq_gemv.extra_bytes_per_weight(128) == 0.0  # no GPU: no second copy
    monkeypatch.setenv("QUANT_INT4_GEMV", "marlin")
    with pytest.raises(SettingsError, match="QUANT_INT4_GEMV"):
        load_settings()


def test_off_the_gpu_asked_for_gemv_fast_layers_keep_tinygemm_and_the_report_says_why(monkeypatch):
    monkeypatch.setenv("QUANT_INT4_GEMV", "awq")
    codes, zero_points, scales = awq_weight(64, 256)
    tinygemm_scales = scales.float().t()
    layer = int4pack.pack_int4_linear(codes, tinygemm_scales, tinygemm_scales * (8 - zero_points.float().t()),
                                      group_size=GROUP, bias=None)
    assert layer.gemv_weight is None and "gemv" not in layer.extra_repr()
    model = torch.nn.Sequential(layer)
    warnings = int4pack.kernel_warnings(model)
    assert warnings == ["QUANT_INT4_GEMV=awq: decode steps stay on tinygemm (the int4 layers are not on a GPU)."]
    monkeypatch.setenv("QUANT_INT4_GEMV", "tinygemm")
    assert int4pack.kernel_warnings(model) == []


def test_the_decode_build_is_the_decode_kernel_alone_on_atens_headers(tmp_path):
    """What the product compiles: our binding (one op, our namespace) and gemv_fast's translation unit, neither
    including <torch/extension.h> (the C++ frontend and pybind11: most of the compile time)."""
    awq_gemv.patched_sources("awq", tmp_path, aten_only=True)
    binding = awq_gemv.DECODE_BINDING
    assert re.findall(r"TORCH_LIBRARY(?:_IMPL)?\((\w+),", binding) == ["quant_awq_decode"] * 2
    assert re.findall(r'm\.def\("(\w+)\(', binding) == ["gemv_fast_forward_decode"]
    included = [awq_gemv.DECODE_SOURCES[1]]  # the kernel's translation unit and what it includes from the sources
    seen = set()
    while included:
        name = included.pop()
        text = (tmp_path / name).read_text()
        seen.add(name)
        assert "torch/extension.h" not in text, name
        included += [str((tmp_path / name).parent.relative_to(tmp_path) / header)
                     for header in re.findall(r'#include "([^"]+)"', text)
                     if str((tmp_path / name).parent.relative_to(tmp_path) / header) not in seen]
    assert {"quantization_new/gemv/gemv_cuda.cu", "quantization_new/gemv/gemv_cuda.h"} <= {
        str(Path(n)) for n in seen}
    assert awq_gemv.ATEN_FOR_EXTENSION_H in (tmp_path / "quantization_new/gemv/gemv_cuda.h").read_text()


def test_a_failed_build_is_kept_and_reported_not_compiled_again(monkeypatch, tmp_path):
    """The kernel cache is a file, not a folder: the build fails; a second caller (the load's check after the
    background build) gets the same error without a second attempt."""
    cache = tmp_path / "not-a-folder"
    cache.write_text("")
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(awq_gemv, "_BUILT", {})
    with pytest.raises(OSError) as first:
        awq_gemv.decode_op()
    with pytest.raises(OSError) as second:
        awq_gemv.decode_op()
    assert second.value is first.value


def test_fused_projections_hold_the_groups_gemv_layout_and_give_each_member_its_own_back():
    """q/k/v fused into one layer (quant.fused_projections) on gemv_fast: the group's layout is the packing of the
    members' weights stacked along the outputs (the layout packs blocks of 4 output rows on their own), each member
    holds a view of its part, and unfused its scales and zeros are contiguous again (the kernel reads them so)."""
    from quant.fused_projections import _fuse_int4, _member_class, unfuse_projections

    members, parts = [], []
    for seed, n in enumerate((64, 16, 16)):
        codes, zero_points, scales = awq_weight(n, 256, seed)
        tinygemm_scales = scales.float().t()
        tinygemm_zeros = tinygemm_scales * (8 - zero_points.float().t())
        layer = int4pack.pack_int4_linear(codes, tinygemm_scales, tinygemm_zeros, group_size=GROUP, bias=None)
        layer.gemv_weight, layer.gemv_scales, layer.gemv_zeros = awq_gemv.pack(codes, tinygemm_scales, tinygemm_zeros)
        members.append(layer)
        parts.append((codes, tinygemm_scales, tinygemm_zeros))
    own = [(m.gemv_weight.clone(), m.gemv_scales.clone(), m.gemv_zeros.clone()) for m in members]
    fused = _fuse_int4(members)
    want = awq_gemv.pack(torch.cat([c for c, _, _ in parts]), torch.cat([s for _, s, _ in parts], dim=1),
                         torch.cat([z for _, _, z in parts], dim=1))
    assert all(torch.equal(got, expected) for got, expected in zip(
        (fused.gemv_weight, fused.gemv_scales, fused.gemv_zeros), want))
    for member, tensors in zip(members, own):
        assert all(torch.equal(got, expected) for got, expected in zip(
            (member.gemv_weight, member.gemv_scales, member.gemv_zeros), tensors))
        assert member.gemv_weight.data_ptr() >= fused.gemv_weight.data_ptr()  # a view, not a copy
    model = torch.nn.Sequential(*members)
    for member in members:  # as fuse_projections marks them
        member.__class__ = _member_class(type(member))
    unfuse_projections(model)
    assert all(m.gemv_scales.is_contiguous() and m.gemv_zeros.is_contiguous() for m in members)
