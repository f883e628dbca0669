"""GPTQ layers repacked for PyTorch's int4 kernel (quant.int4pack) compute what gptqmodel's torch kernel computes, up
to bf16 rounding, for plain and act-order checkpoints; a layer that cannot be repacked stays as loaded, with the
reason; checkpoints the kernel cannot run are refused before loading. On the CPU this runs the kernel's CPU twin
(`_weight_int4pack_mm_for_cpu`); tests/gpu/test_gpu_fastpath.py runs the CUDA kernel compiled."""

from __future__ import annotations

import pytest
import torch

from quant.errors import UnsupportedModeError
from quant.int4pack import Int4PackedLinear, repack_model
from quant.loader import LoadRequest, load_model
from quant.methods import Mode, QuantOptions, check_mode
from tests.conftest import CALIBRATION_TEXT, LLAMA

PROMPT = "def fibonacci(n):\n    "
pytestmark = pytest.mark.usefixtures("eager_dequantization")


@pytest.fixture(scope="module")
def act_order_dir(tmp_path_factory):
    """The demo Llama in 4-bit GPTQ with act-order (desc_act) and group size 32: its groups are scattered over the
    input features, which the int4 kernel only takes after a permutation."""
    from quant.gptq import GPTQRecipe, quantize_gptq
    from quant.source import resolve_location

    out = tmp_path_factory.mktemp("gptq-act") / "tiny-llama-gptq-act-order-g32"
    recipe = GPTQRecipe(bits=4, group_size=32, num_samples=16, seq_len=128, desc_act=True)
    return quantize_gptq(resolve_location(LLAMA)[0], recipe, [CALIBRATION_TEXT.read_text()], out).out_dir


def load(folder, backend: str):
    return load_model(LoadRequest(str(folder), mode="gptq", device_map="cpu",
                                  options=QuantOptions(gptq_backend=backend)))


def next_token_logits(loaded, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return loaded.model(ids).logits.float()


@pytest.mark.parametrize("checkpoint", ["plain_g128", "act_order_g32"])
def test_repacked_model_computes_what_the_torch_kernel_computes(checkpoint, gptq_llama_dir, act_order_dir):
    folder = gptq_llama_dir if checkpoint == "plain_g128" else act_order_dir
    reference, repacked = load(folder, "gptq_torch"), load(folder, "gptq_int4pack")
    assert repacked.report.linear_layers == {"Int4PackedLinear": 28, "Linear": 1}  # 4 x 7 projections; the head
    assert reference.report.linear_layers["TorchLinear"] == 28
    assert repacked.report.dtype == "bfloat16" and not repacked.report.warnings
    assert repacked.report.quantization["backend"] == "gptq_int4pack"
    assert repacked.report.parameters == reference.report.parameters
    orders = [m.input_order for m in repacked.model.modules() if isinstance(m, Int4PackedLinear)]
    assert all(o is None for o in orders) == (checkpoint == "plain_g128")  # act-order layers carry a permutation

    ids = reference.tokenizer(PROMPT, return_tensors="pt").input_ids
    expected, got = next_token_logits(reference, ids), next_token_logits(repacked, ids)
    assert (got - expected).norm() / expected.norm() < 0.03
    assert torch.equal(got.argmax(-1), expected.argmax(-1))

    # Greedy: the same tokens, or a first difference where the reference's top two were within bf16 rounding.
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=reference.tokenizer.pad_token_id)
    want = reference.model.generate(ids, **kwargs)[0]
    have = repacked.model.generate(ids, **kwargs)[0]
    if not torch.equal(want, have):
        split = next(i for i, (a, b) in enumerate(zip(want.tolist(), have.tolist())) if a != b)
        top = next_token_logits(reference, want[None, :split])[0, -1].topk(2).values
        assert top[0] - top[1] < 8 * torch.finfo(torch.bfloat16).eps * top[0].abs(), (want, have)


def test_a_layer_that_cannot_be_repacked_stays_as_loaded(gptq_llama_dir):
    loaded = load(gptq_llama_dir, "gptq_torch")
    layers = loaded.model.model.layers
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    # Break one layer's group index the way a malformed checkpoint would: every input feature in group 0 (of 3).
    broken = layers[2].mlp.down_proj
    broken.g_idx.zero_()
    before = next_token_logits(loaded, ids)

    result = repack_model(loaded.model)

    assert result.left > 0 and result.layers + result.left == 28
    assert "model.layers.2.mlp.down_proj" in result.reason and "group" in result.reason
    assert isinstance(layers[0].self_attn.q_proj, Int4PackedLinear)
    assert layers[2].mlp.down_proj is broken and type(layers[3].mlp.down_proj).__name__ == "TorchLinear"
    after = next_token_logits(loaded, ids)
    assert (after - before).norm() / before.norm() < 0.03  # the mixed model still computes the same function


@pytest.mark.parametrize(("bits", "group_size"), [(8, 128), (4, 1024), (4, -1)])
def test_checkpoints_the_int4_kernel_cannot_run_are_refused_before_loading(bits, group_size):
    saved = {"quant_method": "gptq", "bits": bits, "group_size": group_size}
    with pytest.raises(UnsupportedModeError, match="int4 kernel runs 4-bit GPTQ with group size"):
        check_mode(Mode.GPTQ, QuantOptions(gptq_backend="gptq_int4pack"), checkpoint_quantization=saved,
                   on_cuda=False)
    check_mode(Mode.GPTQ, QuantOptions(gptq_backend="gptq_torch"), checkpoint_quantization=saved, on_cuda=False)


@pytest.mark.parametrize(("saved", "kernel"), [
    ({"bits": 4, "group_size": 128}, "gptq_int4pack"),
    ({"bits": 4, "group_size": 32}, "gptq_int4pack"),
    ({"bits": 4, "group_size": -1}, "gptq_torch"),  # one group per row: the int4 kernel takes 32-256
    ({"bits": 8, "group_size": 128}, "gptq_torch"),
    ({"bits": 3, "group_size": 128}, "gptq_torch"),
])
def test_the_default_gptq_kernel_is_the_int4_one_where_it_runs(saved, kernel):
    gptq = Mode.GPTQ.method
    assert gptq.default_backend({"quant_method": "gptq", **saved}) == kernel
    assert gptq.resolve(QuantOptions(), saved, on_cuda=False).gptq_backend == kernel
    chosen = QuantOptions(gptq_backend="gptq_triton")
    assert gptq.resolve(chosen, saved, on_cuda=True) is chosen  # a choice is kept
    assert Mode.NF4.method.resolve(QuantOptions(), saved, on_cuda=False).gptq_backend is None
