"""On a CUDA GPU: the compiled generation path (static cache, compiled decode step captured as a CUDA graph) gives
the eager path's greedy tokens, is chosen where it is supported, falls back with a reason where it is not, and gives
its memory back on unload."""

from __future__ import annotations

import os

import pytest
import torch

from quant.generation import GenerationSettings, start_generate, stream_chat
from quant.loader import LoadRequest
from quant.methods import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA, ROOT, T5
from tests.support.fastpath import (
    PROMPTS,
    assert_compiled_rows_match,
    assert_same_up_to_noise,
    check_against_eager,
    check_seq2seq_against_eager,
    greedy_ids,
    load,
)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", ["fp16", "bf16", "nf4"])
def test_compiled_path_matches_eager(mode, kernel_cache):
    check_against_eager(LoadRequest(model=LLAMA, mode=mode, device_map="cuda:0"))
    assert any(p.is_file() for p in kernel_cache.rglob("*")), "nothing was written to the kernel cache"


@pytest.mark.parametrize(("family", "mode"), [("t5", "bf16"), ("t5", "fp16"), ("t5", "nf4"), ("bart", "bf16"),
                                              ("bart", "fp32")])
def test_compiled_seq2seq_matches_eager(family, mode, kernel_cache, monkeypatch, tmp_path):
    """T5 (the demo; in fp16 its `wo` layers stay fp32, in nf4 unquantized) and a BART of bart-large-cnn's config:
    the encoder eagerly, the decoder step compiled by Inductor and captured (quant/seq2seq_decode.py)."""
    from tests.support.architectures import build

    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "64")
    model = T5 if family == "t5" else str(build("bart", tmp_path / "bart", init_std=0.2))
    check_seq2seq_against_eager(LoadRequest(model=model, mode=mode, device_map="cuda:0"))


def test_seq2seq_in_llm_int8_stays_eager_with_the_reason(kernel_cache):
    loaded = load(LoadRequest(model=T5, mode="int8", device_map="cuda:0"), fast=True)
    assert not loaded.path.compiled and "LLM.int8" in loaded.report.generation_path


@pytest.mark.parametrize("backend", ["gptq_marlin", "gptq_torch", "gptq_int4pack"])
def test_compiled_gptq_matches_eager(gpu_gptq_llama_dir, backend, kernel_cache):
    check_against_eager(LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                                    options=QuantOptions(gptq_backend=backend)))


def test_int4pack_gives_the_torch_kernels_tokens(gpu_gptq_llama_dir, kernel_cache):
    """PyTorch's int4 kernel (CUDA tinygemm) against gptqmodel's torch kernel, both eager and in bf16."""
    folder = str(gpu_gptq_llama_dir)
    reference = load(LoadRequest(model=folder, mode="gptq", device_map="cuda:0",
                                 options=QuantOptions(gptq_backend="gptq_torch", compute_dtype="bf16")), fast=False)
    repacked = load(LoadRequest(model=folder, mode="gptq", device_map="cuda:0",
                                options=QuantOptions(gptq_backend="gptq_int4pack")), fast=False)
    assert repacked.report.linear_layers["Int4PackedLinear"] == 28 and not repacked.report.warnings
    assert repacked.report.quantization["backend"] == "gptq_int4pack"
    for prompts in ([PROMPTS[0]], PROMPTS):
        encoded, expected, _ = greedy_ids(reference, prompts)
        _, got, _ = greedy_ids(repacked, prompts)
        for row, (want, have) in enumerate(zip(expected, got)):
            assert_same_up_to_noise(reference, encoded, row, want, have)


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 128, 256])
def test_int4_layout_reader_matches_tinygemm(inner_k_tiles, group_size):
    """unpack_cuda_codes inverts the real `_convert_weight_to_int4pack`, and the dequantized weight (compiled, as
    long inputs use it; and by quant.int4_dequant's Triton kernel, within one bfloat16 step of it) multiplies as
    tinygemm does."""
    from quant.int4_dequant import dequantize_op
    from quant.int4pack import _compiled_dequantize, unpack_cuda_codes

    generator = torch.Generator().manual_seed(inner_k_tiles * group_size)
    n, k = 96, 1024
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32).cuda()
    packed = torch.ops.aten._convert_weight_to_int4pack(
        (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).contiguous(), inner_k_tiles)
    assert torch.equal(unpack_cuda_codes(packed), codes)
    scales_and_zeros = torch.stack([torch.rand(k // group_size, n, generator=generator) * 0.02 + 0.001,
                                    torch.randn(k // group_size, n, generator=generator) * 0.01], dim=-1)
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16).cuda().contiguous()
    weight = _compiled_dequantize()(packed, scales_and_zeros, group_size)
    by_triton = dequantize_op()(packed, scales_and_zeros, group_size)
    assert torch.all((by_triton.float() - weight.float()).abs() <= weight.float().abs() * 2**-7)
    for rows in (1, 33, 300):
        x = torch.randn(rows, k, generator=generator).to(torch.bfloat16).cuda()
        tinygemm = torch.ops.aten._weight_int4pack_mm(x, packed, group_size, scales_and_zeros).float()
        for dequantized_weight in (weight, by_triton):
            dequantized = torch.nn.functional.linear(x, dequantized_weight).float()
            assert (dequantized - tinygemm).norm() / tinygemm.norm() < 1e-2, rows


def test_int4pack_on_the_dequantized_weight_gives_tinygemms_tokens(gpu_gptq_llama_dir, kernel_cache, monkeypatch):
    """Every call through the dequantized weight (QUANT_INT4_DEQUANTIZE_ROWS=1: prefill and the compiled, CUDA-graphed
    decode steps at batch 1 and 4) against tinygemm for every call, eager."""
    request = LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                          options=QuantOptions(gptq_backend="gptq_int4pack"))
    monkeypatch.setenv("QUANT_INT4_DEQUANTIZE_ROWS", "0")
    monkeypatch.setenv("QUANT_INT4_GEMV", "tinygemm")
    tinygemm = load(request, fast=False)
    monkeypatch.setenv("QUANT_INT4_DEQUANTIZE_ROWS", "1")
    dequantized = load(request, fast=True)
    assert dequantized.path.captured and not dequantized.report.warnings, dequantized.report.warnings
    layers = [m for m in dequantized.model.modules() if type(m).__name__ == "Int4PackedLinear"]
    assert layers and all(m.dequantize_from_rows == 1 and m.dequantize_kernel == "triton" for m in layers)
    for prompts in ([PROMPTS[0]], PROMPTS):
        assert_compiled_rows_match(tinygemm, dequantized, prompts)
    dequantized.path.close()


def test_gemv_fast_decode_steps_give_tinygemms_tokens(gpu_gptq_llama_dir, kernel_cache, monkeypatch):
    """QUANT_INT4_GEMV=awq: llm-awq's gemv_fast, built (in the background, while the weights load) from gptqmodel's
    sources on the current stream, passes its check, every int4 layer holds its layout, and the compiled,
    CUDA-graphed decode steps at batch 1 and 4 (1-7 rows: gemv_fast) give tinygemm's tokens, eager; the load report
    says what the second copy of the weights costs."""
    from quant import awq_gemv

    request = LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                          options=QuantOptions(gptq_backend="gptq_int4pack"))
    monkeypatch.setenv("QUANT_INT4_GEMV", "tinygemm")
    tinygemm = load(request, fast=False)
    assert not any(m.gemv_weight is not None for m in tinygemm.model.modules() if hasattr(m, "gemv_weight"))
    monkeypatch.setenv("QUANT_INT4_GEMV", "awq")
    on_gemv = load(request, fast=True)
    assert awq_gemv.CHECK.reason() is None
    assert on_gemv.path.captured, on_gemv.path.describe()
    layers = [m for m in on_gemv.model.modules() if type(m).__name__ == "Int4PackedLinear"]
    assert layers and all(m.gemv_weight is not None for m in layers)
    assert any("gemv_fast" in w and "second time" in w for w in on_gemv.report.warnings), on_gemv.report.warnings
    for prompts in ([PROMPTS[0]], PROMPTS):
        assert_compiled_rows_match(tinygemm, on_gemv, prompts)
    on_gemv.path.close()


def test_deferred_stop_ends_where_the_sequences_end_and_streams_every_token(kernel_cache):
    """On CUDA the loop learns of an end-of-sequence one step late: the extra step is dropped, rows that ended first
    are padded, and the streamer gets exactly the kept tokens."""
    from transformers import TextIteratorStreamer

    fast = load(LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0"), fast=True)
    assert fast.path.captured, fast.path.describe()
    pad = fast.tokenizer.pad_token_id
    for prompts in ([PROMPTS[0]], PROMPTS):
        encoded, free, compiled = greedy_ids(fast, prompts, new_tokens=40)
        assert compiled
        eos = sorted({row[6] for row in free})
        ends = [next(i for i, token in enumerate(row) if token in eos) for row in free]
        expected = [row[:end + 1] + [pad] * (max(ends) - end) for row, end in zip(free, ends)]
        streamer = TextIteratorStreamer(fast.tokenizer, skip_prompt=True, skip_special_tokens=True) \
            if len(prompts) == 1 else None
        kwargs = dict(**encoded, max_new_tokens=40, do_sample=False, temperature=None, top_p=None, top_k=None,
                      pad_token_id=pad, eos_token_id=eos, streamer=streamer)
        future, compiled = start_generate(fast, kwargs, batch_size=len(prompts),
                                          total_tokens=encoded["input_ids"].shape[1] + 40)
        streamed = "".join(streamer) if streamer else None
        got = future.result()[:, encoded["input_ids"].shape[1]:].tolist()
        assert compiled and got == expected
        if streamer:
            assert streamed == fast.tokenizer.decode(expected[0], skip_special_tokens=True)
    fast.path.close()


def test_seeded_sampling_on_the_graph_repeats(kernel_cache):
    fast = load(LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0"), fast=True)
    settings = GenerationSettings(max_new_tokens=24, do_sample=True, seed=3, temperature=1.2, top_k=0, top_p=1.0)
    history = [{"role": "user", "content": PROMPTS[1]}]
    first, second = (list(stream_chat(fast, history, settings=settings))[-1] for _ in range(2))
    other = list(stream_chat(fast, history, settings=GenerationSettings(**{**settings.__dict__, "seed": 4})))[-1]
    assert first.stats.path == "compiled" and first.text == second.text and other.text != first.text
    fast.path.close()


def test_int8_and_unsupported_kernels_stay_eager_with_a_reason(gpu_gptq_llama_dir, kernel_cache):
    int8 = load(LoadRequest(model=LLAMA, mode="int8", device_map="cuda:0"), fast=True)
    assert not int8.path.compiled and "LLM.int8" in int8.path.reason
    assert "eager" in int8.report.generation_path
    exllama = load(LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                               options=QuantOptions(gptq_backend="gptq_exllama_v2")), fast=True)
    assert not exllama.path.compiled and "gptq_exllama_v2" in exllama.path.reason


def test_compiled_model_gives_its_memory_back(kernel_cache):
    registry = ModelRegistry(max_models=1)

    def cycle() -> None:
        loaded = registry.load(LoadRequest(model=LLAMA, mode="fp16", device_map="cuda:0"))
        assert loaded.path.compiled
        list(stream_chat(loaded, [{"role": "user", "content": "hi"}], settings=GenerationSettings(max_new_tokens=8)))
        key = loaded.key
        del loaded
        registry.unload(key)

    cycle()
    after_first = torch.cuda.memory_allocated()
    for _ in range(3):
        cycle()
    assert torch.cuda.memory_allocated() <= after_first + 2**20


@pytest.mark.parametrize("setting", ["auto", "off"])
def test_projections_are_fused_by_default_on_the_gpu_in_the_same_memory(setting, kernel_cache, monkeypatch):
    """QUANT_FUSE_PROJECTIONS=auto fuses q/k/v and gate/up on a GPU's compiled path; the weights' memory is what the
    unfused model holds (the members are views of the concatenated tensors)."""
    monkeypatch.setenv("QUANT_FUSE_PROJECTIONS", setting)
    loaded = load(LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0"), fast=True)
    fused = "q_proj/k_proj/v_proj and gate_proj/up_proj each one matmul" in loaded.path.describe()
    assert fused == (setting == "auto"), loaded.path.describe()
    weights = sum(t.numel() * t.element_size() for t in [*loaded.model.parameters(), *loaded.model.buffers()])
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*loaded.model.parameters(), *loaded.model.buffers()]}
    assert sum(storages.values()) == weights  # views add nothing, and nothing was left behind in another tensor


def test_the_decode_attention_kernel_gives_the_eager_tokens(kernel_cache, monkeypatch):
    """QUANT_DECODE_ATTENTION=triton: the compiled, CUDA-graphed decode steps (batch 1, a ragged padded batch, a chat)
    attend with quant.decode_attention's kernel, which reads only the attended cache slots, and give eager's tokens."""
    from quant.attention import DECODE_KERNEL_ATTRIBUTE

    monkeypatch.setenv("QUANT_DECODE_ATTENTION", "triton")
    fast = check_against_eager(LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0"))
    assert "decode attention reading only the attended cache slots" in fast.report.generation_path
    assert not fast.report.warnings, fast.report.warnings
    assert all(getattr(m, DECODE_KERNEL_ATTRIBUTE) == 1 for m in fast.model.modules()
               if hasattr(m, "num_key_value_groups"))  # from one row (min_rows' default): batch 1 and chats too


def test_nf4_layers_dequantizing_with_the_triton_kernel_give_the_eager_tokens(kernel_cache, monkeypatch):
    """QUANT_NF4_DEQUANTIZE_ROWS=4: the padded batch of 4 (prefill and decode steps) goes through quant.nf4_dequant
    and cuBLAS in the compiled steps, batch 1 through bitsandbytes' own kernel; both give eager's tokens (whose layers
    are converted too: eager batches of 4 rows and more dequantize with the kernel, called outside a graph)."""
    monkeypatch.setenv("QUANT_NF4_DEQUANTIZE_ROWS", "4")
    fast = check_against_eager(LoadRequest(model=LLAMA, mode="nf4", device_map="cuda:0"))
    assert not fast.report.warnings, fast.report.warnings  # converted: nothing to warn of
    layers = fast.report.linear_layers  # every 4-bit layer converted, none left on bitsandbytes' class
    assert layers.get("Dequantizing4bitLinear", 0) > 0 and "Linear4bit" not in layers, layers


def test_kernel_cache_survives_a_restart(kernel_cache, tmp_path):
    """A second process finds the compiled kernels on disk and warms up faster than the first."""
    import subprocess
    import sys

    script = ("import os, sys; sys.path.insert(0, os.getcwd());"
              "from quant.loader import LoadRequest, load_model;"
              "m = load_model(LoadRequest(model='demo:tiny-llama-chat', mode='fp16', device_map='cuda:0'));"
              "print(m.report.compile_seconds)")
    env = {**os.environ, "QUANT_FAST_GENERATION": "auto"}
    first, second = (float(subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
                     for _ in range(2))
    assert second < first, (first, second)
