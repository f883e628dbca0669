"""llm-awq's `gemv_fast` decode kernel for int4pack layers at 1-7 rows (issue 27), opt-in: QUANT_INT4_GEMV=awq.

Why: at one row tinygemm (`_weight_int4pack_mm`, int4pack's kernel) reads an 8B model's 4-bit projection weights at
1.4-1.6 TB/s on an H200; llm-awq's gemv_fast, built from the sources gptqmodel 7.6 ships, at up to 2.45 TB/s: a
decode step's four projections x 32 layers in 1.62 ms against tinygemm's 2.30 and cuBLAS bf16's 3.88
(bench/results/int4-gemv-kernels.md). End to end in the graphed decode step (8B, H200): GPTQ batch 1 at 1.79x and
1.85x bf16 in two runs against 1.43x on tinygemm (bench/results/methods-bench-8b-cuda-gemv-fast-default.md,
-awq-gemv.md, -tinygemm-twentieth.md), tokens equal to tinygemm's (tests/gpu/test_gpu_fastpath.py). Not the default:
the layers hold their 4-bit weights twice (below).

gptqmodel builds it with every launch on the legacy default stream, which a CUDA graph captured on PyTorch's stream
(the decode step's) does not hold, so `build_decode_kernel` compiles the decode kernel from gptqmodel's installed
sources again with every launch on PyTorch's current stream, under our namespace and on ATen's headers instead of
<torch/extension.h>, into QUANT_KERNEL_CACHE (26.7 s on two CPU cores; gptqmodel's whole extension took about 70 s
on the H200's host). The loader starts it in a thread while the weights load; ninja reuses the build after, as long
as the sources are unchanged, and loading it does not import gptqmodel.

The layout (gptqmodel's `pack_intweight`: four output rows interleaved, 64-wide strides along the input) holds the
codes tinygemm's layout holds, with fp16 scales and scaled zeros per group: it computes w = s * q + z' where tinygemm
computes w = s * (q - 8) + zero, so z' = zero - 8 s, and every format int4pack takes (GPTQ, AWQ, HQQ) runs on it with
the same arithmetic, up to fp16 rounding of the scales, zeros and activations. A layer using it holds its 4-bit
weights twice: tinygemm's layout still serves 8-31 rows and the dequantization for more. Its activations are fp16
(the kernel's only dtype): a model whose projections' inputs exceed fp16's range (65,504) would overflow where
tinygemm, in bf16, does not; the GPU test and the load's checks run on the demo model and random inputs.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import torch

from . import triton_support

log = logging.getLogger(__name__)

ROWS = 8
"""gemv_fast has kernels for 1 to ROWS - 1 rows."""
GROUP_SIZE = 128
"""The only group size its decode kernel is built for."""
INTERLEAVE, K_STRIDE = 4, 64
"""The layout's output rows interleaved and its stride along the input (gptqmodel's `pack_intweight` arguments)."""
STREAM_NAMESPACES = {"awq": ("gptqmodel_awq", "quant_awq_stream"),
                     "exllamav2": ("gptqmodel_exllamav2", "quant_exllamav2_stream")}
"""gptqmodel's extensions built again with their kernels on PyTorch's current stream: its op namespace -> ours
(ExLlamaV2's for bench/int4_gemv_kernels.py only)."""
SOURCES = {"awq": ["torch_bind.cpp", "quantization/gemm_cuda_gen.cu", "quantization/gemv_cuda.cu",
                   "gemm_fast_cuda_entry.cu", "gemv_fast_cuda_entry.cu"],
           "exllamav2": ["ext_gptq.cpp", "cuda/q_matrix.cu", "cuda/q_gemm.cu"]}
LAUNCH = re.compile(r"<<<([^<>]*)>>>")


def on_current_stream(source: str) -> tuple[str, int]:
    """A CUDA source whose kernel launches without a stream (`<<<grid, block>>>`, `<<<grid, block, shared>>>`) launch
    on PyTorch's current stream, as a CUDA graph captured by PyTorch needs; launches that name a stream are kept.
    Returns the source and how many launches changed."""
    changed = 0

    def with_stream(match: re.Match) -> str:
        nonlocal changed
        arguments = [part.strip() for part in match.group(1).split(",")]
        if len(arguments) >= 4:
            return match.group(0)
        changed += 1
        arguments += ["0"] * (3 - len(arguments)) + ["c10::cuda::getCurrentCUDAStream()"]
        return "<<<" + ", ".join(arguments) + ">>>"

    patched = LAUNCH.sub(with_stream, source)
    if changed:
        patched = "#include <c10/cuda/CUDAStream.h>\n" + patched
    return patched, changed


ATEN_FOR_EXTENSION_H = ("#include <ATen/ATen.h>\n"
                        "namespace torch { using at::Tensor; using at::TensorOptions; using at::empty; }")
"""What the decode build includes instead of `<torch/extension.h>` (the C++ frontend and pybind11, which the decode
kernel's sources do not use: on two CPU cores its translation unit compiled in 23 s alone, against 74 s with them
beside the binding's compile)."""


def gptqmodel_sources(name: str) -> Path:
    """Where gptqmodel's installed package keeps the `name` extension's sources (found without importing gptqmodel,
    which takes seconds)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("gptqmodel")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("gptqmodel is not installed: its sources are what gemv_fast is built from")
    original = Path(spec.origin).resolve().parent.parent / "gptqmodel_ext" / name
    if not original.is_dir():
        raise FileNotFoundError(f"gptqmodel {importlib.metadata.version('gptqmodel')} ships no sources at {original}")
    return original


def patched_sources(name: str, into: Path, *, aten_only: bool = False) -> int:
    """gptqmodel's installed `name` extension sources, with every launch on the current stream and the ops under our
    namespace, written under `into` (a file only where its text changed, so ninja keeps an earlier build); with
    `aten_only`, `<torch/extension.h>` included as ATEN_FOR_EXTENSION_H. Returns the launches changed."""
    original = gptqmodel_sources(name)
    old, new = STREAM_NAMESPACES[name]
    changed = 0
    for path in sorted(original.rglob("*")):
        if path.is_dir():
            continue
        text = path.read_bytes()
        if path.suffix in (".cu", ".cuh", ".cpp", ".h"):
            source, count = on_current_stream(text.decode()) if path.suffix in (".cu", ".cuh") else (text.decode(), 0)
            changed += count
            if aten_only:
                source = source.replace("#include <torch/extension.h>", ATEN_FOR_EXTENSION_H)
            text = (source.replace(f"TORCH_LIBRARY({old},", f"TORCH_LIBRARY({new},")
                    .replace(f"TORCH_LIBRARY_IMPL({old},", f"TORCH_LIBRARY_IMPL({new},")).encode()
        write_if_changed(into / path.relative_to(original), text)
    return changed


def write_if_changed(target: Path, data: bytes) -> None:
    """Write `data` to `target` (its folders made) unless it holds them already: ninja rebuilds what a newer file
    feeds, so an unchanged source keeps the earlier build."""
    if not target.exists() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


DECODE_NAMESPACE = "quant_awq_decode"
"""The namespace of the product's build: gemv_fast's decode kernel alone (the bench builds the whole extension)."""
DECODE_BINDING = f"""// Written by quant.awq_gemv: llm-awq's gemv_fast decode kernel alone, under {DECODE_NAMESPACE}.
#include <torch/library.h>

#include "quantization_new/gemv/gemv_cuda.h"

namespace {{
at::Tensor decode(at::Tensor in_feats, at::Tensor kernel, at::Tensor scaling_factors, at::Tensor zeros, int64_t m,
                  int64_t n, int64_t k, int64_t group_size) {{
  return gemv_forward_cuda_decode(in_feats, kernel, scaling_factors, zeros, static_cast<int>(m), static_cast<int>(n),
                                  static_cast<int>(k), static_cast<int>(group_size));
}}
}}  // namespace

TORCH_LIBRARY({DECODE_NAMESPACE}, m) {{
  m.def("gemv_fast_forward_decode(Tensor in_feats, Tensor kernel, Tensor scaling_factors, Tensor zeros, int m, "
        "int n, int k, int group_size) -> Tensor");
}}

TORCH_LIBRARY_IMPL({DECODE_NAMESPACE}, CUDA, m) {{
  m.impl("gemv_fast_forward_decode", &decode);
}}
"""
DECODE_SOURCES = ["quant_decode_binding.cpp", "gemv_fast_cuda_entry.cu"]
"""What the product compiles: the binding above and the decode kernel's translation unit (the whole extension, with
its GEMMs, took about 70 s on the H200's host; the decode kernel alone is what a chat runs)."""


CFLAGS = ["-O2", "-std=c++20", "-DENABLE_BF16"]
CUDA_CFLAGS = CFLAGS + ["--optimize=2", "-Xptxas", "-O2,-dlcm=ca", "-diag-suppress=179,39,177"]
"""gptqmodel 7.6's JIT flags for these sources (gptqmodel.utils.cpp's defaults at O2), less its verbose ptxas output
and line info: the code generated is what gptqmodel's own build runs."""


def _load(name: str, root: Path, sources: list[str], include_paths: list[str] | None = None) -> None:
    """torch's JIT build of `sources` under `root / "src"` into `root / "build"` (ninja skips it when nothing changed);
    loads the library, registering its ops."""
    from torch.utils.cpp_extension import load

    (root / "build").mkdir(parents=True, exist_ok=True)
    load(name=name, sources=[str(root / "src" / source) for source in sources],
         build_directory=str(root / "build"), is_python_module=False, extra_cflags=CFLAGS,
         extra_cuda_cflags=CUDA_CFLAGS, extra_include_paths=include_paths or [str(root / "src")])


def build_on_current_stream(name: str) -> int:
    """Build (or load from QUANT_KERNEL_CACHE) gptqmodel's whole `name` extension on PyTorch's current stream, its ops
    under `STREAM_NAMESPACES[name][1]` (bench/int4_gemv_kernels.py); returns the launches changed. Needs nvcc; raises
    what the build raises."""
    from gptqmodel.utils.cpp import cuda_include_paths_with_fallback

    from .settings import load_settings

    root = Path(load_settings().kernel_cache) / "stream-patched" / name
    changed = patched_sources(name, root / "src")
    _load(f"quant_{name}_stream_ops", root, SOURCES[name],
          cuda_include_paths_with_fallback([str(root / "src")], required_header_names=("cusparse.h",)))
    return changed


def build_decode_kernel() -> int:
    """Build (or load from QUANT_KERNEL_CACHE) gemv_fast's decode kernel alone, on PyTorch's current stream, as
    `torch.ops.quant_awq_decode.gemv_fast_forward_decode`; returns the launches changed. Needs nvcc."""
    from .settings import load_settings

    root = Path(load_settings().kernel_cache) / "stream-patched" / "awq-decode"
    changed = patched_sources("awq", root / "src", aten_only=True)
    write_if_changed(root / "src" / DECODE_SOURCES[0], DECODE_BINDING.encode())
    _load("quant_awq_decode_ops", root, DECODE_SOURCES)
    return changed


_BUILDING = threading.Lock()
_BUILT: dict[str, object] = {}
"""The op ("op") or the build's error ("error"), once a process."""


def _build_op():
    build_decode_kernel()
    op = torch.ops.quant_awq_decode.gemv_fast_forward_decode

    @torch.library.register_fake(f"{DECODE_NAMESPACE}::gemv_fast_forward_decode")
    def _(in_feats, kernel, scaling_factors, zeros, m, n, k, group_size):
        return in_feats.new_empty((*in_feats.shape[:-1], n))

    return op


def decode_op():
    """The decode op, built and given a fake implementation (torch.compile traces it as one opaque call; the decode
    step's CUDA graph holds its launch, on the current stream). Built once a process: a caller waits for a build
    under way (`start_building`'s); a failed build raises its error again rather than compiling again."""
    with _BUILDING:
        if not _BUILT:
            try:
                _BUILT["op"] = _build_op()
            except Exception as exc:  # noqa: BLE001 - kept for the check, which reports it
                _BUILT["error"] = exc
        if "error" in _BUILT:
            raise _BUILT["error"]
        return _BUILT["op"]


def start_building() -> None:
    """Build the decode op in a thread where a load will want it (a GPU, QUANT_INT4_GEMV=awq, not decided yet), so
    the compile (or the cached build's load) runs while the weights load; the first layer's check then waits for it
    and reports a failure."""
    from .settings import load_settings

    if CHECK.decided or load_settings().int4_gemv != "awq" or not torch.cuda.is_available():
        return

    def build() -> None:
        try:
            decode_op()
        except Exception:  # noqa: BLE001 - kept by decode_op; the first layer's check reports it
            log.debug("gemv_fast's build failed", exc_info=True)

    threading.Thread(target=build, name="gemv_fast build", daemon=True).start()


def shape_refusal(in_features: int, out_features: int, group_size: int) -> str | None:
    """Why gemv_fast cannot take a layer of this shape, or None."""
    if group_size != GROUP_SIZE:
        return f"gemv_fast runs groups of {GROUP_SIZE} only, not {group_size}"
    if in_features % K_STRIDE or out_features % (2 * INTERLEAVE):
        return (f"gemv_fast takes in_features in multiples of {K_STRIDE} and out_features of {2 * INTERLEAVE}, not "
                f"{in_features} x {out_features}")
    return None


def extra_bytes_per_weight(group_size: int) -> float:
    """What QUANT_INT4_GEMV=awq adds to an int4pack weight's bytes for the memory estimate made before loading (a
    second copy of the 4-bit codes, an fp16 scale and zero per group) on a machine with a GPU (a load placed on its
    CPU is overestimated); 0 without a GPU, where it is off, or where the group size is not gemv_fast's."""
    from .settings import load_settings

    takes = load_settings().int4_gemv == "awq" and group_size == GROUP_SIZE and torch.cuda.is_available()
    return 0.5 + 4 / group_size if takes else 0.0


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes [out, in] (0..15) in gemv_fast's layout, int16 [out / 4, in]: gptqmodel's `pack_intweight(codes,
    interleave=4, kstride=64)` in torch (it runs through numpy on the host; this runs where the codes are)."""
    n, k = codes.shape
    packed = codes.to(torch.int32).reshape(n, k // 32, 4, 4, 2).transpose(2, 3)  # 8 of each 32 columns interleaved
    packed = packed.reshape(n, k // 32, 4, 4, 2).transpose(3, 4)  # each 8: [0, 2, 4, 6, 1, 3, 5, 7]
    packed = packed.reshape(n // INTERLEAVE, INTERLEAVE, k // K_STRIDE, K_STRIDE).transpose(1, 2)
    packed = packed.reshape(n // INTERLEAVE, k // K_STRIDE, K_STRIDE, INTERLEAVE)
    words = packed[..., 0] | packed[..., 1] << 4 | packed[..., 2] << 8 | packed[..., 3] << 12
    return words.reshape(n // INTERLEAVE, k).to(torch.int16).contiguous()


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One layer's tensors for gemv_fast from int4pack's: codes [out, in] (0..15), tinygemm's scales and zeros
    [groups, out] (w = scale * (code - 8) + zero). Returns (weight, scales, scaled zeros); the scales and zeros are fp16
    held as int16 (their bits; `matmul` views them back), so casting a model's fp16 tensors to its compute dtype
    (quant.methods.gptq._cast_half_tensors, `model.to`) leaves the kernel's fp16 operands alone. Groups are padded to
    a multiple of 8 with zeros, as AwqGEMVFastLinear.pack pads them."""
    groups, out_features = scales.shape
    padded = -(-groups // 8) * 8
    fp16_scales = scales.new_zeros(padded, out_features, dtype=torch.float16)
    fp16_zeros = torch.zeros_like(fp16_scales)
    fp16_scales[:groups] = scales.to(torch.float16)
    fp16_zeros[:groups] = (zeros.float() - 8 * scales.float()).to(torch.float16)
    return pack_codes(codes), fp16_scales.view(torch.int16), fp16_zeros.view(torch.int16)


def matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, out_features: int,
           group_size: int) -> torch.Tensor:
    """x [rows < ROWS, in] @ the layer's weight, fp16 [rows, out]."""
    return torch.ops.quant_awq_decode.gemv_fast_forward_decode(
        x.to(torch.float16).contiguous(), weight, scales.view(torch.float16), zeros.view(torch.float16), x.shape[0],
        out_features, x.shape[1], group_size)


def _mismatch() -> str | None:
    """Build the kernel and compare it with the float32 product of the weight it was given, at 1-7 rows, on random
    codes, scales and zeros of a shape gemv_fast takes; what differs, or None."""
    try:
        decode_op()
    except Exception as exc:  # noqa: BLE001 - the build needs gptqmodel's sources and nvcc: tinygemm runs instead
        return f"building gemv_fast failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]})"
    generator = torch.Generator().manual_seed(0)
    n, k = 256, 1024
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    scales = torch.rand(k // GROUP_SIZE, n, generator=generator) * 0.02 + 1e-3
    zeros = torch.randn(k // GROUP_SIZE, n, generator=generator) * 0.01
    weight = ((codes.view(n, k // GROUP_SIZE, GROUP_SIZE) - 8) * scales.t()[..., None]
              + zeros.t()[..., None]).view(n, k).cuda()
    tensors = [t.cuda() for t in pack(codes, scales.half().float(), zeros.half().float())]
    for rows in range(1, ROWS):
        x = torch.randn(rows, k, generator=generator).to(torch.bfloat16).cuda()
        want = x.float() @ weight.t()
        got = matmul(x, *tensors, n, GROUP_SIZE).float()
        error = ((got - want).norm() / want.norm()).item()
        if not error <= 1e-2:
            return f"gemv_fast differs from the weight's product by {error:.1%} at {rows} rows"
    return None


CHECK = triton_support.KernelCheck(_mismatch, log, "int4 layers keep tinygemm for 1-7 rows", kernel="gemv_fast",
                                   needs_triton=False)
"""Whether gemv_fast serves int4pack layers' 1-7 rows in this process (QUANT_INT4_GEMV=awq; decided at the first
layer that wants it)."""
