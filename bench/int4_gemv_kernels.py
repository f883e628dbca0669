"""The batch-1 4-bit CUDA kernels gptqmodel builds from source, against tinygemm (int4pack's kernel, the batch-1 path
today) and cuBLAS on a 16-bit weight, on the Llama-8B projection shapes at 1-4 rows: GPU time of one call inside a
CUDA graph (weights cycled past the L2 cache, as bench/machete_rows.py measures), and the bandwidth each reaches.

- `bf16`: cuBLAS on a bf16 weight of the same shape (the step's bf16 reference);
- `tinygemm`: `aten._weight_int4pack_mm` on a 4-bit weight in groups of 128 (bf16 activations), packed with 8 inner
  k-tiles as quant.int4pack packs it; `tinygemm_k4`, `tinygemm_k2`: packed with 4 and 2 (the kernel's other layouts);
- `exllamav2`: ExLlamaV2's `gemm_half_q_half` (gptqmodel's build) on a GPTQ checkpoint's tensors (qweight packed along
  the input, zeros in GPTQ's v2 form, fp16 scales, no act-order), fp16 activations;
- `awq_gemv_fast`: llm-awq's `gemv_fast` decode kernel (gptqmodel's AWQ build, `AwqGEMVFastLinear.pack`'s layout) on
  an AWQ weight, fp16 activations (1-7 rows);
- `exllamav2_stream`, `awq_gemv_fast_stream`: the same two built again from gptqmodel's sources with every kernel launch
  on PyTorch's current stream (`build_on_current_stream`): as gptqmodel builds them they launch on the legacy default
  stream, which a CUDA graph captured on PyTorch's stream (the decode step's) does not hold.

Each 4-bit kernel's output is compared with x @ the weight it was given, dequantized in float32 (its largest
difference relative to the largest output: a wrong layout differs by O(1)).

Why: issue 27's GPTQ batch 1 >= 2.5x bf16 needs a 4-bit kernel near the bandwidth limit inside the CUDA-graphed step;
tinygemm reaches 36-40% of it (1.6-1.8 TB/s on an H200), and Marlin, Machete, gemlite and our own Triton GEMV were
slower still (bench/results/machete-rows.md, int4-gemv-rows.md). ExLlamaV2 and llm-awq's gemv_fast are the two batch-1
kernels at hand not yet timed alone (the first run timed them in graphs that did not hold them: the capture is now
checked). Their builds need nvcc; the build times are reported, and a build or kernel that
fails is written in the result instead of its numbers.

    python bench/int4_gemv_kernels.py --out bench/results
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4_dequant_blocks import graph_ms  # noqa: E402 - cuBLAS and tinygemm, which graphs capture
from bench.int4_matmul_rows import SHAPES  # noqa: E402
from bench.int4mm_shapes import GROUP  # noqa: E402
from quant.awq_gemv import build_on_current_stream  # noqa: E402

ROWS = (1, 2, 4)
"""Rows of a decode step (batch 1 is the chat; gemv_fast has kernels for 1-7 rows, its GEMM beyond)."""
LAYERS = 32
"""Llama-8B's decoder layers: a decode step runs each shape once per layer."""
KERNELS = ("tinygemm", "tinygemm_k4", "tinygemm_k2", "exllamav2", "awq_gemv_fast", "exllamav2_stream",
           "awq_gemv_fast_stream")
TINYGEMM = {"tinygemm": 8, "tinygemm_k4": 4, "tinygemm_k2": 2}
"""tinygemm's variants: inner k-tiles of its packed layout."""
OPS = {"exllamav2": "gptqmodel_exllamav2", "awq_gemv_fast": "gptqmodel_awq",
       "exllamav2_stream": "quant_exllamav2_stream", "awq_gemv_fast_stream": "quant_awq_stream"}
"""The torch.ops namespace each kernel is called through."""


def random_quantized(n: int, k: int, generator: torch.Generator):
    """4-bit codes [n, k], zero points and scales [n, k // GROUP] (asymmetric, as AWQ and GPTQ sym=False store
    them), on the CPU."""
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    zeros = torch.randint(0, 16, (n, k // GROUP), generator=generator, dtype=torch.int32)
    scales = (torch.rand(n, k // GROUP, generator=generator) * 0.02 + 0.001).half()
    return codes, zeros, scales


def dequantized(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The weight [n, k] in float32: (code - zero) * scale per group of GROUP inputs."""
    expand = lambda t: t.repeat_interleave(GROUP, dim=1)  # noqa: E731
    return (codes - expand(zeros)).float() * expand(scales).float()


def pack_along(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Eight 4-bit values along `dim` into one int32 (the first in the lowest bits), as GPTQ packs qweight (along the
    inputs) and qzeros (along the outputs)."""
    moved = values.movedim(dim, -1).to(torch.int64)
    grouped = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    packed = (grouped << shifts).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.movedim(-1, dim).contiguous()


def gptq_tensors(codes, zeros, scales) -> dict[str, torch.Tensor]:
    """A GPTQ checkpoint's tensors for the weight (no act-order; zeros in v2 form: stored as they are, the form
    gptqmodel converts v1 checkpoints to before its ExLlamaV2 kernel)."""
    return {"qweight": pack_along(codes.t(), 0),  # [k / 8, n]
            "qzeros": pack_along(zeros.t(), 1),  # [k / GROUP, n / 8]
            "scales": scales.t().contiguous()}  # [k / GROUP, n]


def tinygemm_weight(codes, zeros, scales, inner_k_tiles: int = 8):
    """The weight in int4pack's layout: aten's int4 kernel computes (code - 8) * scale + bias per group, so the bias is
    (8 - zero) * scale."""
    as_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).cuda().contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack(as_bytes, inner_k_tiles)
    bias = (8 - zeros).float() * scales.float()
    return packed, torch.stack([scales.float().t(), bias.t()], dim=-1).to(torch.bfloat16).cuda().contiguous()


def build(kernel: str) -> tuple[float, str]:
    """Seconds to build (or load from the kernel cache) a kernel's extension, and the error if it failed."""
    began = time.perf_counter()
    try:
        if kernel.endswith("_stream"):
            build_on_current_stream({"exllamav2_stream": "exllamav2", "awq_gemv_fast_stream": "awq"}[kernel])
            error = ""
        else:
            from gptqmodel import extension

            name = {"exllamav2": "exllamav2", "awq_gemv_fast": "awq"}[kernel]
            ok = extension.load(name=name)[name]
            error = "" if ok else (extension.error(name) or "the extension did not load")
    except Exception as exc:  # noqa: BLE001 - the result says what failed
        error = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - began, error.strip()[-2000:]


class ExLlamaV2Weight:
    """One weight made ready for ExLlamaV2's kernel in the op namespace `ops` (gptqmodel's build or ours on the
    current stream): `make_q_matrix` reorders qweight in place and keeps pointers to the tensors, which this holds."""

    def __init__(self, tensors: dict[str, torch.Tensor], scratch: torch.Tensor, ops) -> None:
        self.ops = ops
        self.tensors = {name: value.cuda().contiguous() for name, value in tensors.items()}
        self.width = self.tensors["scales"].shape[1]
        self.handle = ops.make_q_matrix(self.tensors["qweight"], None, None, None, None, None,
                                        self.tensors["qzeros"], self.tensors["scales"], None, scratch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape[0], self.width, dtype=torch.float16, device=x.device)
        self.ops.gemm_half_q_half(x, self.handle, out, False)
        return out


class AwqGemvFastWeight:
    """One weight in llm-awq's gemv_fast layout, packed by gptqmodel's own AwqGEMVFastLinear; called through its
    decode op in the namespace `ops` (below 8 rows)."""

    def __init__(self, codes, zeros, scales) -> None:
        from gptqmodel.nn_modules.qlinear.gemv_fast_awq import AwqGEMVFastLinear

        n, k = codes.shape
        linear = torch.nn.Linear(k, n, bias=False)
        linear.weight.data = dequantized(codes, zeros, scales).half().float()
        layer = AwqGEMVFastLinear(bits=4, group_size=GROUP, sym=False, desc_act=False, in_features=k,
                                  out_features=n, register_buffers=False)
        layer.pack(linear, scales.float(), zeros.float())
        self.tensors = [layer.qweight.cuda(), layer.scales.cuda(), layer.qzeros.cuda()]
        self.n, self.k = n, k
        self.ops = None

    def on(self, ops) -> "AwqGemvFastWeight":
        """A copy of the weight in its own memory, called through `ops`."""
        clone = copy.copy(self)
        clone.tensors, clone.ops = [tensor.clone() for tensor in self.tensors], ops
        return clone

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.gemv_fast_forward_decode(x, *self.tensors, x.shape[0], self.n, self.k, GROUP)


def captured(call, inputs: list, want: torch.Tensor) -> bool:
    """Whether a CUDA graph of `call` on the first input replays the kernel: its output is zeroed, the graph replayed,
    and the output compared with `want`. A kernel launched on the legacy default stream (`<<<grid, block>>>` without a
    stream, as ExLlamaV2's and llm-awq's are built) runs once while PyTorch captures on its own stream and is not in
    the graph: a replay leaves the zeros (the 2026-12-02 run timed only the casts around them: "13 TB/s")."""
    call(*inputs[0])
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call(*inputs[0])
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    return relative_difference(out, want) < 0.05


def eager_ms(call, inputs: list, rounds: int = 20) -> float:
    """Median GPU time of one call launched eagerly, all copies back to back between two events (a call shorter than
    its launch, a few microseconds, is timed as its launch)."""
    for item in inputs:
        call(*item)
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for item in inputs:
            call(*item)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(inputs))
    return sorted(times)[len(times) // 2]


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts, comma-separated")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("int4_gemv_kernels needs a CUDA GPU")
    from quant.fastpath import configure_kernel_cache

    configure_kernel_cache()  # gptqmodel's builds under QUANT_KERNEL_CACHE, as the app's
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "builds": {}, "rows": []}
    for kernel in OPS:
        seconds, error = build(kernel)
        summary["builds"][kernel] = {"seconds": seconds, "error": error}
        print(f"{kernel} build/load: {seconds:.1f} s {error or 'ok'}", flush=True)
    generator = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        codes, zeros, scales = random_quantized(n, k, generator)
        reference = dequantized(codes, zeros, scales).cuda()  # float32 [n, k]
        bf16 = [(reference.to(torch.bfloat16),)] + [(torch.randn(n, k, generator=generator).to(torch.bfloat16).cuda(),)
                                                    for _ in range(copies_past_l2(n * k * 2) - 1)]
        four_bit_copies = copies_past_l2(n * k // 2)
        weights: dict[str, list] = {}
        errors = {kernel: summary["builds"].get(kernel, {}).get("error", "") for kernel in KERNELS}
        for kernel, inner_k_tiles in TINYGEMM.items():
            try:
                packed, scales_and_bias = tinygemm_weight(codes, zeros, scales, inner_k_tiles)
                weights[kernel] = [(packed.clone(), scales_and_bias.clone()) for _ in range(four_bit_copies)]
            except Exception as exc:  # noqa: BLE001
                errors[kernel] = f"{type(exc).__name__}: {exc}"
        awq = None  # packed once (seconds), then copied per kernel and copy
        for kernel in OPS:
            if errors[kernel]:
                continue
            ops = getattr(torch.ops, OPS[kernel])
            try:
                if kernel.startswith("exllamav2"):
                    # where it dequantizes (above 50 rows): one scratch for every copy, as gptqmodel shares one
                    scratch = torch.empty(n * k + 64, dtype=torch.float16, device="cuda")
                    tensors = gptq_tensors(codes, zeros, scales)
                    weights[kernel] = [(ExLlamaV2Weight(tensors, scratch, ops),) for _ in range(four_bit_copies)]
                else:
                    awq = awq or AwqGemvFastWeight(codes, zeros, scales)
                    weights[kernel] = [(awq.on(ops),) for _ in range(four_bit_copies)]
            except Exception as exc:  # noqa: BLE001
                errors[kernel] = f"prepare: {type(exc).__name__}: {exc}"
        for m in (int(r) for r in args.rows.split(",")):
            x = (torch.randn(m, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
            half = x.half()  # the fp16 kernels' input, cast outside the timed call
            calls = {**{kernel: lambda p, s: torch.ops.aten._weight_int4pack_mm(x, p, GROUP, s) for kernel in TINYGEMM},
                     **{kernel: lambda weight: weight(half) for kernel in OPS}}
            want = x.float() @ reference.t()
            row = {"shape": name, "rows": m, "weight_mib_4bit": n * k / 2 / 2**20,
                   "bf16_ms": graph_ms(lambda w: F.linear(x, w), bf16)}
            for kernel in KERNELS:
                if errors[kernel] or kernel not in weights:
                    row[f"{kernel}_error"] = errors[kernel] or "not prepared"
                    continue
                try:
                    call = calls[kernel]
                    row[f"{kernel}_difference"] = relative_difference(call(*weights[kernel][0]), want)
                    row[f"{kernel}_eager_ms"] = eager_ms(call, weights[kernel])
                    row[f"{kernel}_captured"] = captured(call, weights[kernel], want)
                    if row[f"{kernel}_captured"]:
                        row[f"{kernel}_ms"] = graph_ms(call, weights[kernel])
                except Exception as exc:  # noqa: BLE001
                    row[f"{kernel}_error"] = f"rows {m}: {type(exc).__name__}: {str(exc)[:500]}"
            row["bf16_eager_ms"] = eager_ms(lambda w: F.linear(x, w), bf16)
            summary["rows"].append(row)
            print(f"{name} rows {m}: bf16 {row['bf16_ms']:.4f} ms (eager {row['bf16_eager_ms']:.4f}), "
                  + ", ".join(f"{kernel} {_cell(row, kernel)} (difference {row[f'{kernel}_difference']:.2g})"
                              if f"{kernel}_difference" in row else f"{kernel} {row[f'{kernel}_error'][:200]}"
                              for kernel in KERNELS), flush=True)
        del weights
        torch.cuda.empty_cache()
    write_results(args.out, result_stem("int4-gemv-kernels", tag=args.tag), summary, markdown)


def _cell(row: dict, kernel: str) -> str:
    """A kernel's time: in a CUDA graph where the graph holds it, else eagerly (marked), else its error."""
    if f"{kernel}_ms" in row:
        return f"{row[f'{kernel}_ms']:.4f}"
    if f"{kernel}_eager_ms" in row:
        why = "capture failed" if f"{kernel}_error" in row else "not captured"
        return f"{row[f'{kernel}_eager_ms']:.4f} eager ({why})"
    return row.get(f"{kernel}_error", "n/a")[:60]


def _time(row: dict, kernel: str) -> float | None:
    return row.get(f"{kernel}_ms", row.get(f"{kernel}_eager_ms"))


def markdown(summary: dict) -> str:
    builds = "; ".join(f"{kernel} {info['seconds']:.1f} s" + (f" **failed**: `{info['error'][:300]}`"
                                                              if info["error"] else "")
                       for kernel, info in summary["builds"].items())
    lines = [f"# Batch-1 4-bit kernels against tinygemm and cuBLAS bf16, {summary['device']}", "",
             f"torch {summary['torch']}; 4-bit, groups of {GROUP}; GPU time of one call inside a CUDA graph (weights "
             f"cycled past the L2 cache), ms, where a graph captures the kernel (checked: the graph's output zeroed, "
             f"then replayed); a kernel the graph does not hold (launched on the legacy default stream) is timed "
             f"eagerly, back to back, and marked: the decode step's graph could not run it as built. Eager times of "
             f"a few microseconds are launch-bound. TB/s = the 4-bit weight's bytes (without scales) over the time. "
             f"Builds (or loads from the kernel cache): {builds}.", "",
             "| shape | rows | bf16 cuBLAS (eager) | " + " | ".join(KERNELS) + " | best 4-bit / bf16 | TB/s of the "
             "best | largest relative differences |", "|---|---|---|" + "---|" * len(KERNELS) + "---|---|---|"]
    for r in summary["rows"]:
        timed = {kernel: _time(r, kernel) for kernel in KERNELS if _time(r, kernel) is not None}
        best = min(timed, key=timed.get) if timed else None
        ratio = f"{timed[best] / r['bf16_ms']:.2f}x ({best})" if best else "-"
        bandwidth = f"{r['weight_mib_4bit'] * 2**20 / (timed[best] / 1e3) / 1e12:.2f}" if best else "-"
        differences = ", ".join(f"{kernel} {r[f'{kernel}_difference']:.2g}" for kernel in KERNELS
                                if f"{kernel}_difference" in r) or "-"
        lines.append(f"| {r['shape']} | {r['rows']} | {r['bf16_ms']:.4f} ({r['bf16_eager_ms']:.4f}) | "
                     + " | ".join(_cell(r, kernel) for kernel in KERNELS) + f" | {ratio} | {bandwidth} | "
                     f"{differences} |")
    lines += ["", f"A decode step's four projections x {LAYERS} layers, ms (bf16 / " + " / ".join(KERNELS) + "; "
              "eager where not captured):", ""]
    for m in sorted({r["rows"] for r in summary["rows"]}):
        rows = [r for r in summary["rows"] if r["rows"] == m]
        totals = [f"{LAYERS * sum(r['bf16_ms'] for r in rows):.2f}"]
        totals += [f"{LAYERS * sum(_time(r, kernel) for r in rows):.2f}"
                   if all(_time(r, kernel) is not None for r in rows) else "n/a" for kernel in KERNELS]
        lines.append(f"- {m} rows: " + " / ".join(totals))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
