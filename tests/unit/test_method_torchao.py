"""torchao int8 / int4 weight-only and fp8 on the CPU (quant/methods/torchao.py): the CPU methods load with the
footprint their bytes per weight say, chat, batch, compile and are compared; int8 is quantized, pushed to the local
Hub, downloaded and loaded back with the same greedy tokens; what needs a GPU is refused before anything loads, with
what is needed. Their GPU side is tests/gpu/test_gpu_torchao.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from quant.compare import ModeSpec, compare
from quant.errors import QuantError, UnsupportedModeError
from quant.generation import GenerationSettings, generate_batch, start_generate, stream_chat
from quant.gptq import builtin_textsets
from quant.loader import LoadRequest, load_model, prepare
from quant.methods import METHODS, Mode, QuantOptions, check_mode
from quant.registry import ModelRegistry, estimate_footprint
from tests.conftest import LLAMA

PROMPTS = ["The with statement is used to", "A class definition defines"]
INT4_G32 = QuantOptions(torchao_group_size="32")
BLOCKS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def theoretical_bytes(model: torch.nn.Module, per_layer) -> int:
    """Footprint from the shapes: `per_layer(out, in)` bytes for each block linear layer, 2 bytes (bf16) for every
    other weight (embeddings, norms, the output head), and the buffers (rotary frequencies)."""
    total = sum(b.numel() * b.element_size() for b in model.buffers())
    for name, module in model.named_modules():
        if name.split(".")[-1] in BLOCKS:
            total += per_layer(module.out_features, module.in_features)
        else:
            total += sum(2 * p.numel() for p in module.parameters(recurse=False))
    return total


THEORY = {
    # int8 weights; per output row an fp32 scale and an int8 zero point
    "torchao_int8": lambda options: lambda out, inp: out * inp + 5 * out,
    # 4 bits a weight; per group of `group_size` inputs a bf16 scale and a bf16 zero point
    "torchao_int4": lambda options: lambda out, inp: out * inp // 2 + 4 * out * inp // int(options.torchao_group_size),
}


@pytest.fixture(scope="module")
def compared():
    """bf16, torchao int8 and int4 (group sizes 128 and 32) through one Compare run; the loads' reports stay in the
    registry's history."""
    specs = [ModeSpec("bf16", Mode.BF16, LLAMA), ModeSpec("torchao_int8", Mode.TORCHAO_INT8, LLAMA),
             ModeSpec("torchao_int4", Mode.TORCHAO_INT4, LLAMA),
             ModeSpec("torchao_int4 g32", Mode.TORCHAO_INT4, LLAMA, INT4_G32)]
    registry = ModelRegistry(max_models=2)
    # The held-out text's first ~1,100 tokens (two quality windows of 512) instead of 4,096: a quarter of the time
    eval_text = builtin_textsets()["python-reference-heldout"].read_text(encoding="utf-8")[:4000]
    rows = {r.label: r for r in compare(LLAMA, specs, registry=registry, prompts=PROMPTS, eval_text=eval_text,
                                        batch_size=2, new_tokens=6, answer_tokens=8)}
    assert registry.loaded() == []
    return rows, {f"{r.mode}:{r.quantization and r.quantization.get('group_size')}": r for r in registry.history()}


def test_compare_measures_each_method_against_bf16(compared):
    rows, _ = compared
    assert {label: r.error for label, r in rows.items()} == dict.fromkeys(rows)
    for r in rows.values():
        assert r.decode_tokens_per_s > 0 and r.batch_tokens_per_s > 0 and all(r.answers)
    bf16, int8, int4, int4_g32 = (rows[k] for k in ("bf16", "torchao_int8", "torchao_int4", "torchao_int4 g32"))
    assert bf16.footprint_bytes > int8.footprint_bytes > int4_g32.footprint_bytes > int4.footprint_bytes
    assert int8.linear_layers == {"Linear[Int8Tensor]": 28, "Linear": 1}  # the output head stays bf16
    assert int4.linear_layers == {"Linear[Int4OpaqueTensor]": 28, "Linear": 1}
    # next-token quality against bf16 on the held-out text: int8 as good as bf16, int4 close behind, g32 closer
    assert int8.top1_agreement > 98 and int8.kl_mean < 0.002 and "close to bf16" in int8.verdict
    assert int4.top1_agreement > 85 and int4.kl_mean < 0.1
    assert int4_g32.kl_mean < int4.kl_mean
    assert abs(int8.perplexity / bf16.perplexity - 1) < 0.01 and int4.perplexity / bf16.perplexity < 1.2


@pytest.mark.parametrize(("mode", "options"), [("torchao_int8", QuantOptions()), ("torchao_int4", QuantOptions()),
                                               ("torchao_int4", INT4_G32)])
def test_footprint_is_the_theoretical_bytes_and_the_estimate_is_close(compared, mode, options):
    _, reports = compared
    report = reports[f"{mode}:{int(options.torchao_group_size) if mode == 'torchao_int4' else None}"]
    skeleton = load_model(LoadRequest(model=LLAMA, mode="bf16")).model  # the shapes
    theory = theoretical_bytes(skeleton, THEORY[mode](options))
    assert report.footprint_bytes == theory, (report.footprint_bytes, theory)
    assert report.bytes_by_device == {"cpu": theory}
    assert report.parameters == sum(p.numel() for p in skeleton.parameters())  # logical weights, not packed bytes
    prepared = prepare(LoadRequest(model=LLAMA, mode=mode, options=options))
    estimate = estimate_footprint(prepared.source, mode, prepared.kwargs.get("quantization_config"))
    # the estimate assumes 4096 inputs a row (an 8B layer): the demo's 128-384 carry more scale bytes per weight
    assert 0.95 < estimate / theory <= 1.0
    assert f"torchao_config={'Int8WeightOnlyConfig' if mode == 'torchao_int8' else 'PrototypeInt4WeightOnlyConfig'}" \
        in report.to_text()


@pytest.fixture(scope="module")
def int4_model():
    return load_model(LoadRequest(model=LLAMA, mode="torchao_int4"))


def test_chat_and_batch(int4_model):
    settings = GenerationSettings(max_new_tokens=8)
    reply = list(stream_chat(int4_model, [{"role": "user", "content": "What is a generator?"}], settings=settings))[-1]
    assert reply.text.strip() and reply.stats.new_tokens > 0 and reply.stats.path == "eager"
    batch = generate_batch(int4_model, PROMPTS, settings)
    assert [text for text, _ in batch] == [generate_batch(int4_model, [p], settings)[0][0] for p in PROMPTS]
    assert all(text.strip() for text, _ in batch)


def test_layers_torchao_leaves_unquantized_are_named(int4_model):
    """torchao skips a layer whose shape its kernel does not take with a log line only; the load report names it."""
    method = METHODS["torchao_int4"]
    assert method.after_load(int4_model.model, QuantOptions(), None) == []
    [warning] = method.after_load(load_model(LoadRequest(model=LLAMA, mode="bf16")).model, QuantOptions(), None)
    assert warning.startswith("torchao left 28 linear layers in bf16, unquantized (model.layers.{0")
    assert "input size is a multiple of the group size" in warning


def test_inductor_settings_go_where_the_matmul_is_torch_ops():
    """int8 and fp8 weight-only run their matmul as torch ops on a 1-byte weight: coordinate-descent tuning is what has
    Inductor read that weight in one kernel per layer at batch 1 (GEMV_SETTINGS). int4's tinygemm and fp8's
    `_scaled_mm` are extern kernels: Inductor's defaults. None asks for the all-directions search (compile time)."""
    settings = {"coordinate_descent_tuning": True}
    assert METHODS["torchao_int8"].compile_options(QuantOptions()) == settings
    assert METHODS["fp8"].compile_options(QuantOptions(fp8_activation="none")) == settings
    assert METHODS["fp8"].compile_options(QuantOptions(fp8_activation="dynamic")) == {}
    assert METHODS["torchao_int4"].compile_options(QuantOptions()) == {}
    # a copy each time: the fast path may keep or change what it gets
    METHODS["torchao_int8"].compile_options(QuantOptions())["coordinate_descent_tuning"] = False
    assert METHODS["torchao_int8"].compile_options(QuantOptions()) == settings


class InductorSettingsSeen(CustomGraphPass):
    """Inductor's own hook for a pass after its post-grad passes (`post_grad_custom_post_pass`): it runs inside the
    compilation, so it sees the settings that compilation runs under."""

    KEYS = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions", "force_fuse_int_mm_with_mul")

    def __init__(self):
        self.seen: list[dict] = []

    def __call__(self, graph):
        import torch._inductor.config as inductor_config

        self.seen.append({key: getattr(inductor_config, key) for key in self.KEYS})

    def uuid(self):
        return "quant-test-inductor-settings-seen"


def test_int8_decode_step_compiles_once_with_its_inductor_settings_for_that_compilation_only(monkeypatch, tmp_path):
    """The app's compiled decode step of torchao_int8 through Inductor (on the CPU: C++ kernels, no CUDA graph): the
    method's settings are in force while it compiles and gone after; dynamo makes three graphs (the part before the
    layers, one decoder layer for all four, the norm + head) and no graph break, and
    later generations reuse it (no recompile); its greedy tokens are eager generate's up to ties of bf16 logits.
    (What the settings change on CUDA cannot be seen here: bench/cuda_codegen_probe.py reads Inductor's CUDA code.)
    Inductor's settings are per thread (torch 2.14): the observer goes where the fast path compiles, its runner."""
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from quant.fastpath import compiled_runner
    from tests.support.fastpath import assert_same_up_to_noise

    def on_runner(fn):
        return compiled_runner().submit(fn).result()

    def settings():
        return {key: getattr(inductor_config, key) for key in InductorSettingsSeen.KEYS}

    before = on_runner(settings)
    assert not before["coordinate_descent_tuning"]
    observer = InductorSettingsSeen()
    monkeypatch.setenv("QUANT_FAST_GENERATION", "all")
    monkeypatch.setenv("QUANT_COMPILE_BACKEND", "inductor")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "64")
    # A cold cache, or Inductor is not run at all (AOTAutograd's cache hit): an earlier load's folder is already in
    # these variables, and the fast path takes QUANT_KERNEL_CACHE only where they are unset.
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    on_runner(lambda: setattr(inductor_config, "post_grad_custom_post_pass", observer))
    fast = None
    try:
        fast = load_model(LoadRequest(model=LLAMA, mode="torchao_int8"))
        assert fast.path.compiled and fast.path.regional, fast.report.generation_path
        # One compiled layer for all (QUANT_COMPILE_REGIONS=layers): the prologue, the layer, the norm + head
        assert counters["stats"]["unique_graphs"] == graphs + 3 and sum(counters["graph_break"].values()) == breaks
        assert observer.seen == [{"coordinate_descent_tuning": True, "coordinate_descent_check_all_directions": False,
                                  "force_fuse_int_mm_with_mul": False}] * 3, dict(counters["aot_autograd"])
        assert on_runner(settings) == before and settings() == before
        for prompt in PROMPTS:
            encoded = fast.tokenizer([prompt], return_tensors="pt")
            kwargs = dict(**encoded, max_new_tokens=12, min_new_tokens=12, do_sample=False, temperature=None,
                          top_p=None, top_k=None, pad_token_id=fast.tokenizer.pad_token_id)
            future, compiled = start_generate(fast, kwargs, batch_size=1,
                                              total_tokens=encoded["input_ids"].shape[1] + 12)
            got = future.result()[0, encoded["input_ids"].shape[1]:].tolist()
            with torch.inference_mode():
                want = fast.model.generate(**kwargs)[0, encoded["input_ids"].shape[1]:].tolist()  # eager generate
            assert compiled
            assert_same_up_to_noise(fast, encoded, 0, want, got)
        assert counters["stats"]["unique_graphs"] == graphs + 3, "a generation compiled the decode step again"
        assert len(observer.seen) == 3
    finally:
        on_runner(lambda: setattr(inductor_config, "post_grad_custom_post_pass", None))
        if fast is not None:
            fast.close()


def test_the_compiled_decode_step_traces_the_torchao_int4_weights(monkeypatch, tmp_path):
    """compile_refusal is None: dynamo traces torchao's tensor subclasses. On the CPU with the "eager" backend (the
    GPU's Inductor + CUDA graphs: tests/gpu/test_gpu_torchao.py; int8 through Inductor: above); its tokens are eager's
    up to ties of bf16 logits."""
    from tests.support.fastpath import assert_same_up_to_noise

    assert METHODS["torchao_int4"].compile_refusal(QuantOptions()) is None
    monkeypatch.setenv("QUANT_FAST_GENERATION", "all")
    monkeypatch.setenv("QUANT_COMPILE_BACKEND", "eager")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "64")
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    fast = load_model(LoadRequest(model=LLAMA, mode="torchao_int4"))
    try:
        assert fast.path.compiled, fast.report.generation_path
        encoded = fast.tokenizer([PROMPTS[0]], return_tensors="pt")
        kwargs = dict(**encoded, max_new_tokens=12, min_new_tokens=12, do_sample=False, temperature=None, top_p=None,
                      top_k=None, pad_token_id=fast.tokenizer.pad_token_id)
        future, compiled = start_generate(fast, kwargs, batch_size=1, total_tokens=encoded["input_ids"].shape[1] + 12)
        got = future.result()[0, encoded["input_ids"].shape[1]:].tolist()
        with torch.inference_mode():
            want = fast.model.generate(**kwargs)[0, encoded["input_ids"].shape[1]:].tolist()  # eager generate
        assert compiled
        assert_same_up_to_noise(fast, encoded, 0, want, got)
    finally:
        fast.close()


def greedy(loaded) -> list[int]:
    inputs = loaded.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        return loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()


def test_int8_quantize_push_download_load_gives_the_same_tokens(monkeypatch, tmp_path):
    """The Quantize tab's path for torchao_int8: saved as safetensors with the torchao config, measured, carded,
    pushed (tests/support/hub_server.py), downloaded and loaded back, also straight through transformers."""
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    from quant.hub import push_folder
    from quant.quantize import quantize
    from tests.support.hub_server import FakeHub

    folder = tmp_path / "int8"
    result = quantize(LLAMA, method="torchao_int8", out_dir=folder)
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "torchao" and config["quant_type"]["default"]["_type"] == "Int8WeightOnlyConfig"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert result.kernel == "Linear[Int8Tensor]" and result.quantized_bytes < 0.75 * result.original_bytes
    assert "close to the original" in result.quality["verdict"]
    card = (folder / "README.md").read_text()
    assert "quantized with **torchao int8 weight-only**" in card and "| torchao_config | Int8WeightOnlyConfig |" in card
    assert "- torchao\n- int8\n- 8-bit" in card and "torchao 0.18" in card and "pip install torchao" in card

    direct = greedy(load_model(LoadRequest(model=LLAMA, mode="torchao_int8")))  # quantized at load time
    assert greedy(load_model(LoadRequest(model=str(folder), mode="torchao_int8"))) == direct
    with FakeHub(tokens={"hf_writer_0123456789": "alice"}) as hub:
        hub.patch_client(monkeypatch, tmp_path / "hf_home")
        push_folder(folder, "alice/tiny-int8", token="hf_writer_0123456789")
        downloaded = snapshot_download("alice/tiny-int8", token="hf_writer_0123456789", cache_dir=tmp_path / "dl")
        reloaded = load_model(LoadRequest(model=downloaded, mode="torchao_int8"))
        assert reloaded.report.linear_layers == {"Linear[Int8Tensor]": 28, "Linear": 1}
        assert greedy(reloaded) == direct
        model = AutoModelForCausalLM.from_pretrained("alice/tiny-int8", token="hf_writer_0123456789",
                                                     device_map="cpu")  # as the card says
        inputs = reloaded.tokenizer(PROMPTS[0], return_tensors="pt")
        assert model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist() == direct
        assert hub.server_errors == []
    with pytest.raises(UnsupportedModeError, match="already quantized with torchao .torchao_int8.*mode torchao_int8"):
        check_mode("torchao_int4", QuantOptions(), checkpoint_quantization=config, on_cuda=False)


def test_fp8_is_refused_on_the_cpu_before_anything_loads(monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    for activation in ("none", "dynamic"):
        with pytest.raises(UnsupportedModeError, match=r"fp8 needs a GPU with fp8 support: compute capability 8\.9 "
                                                       r"or newer .*placed on the CPU") as refused:
            load_model(LoadRequest(model=LLAMA, mode="fp8", options=QuantOptions(fp8_activation=activation),
                                   device_map="cpu"))
        assert "torchao_int8" in refused.value.hint


def test_fp8_is_refused_on_a_gpu_older_than_ada(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    with pytest.raises(UnsupportedModeError, match=r"compute capability 8\.9 or newer .* this GPU has compute "
                                                   r"capability 8\.0"):
        check_mode("fp8", QuantOptions(), checkpoint_quantization=None, on_cuda=True)
    assert check_mode("torchao_int4", QuantOptions(torchao_group_size="256"), checkpoint_quantization=None,
                      on_cuda=True) == []  # tinygemm runs from Ampere, group size 256 included
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100
    assert check_mode("fp8", QuantOptions(fp8_activation="dynamic"), checkpoint_quantization=None, on_cuda=True) == []


def test_what_the_cpu_cannot_do_is_refused_with_what_would_work(tmp_path):
    from quant.quantize import quantize

    with pytest.raises(UnsupportedModeError, match="group sizes 32, 64, 128; 256 runs on a GPU only"):
        load_model(LoadRequest(model=LLAMA, mode="torchao_int4", options=QuantOptions(torchao_group_size="256"),
                               device_map="cpu"))
    if not torch.cuda.is_available():  # Quantize writes on the GPU where there is one
        with pytest.raises(QuantError, match="int4 checkpoints are written on a CUDA GPU"):
            quantize(LLAMA, method="torchao_int4", out_dir=tmp_path / "int4")
        with pytest.raises(QuantError, match="Writing fp8 checkpoints needs a GPU with fp8 support"):
            quantize(LLAMA, method="fp8", out_dir=tmp_path / "fp8")
        assert not (tmp_path / "int4").exists() and not (tmp_path / "fp8").exists()
    # an int4 checkpoint written on a GPU is in the GPU kernel's layout
    gpu_int4 = {"quant_method": "torchao", "quant_type": {"default": {
        "_type": "Int4WeightOnlyConfig", "_version": 2, "_data": {
            "group_size": 64, "int4_packing_format": {"_type": "Int4PackingFormat", "_data": "TILE_PACKED_TO_4D"}}}}}
    method = METHODS["torchao_int4"]
    assert method.loads_checkpoint(gpu_int4) and not METHODS["torchao_int8"].loads_checkpoint(gpu_int4)
    assert method.resolve(QuantOptions(), gpu_int4, False).torchao_group_size == "64"
    assert method.bytes_per_weight(gpu_int4) == 0.5 + 4 / 64
    with pytest.raises(UnsupportedModeError, match="packed for PyTorch's GPU int4 kernel .* no CPU kernel"):
        check_mode("torchao_int4", QuantOptions(), checkpoint_quantization=gpu_int4, on_cuda=False)
    fp8_dynamic = {"quant_method": "torchao", "quant_type": {"default": {
        "_type": "Float8DynamicActivationFloat8WeightConfig", "_data": {}}}}
    assert METHODS["fp8"].resolve(QuantOptions(), fp8_dynamic, True).fp8_activation == "dynamic"
    with pytest.raises(UnsupportedModeError, match="fp8 needs a GPU"):
        check_mode("fp8", QuantOptions(), checkpoint_quantization=fp8_dynamic, on_cuda=False)


def test_options_are_cli_flags_and_card_tags():
    from quant.cli import build_parser

    args = build_parser().parse_args(["load", LLAMA, "--mode", "torchao_int4", "--torchao-group-size", "32"])
    assert args.torchao_group_size == "32"
    args = build_parser().parse_args(["load", LLAMA, "--mode", "fp8", "--fp8-activation", "dynamic"])
    assert args.fp8_activation == "dynamic"
    assert METHODS["torchao_int4"].card_tags({}) == ["torchao", "int4", "4-bit"]
    assert METHODS["fp8"].card_tags({}) == ["torchao", "fp8", "8-bit"]
    assert {"torchao_int8", "torchao_int4", "fp8"} <= set(
        name for name, m in METHODS.items() if m.quantize_label)
    assert Path(METHODS["torchao_int4"].output_label(None)) == Path("torchao-int4wo-g128")


def test_the_gpu_configs_are_what_the_gpu_kernels_take():
    """Built here without a GPU (torchao builds configs anywhere): the GPU's int4 layout is tinygemm's, fp8 per row;
    the estimate reads their group size; none changes Inductor's settings process-wide."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow

    int4 = METHODS["torchao_int4"].config(QuantOptions(torchao_group_size="256"), None, on_cuda=True)
    record = int4.to_dict()
    assert METHODS["torchao_int4"].report_record(record, QuantOptions())["int4_packing_format"] == "tile_packed_to_4d"
    assert METHODS["torchao_int4"].bytes_per_weight(record) == 0.5 + 4 / 256
    for activation, kind in (("none", Float8WeightOnlyConfig), ("dynamic", Float8DynamicActivationFloat8WeightConfig)):
        config = METHODS["fp8"].config(QuantOptions(fp8_activation=activation), None, on_cuda=True).quant_type
        assert isinstance(config, kind) and not config.set_inductor_config
        assert all(isinstance(g, PerRow) for g in (config.granularity if activation == "dynamic"
                                                    else [config.granularity]))
    assert METHODS["fp8"].config(QuantOptions(), {"quant_method": "torchao", "quant_type": {
        "default": {"_type": "Float8WeightOnlyConfig"}}}, on_cuda=True) is None  # the checkpoint's own config
