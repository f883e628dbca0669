"""Next-token quality against the 16-bit reference (quant.quality), checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant.gptq import builtin_textsets
from quant.loader import LoadRequest, load_model
from quant.metrics import perplexity
from quant.quality import Reference, measure_quality, verdict, window_starts, write_reference
from tests.conftest import LLAMA
from tests.support.rtn import rtn_model

HELD_OUT = builtin_textsets()["python-reference-heldout"].read_text()


@pytest.fixture(scope="module")
def bf16():
    return load_model(LoadRequest(model=LLAMA, mode="bf16"))


@pytest.fixture(scope="module")
def reference(bf16, tmp_path_factory) -> Reference:
    """The bf16 reference on the Compare recipe: 4096 tokens, windows of 512, stride 512."""
    return write_reference(bf16, HELD_OUT, tmp_path_factory.mktemp("ref"), label="bf16")


@pytest.fixture(scope="module")
def rtn4(reference):
    return measure_quality(rtn_model(4, 128), reference)


def test_reference_is_on_disk_in_float16_on_the_perplexity_windows(reference, bf16):
    assert (reference.window, reference.stride) == (512, 512)  # the model's context (512) and no overlap
    assert reference.starts == list(range(0, 4096, 512)) and reference.positions == 8 * 511
    stored = np.load(reference.logprobs_path, mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == (8 * 511, bf16.model.config.vocab_size)
    assert Reference.open(reference.folder) == reference
    # rows of window 1 are the log-softmax of that window's logits, computed here directly
    ids = torch.from_numpy(np.load(reference.ids_path))
    with torch.inference_mode():
        logits = bf16.model(input_ids=ids[512:1024].unsqueeze(0)).logits[0, :-1].double()
    direct = torch.log_softmax(logits, -1)
    for pos in (0, 100, 510):
        row = torch.from_numpy(np.array(stored[511 + pos], dtype=np.float64))
        top = direct[pos].topk(20).indices  # the likely tokens: float16 keeps them to ~1e-3
        assert torch.allclose(row[top], direct[pos][top], atol=2e-2, rtol=2e-3)


def test_a_mode_against_itself_is_identical(reference, bf16):
    q = measure_quality(bf16, reference)
    assert q.kl_mean == 0 and q.kl_p99 == 0 and q.top1_agreement == 100.0
    assert q.dp_mean == 0 and q.dp_p1 == 0 and q.positions == reference.positions
    assert len(q.kl_per_window) == 8 and verdict(q.top1_agreement, q.kl_mean).endswith("close to bf16")


def test_fp32_is_close_to_bf16(reference):
    q = measure_quality(load_model(LoadRequest(model=LLAMA, mode="fp32")), reference)
    assert 0 < q.kl_mean < 0.005 and q.top1_agreement > 97 and abs(q.dp_mean) < 1e-3
    assert verdict(q.top1_agreement, q.kl_mean).endswith(": close to bf16")


def test_round_to_nearest_is_farther_than_gptq(reference, rtn4, gptq_llama_dir):
    gptq = measure_quality(load_model(LoadRequest(model=str(gptq_llama_dir), mode="gptq")), reference)
    assert gptq.kl_mean < rtn4.kl_mean and gptq.top1_agreement > rtn4.top1_agreement, (gptq, rtn4)
    assert gptq.kl_p99 < rtn4.kl_p99 and rtn4.dp_mean < 0


def test_every_metric_against_a_direct_computation(bf16, tmp_path):
    """A short text (40 tokens, windows of 16: 15 + 15 + 7 positions), the RTN 4-bit model against bf16, every
    metric recomputed here in float64 from the two models' logits."""
    ref = write_reference(bf16, HELD_OUT, tmp_path, max_tokens=40, window=16)
    assert ref.starts == [0, 16, 32] == window_starts(40, 16) and ref.positions == 37
    mode = rtn_model(4, 128)
    q = measure_quality(mode, ref)
    ids = torch.from_numpy(np.load(ref.ids_path))
    kl, agree, dp, per_window = [], [], [], []
    with torch.inference_mode():
        for start in (0, 16, 32):
            chunk = ids[start : start + 16].unsqueeze(0)
            p = torch.softmax(bf16.model(input_ids=chunk).logits[0, :-1].double(), -1)
            m = torch.softmax(mode.model(input_ids=chunk).logits[0, :-1].double(), -1)
            nxt = chunk[0, 1:]
            window_kl = [float((p[i] * (p[i].log() - m[i].log())).sum()) for i in range(len(nxt))]
            kl += window_kl
            per_window.append(sum(window_kl) / len(window_kl))
            agree += [int(p[i].argmax() == m[i].argmax()) for i in range(len(nxt))]
            dp += [float(m[i, t] - p[i, t]) for i, t in enumerate(nxt)]
    assert len(kl) == 37
    assert q.kl_mean == pytest.approx(np.mean(kl), rel=0.05, abs=1e-4)
    assert q.kl_p99 == pytest.approx(np.percentile(kl, 99), rel=0.05, abs=1e-4)
    assert q.top1_agreement == pytest.approx(100 * np.mean(agree))
    assert q.dp_mean == pytest.approx(np.mean(dp), abs=2e-3)
    assert q.dp_p1 == pytest.approx(np.percentile(dp, 1), abs=5e-3)
    assert q.kl_per_window == pytest.approx(per_window, rel=0.05, abs=1e-4)
    assert q.kl_mean > 0.001  # the comparison means something: the RTN model does differ


def test_perplexity_recipe_is_plain_non_overlapping_windows(bf16, reference):
    """quant.metrics.perplexity = exp(mean NLL of every next token) over non-overlapping 512-token windows; the
    reference file's log-probs of the actual next tokens give the same number (to float16 rounding)."""
    ids = bf16.tokenizer(HELD_OUT, add_special_tokens=False)["input_ids"][:4096]
    nll = []
    with torch.inference_mode():
        for start in range(0, len(ids), 512):
            chunk = torch.tensor(ids[start : start + 512])
            logp = torch.log_softmax(bf16.model(input_ids=chunk.unsqueeze(0)).logits[0, :-1].double(), -1)
            nll += (-logp.gather(-1, chunk[1:].unsqueeze(-1))).squeeze(-1).tolist()
    direct = math.exp(sum(nll) / len(nll))
    measured = perplexity(bf16, HELD_OUT, max_tokens=4096)
    assert measured.tokens == len(nll) == reference.positions
    assert measured.value == pytest.approx(direct, rel=1e-4)
    stored = np.load(reference.logprobs_path, mmap_mode="r")
    stored_ids = np.load(reference.ids_path)
    nxt = np.concatenate([stored_ids[s + 1 : s + 512] for s in reference.starts])
    from_file = math.exp(-stored[np.arange(len(nxt)), nxt].astype(np.float64).mean())
    assert from_file == pytest.approx(direct, rel=2e-3)


def test_verdict_thresholds():
    assert verdict(97.2, 0.012) == "top-1 agreement 97.2%, KL 0.0120: close to bf16"
    assert verdict(96.0, 0.05).endswith("noticeably different from bf16")  # KL over the close threshold
    assert verdict(90.0, 0.01).endswith("noticeably different from bf16")  # agreement under it
    assert verdict(84.9, 0.01).endswith("far from bf16") and verdict(99.0, 0.2, "fp16").endswith("far from fp16")
    assert verdict(None, None) == ""
