"""Sibling projections fused into one matmul (quant.fused_projections) compute what the separate layers computed, in
the same state_dict and memory, from any thread, eagerly and on the compiled decode path with one compiled layer for
all layers; on the CPU the default leaves them alone. bf16 Linear and int4pack layers alike."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from quant.fused_projections import FusedMember, fuse_projections, fusion_wanted, unfuse_projections
from quant.int4pack import Int4PackedLinear, pack_int4_linear
from quant.loader import LoadRequest, load_model
from quant.settings import load_settings
from tests.conftest import LLAMA
from tests.support.fastpath import PROMPTS, greedy_ids, load


def storage_bytes(model: nn.Module) -> int:
    """Bytes of the distinct storages under the model's parameters and buffers (views counted once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers()]}
    return sum(storages.values())


def rtn_int4(loaded) -> None:
    """Every projection of the decoder layers as an Int4PackedLinear (round to nearest, groups of 128)."""
    for layer in loaded.model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if type(module) is not nn.Linear:
                    continue
                w = module.weight.data.float()
                groups = w.reshape(w.shape[0], -1, 128)
                low, high = groups.amin(-1), groups.amax(-1)
                scale = (high - low).clamp(min=1e-8) / 15
                codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).reshape_as(w)
                setattr(parent, name, pack_int4_linear(codes, scale.T, (low + 8 * scale).T, group_size=128,
                                                       bias=None))


@pytest.mark.parametrize("kind", ["fp32", "int4pack"])
def test_fused_layers_keep_their_tokens_state_dict_and_memory_and_unfuse(kind):
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32" if kind == "fp32" else "bf16"))
    if kind == "int4pack":
        rtn_int4(loaded)
    encoded, before, _ = greedy_ids(loaded, PROMPTS[:2], 32)
    state = {key: value.clone() for key, value in loaded.model.state_dict().items()}
    memory = storage_bytes(loaded.model)

    result = fuse_projections(loaded.model)
    layers = len(loaded.model.model.layers)
    assert result.groups == 2 * layers and result.skipped == ()
    assert result.describe() == f"q_proj/k_proj/v_proj and gate_proj/up_proj each one matmul ({2 * layers} groups)"
    attention = loaded.model.model.layers[0].self_attn
    member_type = nn.Linear if kind == "fp32" else Int4PackedLinear
    assert all(isinstance(getattr(attention, name), (FusedMember, member_type)) for name in ("q_proj", "k_proj",
                                                                                            "v_proj"))
    assert isinstance(attention.o_proj, member_type) and not isinstance(attention.o_proj, FusedMember)
    _, after, _ = greedy_ids(loaded, PROMPTS[:2], 32)
    assert after == before
    now = loaded.model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[key], state[key]) for key in state)
    assert storage_bytes(loaded.model) == memory  # the members are views of the group's tensors, nothing copied

    unfuse_projections(loaded.model)
    assert not any(isinstance(m, FusedMember) for m in loaded.model.modules())
    assert type(attention.q_proj) is member_type
    if kind == "int4pack":  # tinygemm takes contiguous scales; a member's were a column slice of the group's
        assert all(m.scales_and_zeros.is_contiguous() for m in loaded.model.modules()
                   if isinstance(m, Int4PackedLinear))
    _, unfused, _ = greedy_ids(loaded, PROMPTS[:2], 32)
    assert unfused == before


def test_threads_sharing_a_fused_group_each_get_their_own_inputs_products():
    """The group hands one member's product to the others by the input tensor's identity: two threads calling the same
    layers with their own inputs (an eager chat beside a batch job) never take each other's."""
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    attention = loaded.model.model.layers[0].self_attn
    members = [attention.q_proj, attention.k_proj, attention.v_proj]
    inputs = [torch.randn(1, 2, attention.q_proj.in_features) for _ in range(2)]
    with torch.no_grad():
        want = [[m(x) for m in members] for x in inputs]
        fuse_projections(loaded.model)
        wrong = []

        def call(thread: int) -> None:
            for _ in range(2000):
                try:
                    got = []
                    for member in members:
                        got.append(member(inputs[thread]))
                        time.sleep(0)  # let the other thread run between the members, as a model's other work does
                except Exception as exc:  # noqa: BLE001 - a member that found another thread's state gone
                    wrong.append(repr(exc))
                    continue
                if not all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want[thread])):
                    wrong.append(thread)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert wrong == []
    assert attention.q_proj._projection_group._pending is None  # the last member of each call cleared it


def test_groups_it_cannot_fuse_stay_as_they_are_with_the_reason():
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    mlp = loaded.model.model.layers[0].mlp
    mlp.up_proj.weight.data = mlp.up_proj.weight.data.to(torch.float64)  # another dtype than its sibling
    result = fuse_projections(loaded.model)
    layers = len(loaded.model.model.layers)
    assert result.groups == 2 * layers - 1
    assert result.skipped == ("gate_proj/up_proj: on different devices or dtypes",)
    assert type(mlp.gate_proj) is nn.Linear and type(mlp.up_proj) is nn.Linear



def test_a_group_whose_fused_product_differs_gets_its_own_tensors_back():
    """A layer whose instance forward someone replaced (its product is not its weight's) fails the load-time check:
    its group keeps the tensors it was loaded with, not views of a concatenation."""
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    attention = loaded.model.model.layers[0].self_attn
    v_proj = attention.v_proj
    v_proj.forward = lambda x: nn.functional.linear(x, v_proj.weight) * 2
    loaded_with = [m.weight for m in (attention.q_proj, attention.k_proj, v_proj)]
    saved = [w.detach().clone() for w in loaded_with]
    result = fuse_projections(loaded.model)
    assert result.skipped == ("q_proj/k_proj/v_proj: the fused product differed from the separate ones",)
    assert result.groups == 2 * len(loaded.model.model.layers) - 1
    assert type(attention.q_proj) is nn.Linear and type(v_proj) is nn.Linear
    members = (attention.q_proj, attention.k_proj, v_proj)
    assert all(m.weight is w and torch.equal(w, s) for m, w, s in zip(members, loaded_with, saved))
    assert len({m.weight.untyped_storage().data_ptr() for m in members}) == 3  # not views of one tensor


def test_torchao_weights_are_not_fused():
    """torchao keeps nn.Linear and swaps its weight for a quantized tensor subclass, which torch.cat does not take: on a
    GPU's compiled path such a model must load and compile as it did, its projections separate."""
    pytest.importorskip("torchao")
    loaded = load_model(LoadRequest(model=LLAMA, mode="torchao_int8"))
    result = fuse_projections(loaded.model)
    assert result.groups == 0 and result.describe() == ""
    assert result.skipped == tuple(f"{group}: weights of a tensor subclass (torchao's quantized tensors), not plain "
                                   "tensors" for group in ("gate_proj/up_proj", "q_proj/k_proj/v_proj"))
    assert not any(isinstance(m, FusedMember) for m in loaded.model.modules())


def test_a_hooked_layer_is_not_fused():
    """A forward hook (a probe, an adapter library) on one member would see the member's slice computed elsewhere."""
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    attention = loaded.model.model.layers[1].self_attn
    attention.k_proj.register_forward_hook(lambda module, args, out: None)
    result = fuse_projections(loaded.model)
    assert result.skipped == ("q_proj/k_proj/v_proj: forward hooks on a layer (they would see one product for all)",)
    assert type(attention.k_proj) is nn.Linear and type(attention.q_proj) is nn.Linear
    assert isinstance(loaded.model.model.layers[0].self_attn.k_proj, FusedMember)


def test_the_compiled_path_runs_fused_with_one_compiled_layer_for_all_and_gives_eager_tokens(monkeypatch):
    for key, value in {"QUANT_COMPILE_BACKEND": "eager", "QUANT_COMPILED_BATCH_SIZES": "1",
                       "QUANT_STATIC_CACHE_TOKENS": "256", "QUANT_FUSE_PROJECTIONS": "on"}.items():
        monkeypatch.setenv(key, value)
    eager = load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)
    encoded, want, compiled = greedy_ids(eager, PROMPTS[:1], 48)
    assert not compiled and not any(isinstance(m, FusedMember) for m in eager.model.modules())
    torch._dynamo.utils.counters.clear()
    fast = load(LoadRequest(model=LLAMA, mode="fp32"), fast=True)
    assert "q_proj/k_proj/v_proj and gate_proj/up_proj each one matmul" in fast.path.describe()
    assert "one compiled decoder layer for all layers" in fast.path.describe()
    _, got, compiled = greedy_ids(fast, PROMPTS[:1], 48)
    assert compiled and got == want
    # the prologue, one decoder layer, the norm and head: the hand-over between members recompiles nothing per layer
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    assert "recompiles" not in torch._dynamo.utils.counters or not torch._dynamo.utils.counters["recompiles"]


def test_by_default_only_a_causal_model_on_gpus_is_fused(monkeypatch):
    monkeypatch.delenv("QUANT_FUSE_PROJECTIONS", raising=False)
    settings = load_settings()
    assert fusion_wanted(settings, "causal", {"cuda:0"}) and fusion_wanted(settings, "causal", {"cuda:0", "cuda:1"})
    assert not fusion_wanted(settings, "causal", {"cpu"}) and not fusion_wanted(settings, "causal", {"cuda:0", "cpu"})
    assert not fusion_wanted(settings, "seq2seq", {"cuda:0"})  # cross-attention feeds k/v another input than q
    monkeypatch.setenv("QUANT_FUSE_PROJECTIONS", "on")
    assert fusion_wanted(load_settings(), "causal", {"cpu"})
    monkeypatch.setenv("QUANT_FUSE_PROJECTIONS", "off")
    assert not fusion_wanted(load_settings(), "causal", {"cuda:0"})
