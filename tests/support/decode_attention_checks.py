"""The checks of tests/unit/test_decode_attention.py, run in a process of their own with TRITON_INTERPRET=1 set
before triton is imported (Triton's own library functions, the kernel's reductions, run in its interpreter only then):
`python -m tests.support.decode_attention_checks` prints one JSON object, each check's name with "ok" or its
traceback. Each check compares quant.decode_attention's kernel with attention computed in torch over the whole cache
with the same mask."""

from __future__ import annotations

import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from tests.support.interpreter_checks import report  # noqa: E402

import torch  # noqa: E402

from quant import decode_attention  # noqa: E402


def reference(query, key, value, allowed, scale):
    """Attention over every slot, masked: [rows, kv heads, groups, dim]."""
    scores = torch.matmul(query.double(), key.double().transpose(-1, -2)) * scale  # [rows, kv, groups, slots]
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), value.double()).float()


def random_case(rows, kv_heads, groups, slots, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, kv_heads, n, dim, generator=generator) for n in (groups, slots, slots))


def ragged_mask(slots, starts, ends):
    position = torch.arange(slots)
    return torch.stack([(position >= s) & (position < e) for s, e in zip(starts, ends)])


def close(got, want):
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


KERNEL_CASES = {  # name: (rows, kv heads, groups, slots, head size, splits)
    # Llama-3's grouping; 200 slots: the last chunk partly outside the cache
    "grouped-200-slots": (3, 2, 4, 200, 64, 2),
    # no grouping, a head size that is not a power of two, more splits than needed
    "ungrouped-head-80": (2, 1, 1, 130, 80, 3),
    # a group that is not a power of two, one chunk, one split
    "group-of-7": (1, 2, 7, 64, 32, 1),
}


CONFIGS = {  # the launch settings' variants that change what the kernel computes where (the rest only its speed)
    "": decode_attention.KernelConfig(),
    ", chunks loaded whole": decode_attention.KernelConfig(masked_loads=False),
    ", chunks of 16": decode_attention.KernelConfig(block=16),
    ", chunks of 128 loaded whole": decode_attention.KernelConfig(block=128, masked_loads=False),
}


def masked_attention(rows, kv_heads, groups, slots, dim, splits, config):
    query, key, value = random_case(rows, kv_heads, groups, slots, dim, seed=slots)
    starts = [0, slots // 2, 5][:rows]  # a full row, left padding that skips whole chunks, a start inside a chunk
    ends = [slots, slots - 3, 40][:rows]  # an end inside the last chunk, a row that stops early
    allowed = ragged_mask(slots, starts, ends)
    got = decode_attention.decode_attention_eagerly(query, key, value, allowed, dim ** -0.5, splits=splits,
                                                    config=config)
    assert got.shape == (rows, kv_heads, groups, dim)
    close(got, reference(query, key, value, allowed, dim ** -0.5))


def refused_slots_weigh_nothing(config):
    """NaN in every slot a row may not attend to (before and after its span, a hole inside an attended chunk, the
    gap before a lone slot far from the rest): none reaches the output, whether the kernel skips them or loads and
    zeroes them (a masked product of a NaN would still be NaN)."""
    query, key, value = random_case(2, 2, 4, 256, 64, seed=1)
    allowed = ragged_mask(256, [100, 0], [140, 3])
    allowed[0, 120] = False
    allowed[1, 200] = True
    hidden = ~allowed[:, None, :, None].expand_as(key)
    clean_key, clean_value = key.clone(), value.clone()
    key[hidden], value[hidden] = float("nan"), float("nan")
    for splits in (1, 2, 3):  # a split whose share of the span is empty, or holds only refused slots
        got = decode_attention.decode_attention_eagerly(query, key, value, allowed, 0.125, splits=splits,
                                                        config=config)
        assert not got.isnan().any()
        close(got, reference(query, clean_key, clean_value, allowed, 0.125))


def chunk_bounds():
    """The span of chunks each row's loop walks: from the chunk of its first allowed slot to that of its last."""
    allowed = ragged_mask(200, [0, 70, 199, 64], [200, 130, 200, 64])  # whole, inside, the last slot, none
    bounds = decode_attention.chunk_bounds(allowed, 64).tolist()
    assert bounds == [[0, 4], [1, 3], [3, 4], [3, 3]], bounds


def one_mask_row_for_every_row():
    query, key, value = random_case(3, 1, 4, 96, 32, seed=2)
    allowed = ragged_mask(96, [10], [90])
    got = decode_attention.decode_attention_eagerly(query, key, value, allowed, 0.2)
    close(got, reference(query, key, value, allowed.expand(3, -1), 0.2))


def the_op_gives_the_kernels_result():
    """The custom op (what the compiled decode step calls), called eagerly: Triton's interpreter cannot run under
    torch.compile's fake tensors, so tracing it is tested on a GPU (tests/gpu/test_gpu_fastpath.py)."""
    query, key, value = random_case(2, 2, 4, 128, 32, seed=3)
    allowed = ragged_mask(128, [0, 70], [128, 100])
    got = decode_attention.decode_attention_op()(query, key, value, allowed, 0.3)
    close(got, reference(query, key, value, allowed, 0.3))


CHECKS = {**{f"kernel {name}{variant}": (lambda case=case, config=config: masked_attention(*case, config))
             for name, case in KERNEL_CASES.items() for variant, config in CONFIGS.items()},
          **{f"refused slots weigh nothing{variant}": (lambda config=config: refused_slots_weigh_nothing(config))
             for variant, config in CONFIGS.items()},
          "chunk bounds": chunk_bounds,
          "one mask row for every row": one_mask_row_for_every_row,
          "the op gives the kernel's result": the_op_gives_the_kernels_result}


if __name__ == "__main__":
    report(CHECKS)
