"""The compare run on the tiny models: every number present and plausible, the JSON schema, a failing row."""

from __future__ import annotations

import json

import pytest

from quant.compare import Comparison, compare, highlight_differences, parse_mode_specs, relative_to_baseline
from quant.methods import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA, T5

PROMPTS = ["The with statement is used to", "A class definition defines"]


@pytest.fixture(scope="module")
def llama_results(gptq_llama_dir):
    specs = parse_mode_specs(LLAMA, f"bf16,int8,nf4,gptq:{gptq_llama_dir},gptq:/no/such/folder")
    registry = ModelRegistry(max_models=2)
    rows = list(compare(LLAMA, specs, registry=registry, prompts=PROMPTS, batch_size=2, new_tokens=8,
                        answer_tokens=12))
    assert registry.loaded() == []  # every mode was unloaded after its measurement
    # one load per mode: the bf16 reference, first in the list, is measured as its row without a second load
    assert len({id(report) for report in registry.history()}) == 4
    return rows


def test_every_number_is_present_and_plausible(llama_results):
    by = {r.label: r for r in llama_results}
    ok = [r for r in llama_results if not r.error]
    assert len(ok) == 4
    for r in ok:
        assert r.footprint_bytes > 0 and r.load_seconds > 0 and r.ram_bytes > 0
        assert r.time_to_first_token_s > 0 and r.decode_tokens_per_s > 0 and r.batch_tokens_per_s > 0
        assert r.perplexity > 1 and len(r.answers) == len(PROMPTS) and all(r.answers)
        assert r.peak_gpu_bytes is None  # no GPU here
    assert by["bf16"].footprint_bytes > by["int8"].footprint_bytes > by["nf4"].footprint_bytes
    assert abs(by["int8"].perplexity / by["bf16"].perplexity - 1) < 0.02
    assert by["nf4"].perplexity / by["bf16"].perplexity < 1.15
    assert "Linear4bit" in by["nf4"].linear_layers and "Linear8bitLt" in by["int8"].linear_layers


def test_every_mode_is_measured_against_the_bf16_reference(llama_results):
    """The reference (bf16 of the same model) was written once, before the modes; each row carries its metrics."""
    by = {r.label: r for r in llama_results if not r.error}
    for r in by.values():
        assert r.reference == "bf16" and (r.quality_window, r.quality_stride, r.quality_positions) == (512, 512, 4088)
        assert r.reference_perplexity == by["bf16"].perplexity and r.quality_error is None
        assert len(r.kl_per_window) == 8 and r.verdict.startswith(f"top-1 agreement {r.top1_agreement:.1f}%")
    bf16 = by["bf16"]  # the reference against itself
    assert bf16.kl_mean == 0 and bf16.top1_agreement == 100 and bf16.perplexity_ratio == 1 and bf16.dp_p1 == 0
    assert bf16.verdict.endswith("close to bf16")
    assert 0 < by["int8"].kl_mean < by["nf4"].kl_mean and by["int8"].top1_agreement > by["nf4"].top1_agreement
    gptq = next(label for label in by if label.startswith("gptq:"))
    for label in ("int8", "nf4", gptq):
        r = by[label]
        assert r.kl_p99 >= r.kl_mean > 0 and r.dp_p1 < 0 and 0 < r.top1_agreement < 100
        assert r.perplexity_ratio == pytest.approx(r.perplexity / bf16.perplexity)
    failed = llama_results[-1]
    assert failed.error and failed.kl_mean is None and failed.verdict == ""


def test_without_a_16bit_mode_the_reference_is_loaded_for_itself_and_released():
    registry = ModelRegistry(max_models=1)
    rows = list(compare(LLAMA, parse_mode_specs(LLAMA, "fp32"), registry=registry, prompts=PROMPTS[:1],
                        batch_size=1, new_tokens=2, answer_tokens=2))
    assert registry.loaded() == []
    assert rows[0].reference == "bf16" and rows[0].verdict.endswith("close to bf16") and rows[0].kl_mean > 0


def test_every_row_says_which_generation_path_it_measured(llama_results):
    for r in (r for r in llama_results if not r.error):
        assert r.generation_path.startswith("eager (CPU")  # CPU: the compiled path is off, with its reason
        assert r.compile_seconds == 0
        # the batch column runs where a Batch job would: on transformers' continuous batching
        assert r.batch_engine == "continuous batching" and r.generation_path.endswith("; b2: continuous batching")


@pytest.mark.parametrize("on_demand", ["1", "0"])
def test_the_batch_column_of_a_compiled_model_compiles_its_batch_size_as_a_batch_job_would(on_demand, monkeypatch,
                                                                                            tmp_path):
    """With the compiled path (here on the CPU) and padded batches, the batch column runs where a Batch job would: its
    batch size compiled for it by default (QUANT_COMPILE_BATCH_ON_DEMAND), eagerly with the setting off."""
    for key, value in {"QUANT_FAST_GENERATION": "all", "QUANT_COMPILE_BACKEND": "eager", "QUANT_BATCH_ENGINE": "padded",
                       "QUANT_COMPILED_BATCH_SIZES": "1", "QUANT_KERNEL_CACHE": str(tmp_path),
                       "QUANT_COMPILE_BATCH_ON_DEMAND": on_demand}.items():
        monkeypatch.setenv(key, value)
    [row] = list(compare(LLAMA, parse_mode_specs(LLAMA, "fp32"), registry=ModelRegistry(max_models=1),
                         prompts=PROMPTS, batch_size=3, new_tokens=4, answer_tokens=4, eval_text=""))
    assert not row.error and row.batch_tokens_per_s > 0
    want = "compiled (b1, b3)" if on_demand == "1" else "compiled (b1), eager (b3: not a compiled batch size"
    assert row.generation_path.startswith(want), row.generation_path


def test_a_measured_mode_is_freed_before_the_next_one_loads():
    """Memory is what a compare is short of: once a row is out, nothing may still hold that mode's model (the next
    mode's load and peak memory would pay for both)."""
    import gc

    from quant.loader import LoadedModel

    def loaded_models() -> dict[int, LoadedModel]:
        gc.collect()
        return {id(o): o for o in gc.get_objects() if isinstance(o, LoadedModel)}

    before = loaded_models()  # other tests' models may still be loaded: only this compare's count
    rows = compare(LLAMA, parse_mode_specs(LLAMA, "fp32,bf16"), registry=ModelRegistry(max_models=2),
                   prompts=PROMPTS, batch_size=2, new_tokens=4, answer_tokens=4, eval_text="")
    first = next(rows)
    assert not first.error
    assert [m.label for key, m in loaded_models().items() if key not in before] == []
    assert not next(rows).error


def test_placement_applies_to_every_mode():
    """max_memory reaches each mode's load: here one that names a GPU on a CPU-only machine is refused per row."""
    rows = list(compare(LLAMA, parse_mode_specs(LLAMA, "bf16,nf4"), registry=ModelRegistry(max_models=1),
                        prompts=PROMPTS, max_memory="0=1GiB", eval_text=""))
    assert len(rows) == 2 and all(r.error.startswith("max_memory names GPU 0, but this machine has no GPU") for r in rows)


def test_a_failing_mode_is_reported_in_its_row(llama_results):
    failed = llama_results[-1]
    assert failed.label == "gptq:/no/such/folder" and "No such folder" in failed.error
    assert failed.footprint_bytes is None and failed.answers == []


def test_relative_numbers_and_difference_highlighting(llama_results):
    relative = relative_to_baseline(llama_results)
    assert relative["bf16"]["memory"] == 1.0
    assert 0.3 < relative["nf4"]["memory"] < 0.7
    assert highlight_differences("a b c", "a x c") == "a <mark>x</mark> c"


def test_json_schema(llama_results, tmp_path):
    data = Comparison(LLAMA, PROMPTS, 2, 8, "cpu", llama_results).to_json()
    assert data["schema"] == 2 and data["model"] == LLAMA and data["prompts"] == PROMPTS
    quality = data["quality"]
    assert (quality["reference"], quality["window"], quality["stride"], quality["positions"]) == ("bf16", 512, 512,
                                                                                                  4088)
    assert quality["thresholds"] == {"close": {"top1": 95.0, "kl": 0.02}, "noticeable": {"top1": 85.0, "kl": 0.1}}
    row = data["results"][0]
    for key in ("label", "mode", "model", "error", "footprint_bytes", "load_seconds", "ram_bytes", "peak_gpu_bytes",
                "time_to_first_token_s", "decode_tokens_per_s", "batch_size", "batch_tokens_per_s", "perplexity",
                "linear_layers", "attn_implementation", "generation_path", "answers", "reference",
                "reference_perplexity", "perplexity_ratio", "kl_mean", "kl_p99", "top1_agreement", "dp_mean", "dp_p1",
                "kl_per_window", "quality_window", "quality_stride", "verdict"):
        assert key in row
    assert data["results"][1]["kl_mean"] > 0 and data["results"][1]["verdict"]
    json.dumps(data)  # serializable as it is


def test_seq2seq_compare_has_no_perplexity_but_answers():
    rows = list(compare(T5, parse_mode_specs(T5, "bf16,int8"), registry=ModelRegistry(), prompts=["reverse: a b c"],
                        batch_size=2, new_tokens=4))
    assert all(not r.error and r.perplexity is None and r.answers for r in rows)
    # int8 leaves T5's float32 `wo` projections as they are, and the row says so (the Compare JSON carries it)
    bf16, int8 = rows
    assert bf16.kept == [] and any(g["reason"] == "keep_fp32" and g["patterns"] == ["wo"] for g in int8.kept)
    assert all(r.batch_engine.startswith("padded batches (seq2seq") for r in rows)


def test_all_is_every_mode_that_runs_here_and_each_method_decides():
    """`--modes all` (and the Compare tab's button) lists the load-time modes whose own check passes on the device:
    on the CPU fp8 refuses (it needs a GPU of compute capability 8.9), the rest of the load-time modes run."""
    from quant.errors import UnsupportedModeError
    from quant.methods import check_mode, load_time_methods, modes_that_run_here

    here = modes_that_run_here(on_cuda=False)
    assert "fp8" not in here and {"bf16", "int8", "nf4", "torchao_int8", "torchao_int4", "hqq"} <= set(here)
    for name in load_time_methods():
        if name not in here:
            with pytest.raises(UnsupportedModeError):
                check_mode(name, QuantOptions(), checkpoint_quantization=None, on_cuda=False)
    labels = [s.label for s in parse_mode_specs(LLAMA, "bf16,all,eager:bf16,gptq:/ckpt", on_cuda=False)]
    assert labels == ["bf16", *[m for m in here if m != "bf16"], "eager:bf16", "gptq:/ckpt"]


def test_cli_compare_refuses_an_unknown_mode_before_loading_anything(capsys):
    """(`quant compare --json -` as a process, with its quality fields: tests/unit/test_cli.py's JSON test.)"""
    from quant.cli import main
    from quant.registry import default_registry

    loads = len(default_registry().history())
    assert main(["compare", LLAMA, "--modes", "bf16,nf4,int3", "--batch-size", "2", "--new-tokens", "4",
                 "--json", "-"]) == 2
    captured = capsys.readouterr()
    assert "Unknown mode 'int3'" in captured.err and captured.out == ""
    assert len(default_registry().history()) == loads


@pytest.mark.timeout(120)
def test_a_mode_whose_generation_fails_fails_its_row_at_once_and_the_others_are_measured(tmp_path):
    """A checkpoint whose tokenizer has tokens past its embedding table: its generation fails inside `generate`.
    Its row carries the error (the decode measurement used to wait forever on a stream nothing ended); the next mode
    is still measured."""
    import shutil

    from transformers import AutoTokenizer

    from quant.compare import ModeSpec
    from quant.methods import Mode, QuantOptions
    from quant.source import resolve_location

    broken = tmp_path / "tokenizer-past-the-embeddings"
    shutil.copytree(resolve_location(LLAMA)[0], broken)
    tokenizer = AutoTokenizer.from_pretrained(broken)
    tokenizer.add_tokens(["<brand-new-token>"])
    tokenizer.save_pretrained(broken)
    specs = [ModeSpec("broken bf16", Mode.BF16, str(broken), QuantOptions()),
             *parse_mode_specs(LLAMA, "bf16")]
    rows = list(compare(LLAMA, specs, registry=ModelRegistry(max_models=2), prompts=["<brand-new-token> with"],
                        batch_size=2, new_tokens=4, answer_tokens=4))
    assert [r.label for r in rows] == ["broken bf16", "bf16"]
    assert "embedding table has" in rows[0].error and "tokenizer does not match" in rows[0].error
    assert not rows[1].error and rows[1].decode_tokens_per_s > 0
