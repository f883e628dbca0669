"""torchao: int8 and int4 weight-only, and fp8 (weight-only or with dynamic activations), quantized at load time
through transformers' `TorchAoConfig`, or loaded from a checkpoint saved that way (`quant_method: "torchao"` in
config.json, the torchao config class in `quant_type`).

torchao keeps each `nn.Linear` and swaps its weight for a tensor subclass that holds the packed data and scales and
runs the matmul (`linear` dispatches to it). What runs where, read from torchao 0.18's source:

- **int8 weight-only** (`Int8WeightOnlyConfig` -> `Int8Tensor`): int8 weights, one fp32 scale (and an int8 zero
  point) per output row. The matmul multiplies the activations by the weight converted to their dtype, in plain torch
  ops: CPU and GPU alike. What Inductor makes of it in the compiled decode step: see GEMV_SETTINGS.
- **int4 weight-only**: PyTorch's own int4 matmul (tinygemm, the kernel of quant.int4pack), in the layout of each
  device's kernel. GPU: `Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")` -> `Int4TilePackedTo4dTensor`,
  `aten._weight_int4pack_mm`, Ampere or newer, group size 32-256, bf16 only. (torchao's default "plain" packing runs
  on kernels of the `mslk` package, CUDA only, not installed.) CPU: `PrototypeInt4WeightOnlyConfig` ->
  `Int4OpaqueTensor`, `aten._weight_int4pack_mm_for_cpu`, group size 32-128. Both: a scale and a zero point (bf16)
  per group of `group_size` inputs.
- **fp8** (e4m3, one fp32 scale per output row): weight-only (`Float8WeightOnlyConfig`: the weight is converted to
  bf16 for each matmul), or dynamic activation + weight (`Float8DynamicActivationFloat8WeightConfig`, per-row
  granularity: each token's activations are scaled to fp8 at run time, and the matmul is `torch._scaled_mm`, fp8 x fp8
  on the tensor cores). torchao allows the fp8 matmul from compute capability 8.9 (`_check_hardware_support`: Ada,
  Hopper and newer); this tool asks 8.9 for both, since fp8 buys speed only where the GPU has fp8 (weight-only on an
  older GPU, or the CPU, would convert every weight at every step: the memory of int8, slower; torchao_int8 gives
  that memory on any device).

Why torchao for fp8 rather than transformers' `FineGrainedFP8Config` (transformers/integrations/finegrained_fp8.py):
that one computes through a Triton kernel it downloads from the Hub at first use (`kernels-community/finegrained-fp8`,
through the `kernels` package), which fails on machines without internet (our GPU machines) and runs code fetched at
run time on a Space; it has dynamic activations only (no weight-only), 128x128 weight blocks; and on a machine
without a suitable GPU it dequantizes a checkpoint to bf16 with a log line instead of refusing. torchao's fp8 runs on
PyTorch's own `torch._scaled_mm`, has both schemes, and traces under torch.compile.

Checkpoints: transformers saves torchao weights as safetensors through torchao's flattening
(torchao/prototype/safetensors), which knows `Int8Tensor`, `Int4TilePackedTo4dTensor` and `Float8Tensor` but not the
CPU's `Int4OpaqueTensor`: int4 checkpoints are written on a GPU only, and they load on a GPU only (their layout is
the GPU kernel's).

The compiled decode path (quant.fastpath): torchao's tensor subclasses are made for torch.compile (their ops are torch
ops behind `__torch_function__` / `__torch_dispatch__`, which dynamo traces: one graph, no graph break, no recompile
across steps); none of these methods is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from ..errors import UnsupportedModeError
from .base import DTYPES, Option, QuantMethod, QuantOptions, is_installed, saved_method_name

GROUP_SIZES = ("32", "64", "128", "256")
CPU_GROUP_SIZES = ("32", "64", "128")
"""torchao's CPU int4 layout (Int4OpaqueTensor.from_hp) takes these; tinygemm on the GPU also 256."""
FP8_CAPABILITY = (8, 9)
INT4_CAPABILITY = (8, 0)

TORCHAO_GROUP_SIZE = Option(
    "torchao_group_size", "--torchao-group-size", "choice", "int4 group size (weights per scale and zero point)",
    (("32", "32: most accurate, 0.625 bytes a weight"), ("64", "64: 0.5625 bytes a weight"),
     ("128", "128: the usual choice, 0.53 bytes a weight"), ("256", "256: smallest, 0.516 bytes a weight (GPU only)")))
FP8_ACTIVATION = Option(
    "fp8_activation", "--fp8-activation", "choice", "fp8 activations",
    (("none", "weight-only: fp8 weights, converted to bf16 for each matmul"),
     ("dynamic", "dynamic: activations scaled to fp8 per token at run time, fp8 x fp8 matmuls (torch._scaled_mm)")))

GEMV_SETTINGS: dict[str, Any] = {"coordinate_descent_tuning": True}
"""Inductor settings for the compiled decode step of the methods whose matmul is torch ops on a 1-byte weight (int8 and
fp8 weight-only: `x @ w.to(bf16).t()` and the scale). With coordinate-descent tuning, Inductor decomposes a one-row
matmul into a reduction (torch/_inductor/decomposition.py, `mm`): one Triton kernel per linear layer (k and v, gate and
up, fused in pairs) that reads the int8 or fp8 weight and its scale, its block sizes tuned once per kernel. Without it,
on CUDA (read from the code Inductor 2.14 generates: bench/cuda_codegen_probe.py): int8's matmul is rewritten to
`aten._weight_int8pack_mm` (Inductor's weight-only pattern, on CUDA too since PyTorch #161680), whose CUDA kernel
gives each output to one thread walking the inputs (uncoalesced reads); fp8's weight is dequantized into a bf16 copy in
memory at every step before cuBLAS reads it. A batch of 2 or more (QUANT_COMPILED_BATCH_SIZES) is not decomposed:
there int8 runs on `_weight_int8pack_mm` and fp8 on the bf16 copy whatever the settings.

Not torchao's whole recommendation (torchao.quantization.utils.recommended_inductor_config_setter):
`coordinate_descent_check_all_directions` has the tuner compile and benchmark every combination of neighbouring block
sizes and warp counts once it has converged, 2-3x the Triton builds per kernel (with it the int8 and fp8 weight-only
decode steps of an 8B took 437 and 509 s to compile on an H200, bf16's 62 s); `force_fuse_int_mm_with_mul` concerns
int8 x int8 `_int_mm`, which no method here runs; `use_mixed_mm` is ignored by torch. Passed with the model's
torch.compile (in force while it compiles, on the thread that compiles); the configs get `set_inductor_config=False`:
torchao would set them at quantization, for every later compilation of every model (older torch) or on the loading
thread only, which the fast path's runner thread never sees (torch 2.14 keeps Inductor's settings per thread)."""


def torchao_config_type(checkpoint_quantization: dict | None) -> str | None:
    """The torchao config class a torchao checkpoint was quantized with (`quant_type.default._type`), or None."""
    quant_type = (checkpoint_quantization or {}).get("quant_type")
    default = quant_type.get("default") if isinstance(quant_type, dict) else None
    return default.get("_type") if isinstance(default, dict) else None


def _config_fields(checkpoint_quantization: dict | None) -> dict:
    default = ((checkpoint_quantization or {}).get("quant_type") or {}).get("default") or {}
    return default.get("_data") or {}


def _plain(value: Any) -> Any:
    """A torchao config field as serialized (`{"_type": "PerRow", "_data": {...}}`, enums, dtypes) in a word."""
    if isinstance(value, list):
        return ", ".join(str(_plain(v)) for v in value)
    if isinstance(value, dict) and "_type" in value:
        data = value.get("_data")
        if isinstance(data, str):
            return data.lower() if value["_type"] != "torch.dtype" else data
        return value["_type"]
    return value


def gpu_capability() -> tuple[int, int] | None:
    """The lowest compute capability among the visible GPUs, or None without one."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    return min(torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))


class TorchAoMethod(QuantMethod):
    """A torchao weight configuration, quantized at load time (or loaded from a torchao checkpoint)."""

    tensor_parallel_refusal = "not_yet"
    """transformers does shard torchao weights by the tp_plan (the int8 demo Llama generated the one-process tokens
    over 2 gloo ranks); quant.tensor_parallel loads 16/32-bit weights only for now."""

    packages = (("torchao", "torchao"),)
    hub_tags = ("torchao",)
    quantizes_what = "torchao quantizes nn.Linear layers only"
    config_types: ClassVar[tuple[str, ...]] = ()
    """torchao config classes whose checkpoints this method loads."""
    precision_tag: ClassVar[str] = ""
    """The Hub tag of the weight precision (int8, int4, fp8)."""
    bits_tag: ClassVar[str] = ""
    skip_reason: ClassVar[str] = ""
    """Why torchao may leave a linear layer unquantized (said when it does)."""

    def loads_checkpoint(self, checkpoint_quantization):
        if saved_method_name(checkpoint_quantization) == "torchao":
            return torchao_config_type(checkpoint_quantization) in self.config_types
        return super().loads_checkpoint(checkpoint_quantization)

    @staticmethod
    def prequantized(checkpoint_quantization: dict | None) -> bool:
        return saved_method_name(checkpoint_quantization) == "torchao"

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if options.compute_dtype not in (None, "bf16"):
            raise UnsupportedModeError(f"Mode {self.name} computes in bf16 (torchao's kernels for it take bf16 "
                                       f"weights); compute dtype {options.compute_dtype} is not offered.",
                                       "Leave the compute dtype unset.")
        if on_cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError(f"Mode {self.name} computes in bf16, which this GPU does not support.",
                                       "Use bitsandbytes int8 or nf4 on this GPU.")
        return warnings

    def dtype(self, options, on_cuda):
        return DTYPES["bf16"]

    def torchao_config(self, options: QuantOptions, on_cuda: bool):
        """The torchao `AOBaseConfig` for a load-time quantization."""
        raise NotImplementedError

    def config(self, options, checkpoint_quantization, on_cuda):
        if self.prequantized(checkpoint_quantization):
            return None  # transformers takes the checkpoint's own TorchAoConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(self.torchao_config(options, on_cuda))

    def compile_options(self, options):
        """Inductor's defaults unless the matmul is torch ops (GEMV_SETTINGS): int4's tinygemm and fp8's `_scaled_mm`
        are extern kernels that Inductor neither fuses nor tunes. Coordinate-descent tuning would tune only the norm
        and rotary kernels and trade the bf16 output head's cuBLAS matmul for a Triton reduction (on an H200, 8B,
        HQQ's tinygemm path without it decoded about as fast as torchao_int4 with it: 273.8 and 278.4 tok/s, compiled
        in 57 and 97 s)."""
        return {}

    def after_load(self, model, options, progress):
        """Name the linear layers torchao left unquantized: it skips, with a log line only, those whose shape its
        kernel does not take."""
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass

        from ..families import names_text

        head = model.get_output_embeddings()
        left = [name for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and module is not head
                and not is_traceable_wrapper_subclass(module.weight)]
        if not left:
            return []
        return [f"torchao left {len(left)} linear layers in bf16, unquantized ({names_text(left)}): "
                f"{self.skip_reason}."]

    def report_record(self, record, options):
        """The torchao config in words beside transformers' nested dict: its class and main fields."""
        if not isinstance(record, dict) or not torchao_config_type(record):
            return record
        summary = {"quant_method": "torchao", "torchao_config": torchao_config_type(record)}
        for key, value in _config_fields(record).items():
            if key in ("group_size", "int4_packing_format", "granularity", "weight_dtype", "activation_dtype") \
                    and value is not None:
                summary[key] = _plain(value)
        return {**summary, **{k: v for k, v in record.items() if k not in summary}}

    def compile_refusal(self, options):
        return None  # torchao's tensor subclasses trace (see the module's docstring)

    def card_tags(self, recipe):
        return [*self.hub_tags, self.precision_tag, self.bits_tag]


class TorchAoInt8Method(TorchAoMethod):
    name = "torchao_int8"
    description = "torchao int8 weight-only: int8 weights, a scale per row; CPU and GPU"
    quantize_label = "torchao-int8wo"
    config_types = ("Int8WeightOnlyConfig",)
    precision_tag, bits_tag = "int8", "8-bit"
    skip_reason = "torchao's int8 weight-only takes any shape, so transformers did not hand these to it"
    card_requirements = "Loading needs `torchao` (`pip install torchao`); it runs on the CPU and on GPUs."

    @property
    def card_name(self):
        return "torchao int8 weight-only"

    def torchao_config(self, options, on_cuda):
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(set_inductor_config=False)

    def compile_options(self, options):
        return dict(GEMV_SETTINGS)

    def bytes_per_weight(self, checkpoint_quantization):
        # int8 weights; per output row an fp32 scale and an int8 zero point: 5 bytes a row of (at 8B) 4096 inputs
        return 1 + 5 / 4096


class TorchAoInt4Method(TorchAoMethod):
    name = "torchao_int4"
    description = ("torchao int4 weight-only: 4-bit weights, a scale and zero per group; PyTorch's int4 kernel on the "
                   "CPU and on Ampere or newer GPUs")
    options = (TORCHAO_GROUP_SIZE,)
    quantize_label = "torchao-int4wo-g128"
    config_types = ("Int4WeightOnlyConfig",)
    """Not PrototypeInt4WeightOnlyConfig: its CPU layout cannot be saved (see the module's docstring)."""
    precision_tag, bits_tag = "int4", "4-bit"
    skip_reason = "torchao's int4 quantizes a layer only when its input size is a multiple of the group size"
    card_requirements = ("Loading needs `torchao` (`pip install torchao`) and a CUDA GPU of the Ampere generation or "
                         "newer: the int4 weights are packed for PyTorch's GPU int4 kernel (tinygemm), in bf16.")

    @property
    def card_name(self):
        return "torchao int4 weight-only"

    def resolve(self, options, checkpoint_quantization, on_cuda):
        group_size = _config_fields(checkpoint_quantization).get("group_size")
        if self.prequantized(checkpoint_quantization) and group_size:
            return replace(options, torchao_group_size=str(group_size))  # the checkpoint's, whatever was asked
        return options

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if self.prequantized(checkpoint_quantization):
            packing = str(_plain(_config_fields(checkpoint_quantization).get("int4_packing_format")) or "plain")
            if packing != "tile_packed_to_4d":
                if not is_installed("mslk"):
                    raise UnsupportedModeError(
                        f"This checkpoint's int4 weights are in torchao's {packing!r} packing, which runs on the "
                        "kernels of the mslk package (CUDA), not installed here.",
                        "pip install mslk on a CUDA machine, or quantize the original model with torchao_int4 here.")
                if not on_cuda:
                    raise UnsupportedModeError(
                        f"This checkpoint's int4 weights are in torchao's {packing!r} packing, which runs on CUDA "
                        "GPUs only.", "Load it on a GPU, or load the original model in torchao_int4 here.")
            elif not on_cuda:
                raise UnsupportedModeError(
                    "This checkpoint's int4 weights are packed for PyTorch's GPU int4 kernel (torchao's "
                    "tile_packed_to_4d layout), which has no CPU kernel.",
                    "Load it on a GPU, or load the original unquantized model in torchao_int4 here: it quantizes "
                    "on the CPU at load time, in the CPU kernel's layout.")
        elif not on_cuda and options.torchao_group_size not in CPU_GROUP_SIZES:
            raise UnsupportedModeError(
                f"torchao's int4 CPU kernel takes group sizes {', '.join(CPU_GROUP_SIZES)}; "
                f"{options.torchao_group_size} runs on a GPU only.", "Pick group size 128 (or 32, 64) here.")
        capability = gpu_capability() if on_cuda else None
        if capability is not None and capability < INT4_CAPABILITY:
            raise UnsupportedModeError(
                f"PyTorch's int4 GPU kernel (tinygemm) needs compute capability 8.0 or newer (Ampere); this GPU is "
                f"{capability[0]}.{capability[1]}.", "Use bitsandbytes nf4 on this GPU.")
        return warnings

    def torchao_config(self, options, on_cuda):
        group_size = int(options.torchao_group_size)
        if on_cuda:
            from torchao.quantization import Int4WeightOnlyConfig
            from torchao.quantization.quantize_.workflows import Int4PackingFormat

            return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
                                        set_inductor_config=False)
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=group_size, set_inductor_config=False)

    def bytes_per_weight(self, checkpoint_quantization):
        # 4 bits a weight; a bf16 scale and a bf16 zero point per group (on the GPU, input sizes are padded to a
        # multiple of 1024 and output sizes to one of 8: none at the usual model widths)
        group_size = int(_config_fields(checkpoint_quantization).get("group_size") or 128)
        return 0.5 + 4 / group_size

    def quantize_refusal(self, config, kind):
        refusal = super().quantize_refusal(config, kind)
        if refusal:
            return refusal
        capability = gpu_capability()
        if capability is None or capability < INT4_CAPABILITY:
            return ("torchao int4 checkpoints are written on a CUDA GPU (Ampere or newer) only: the CPU's int4 layout "
                    "(Int4OpaqueTensor) cannot be saved (torchao's safetensors support lacks it), and the GPU's layout "
                    "is made by PyTorch's GPU int4 kernel.",
                    "Quantize on a GPU machine, or here load the model in mode torchao_int4 (it quantizes at load "
                    "time), or write torchao int8 or GPTQ 4-bit.")
        return None


class Fp8Method(TorchAoMethod):
    name = "fp8"
    description = ("fp8 (e4m3) weights, a scale per row, weight-only or with dynamic fp8 activations (torchao); "
                   "GPUs of compute capability 8.9+")
    options = (FP8_ACTIVATION,)
    quantize_label = "torchao-fp8wo"
    config_types = ("Float8WeightOnlyConfig", "Float8DynamicActivationFloat8WeightConfig")
    precision_tag, bits_tag = "fp8", "8-bit"
    skip_reason = ("torchao's fp8 with dynamic activations quantizes a layer only when both its sizes are multiples of "
                   "16 (torch._scaled_mm)")
    card_requirements = ("Loading needs `torchao` (`pip install torchao`) and a GPU with fp8 support, compute "
                         "capability 8.9 or newer (Ada: L4, L40, RTX 4090; Hopper: H100, H200; Blackwell).")
    NEEDED = ("a GPU with fp8 support: compute capability 8.9 or newer (Ada: L4, L40, RTX 4090; Hopper: H100, H200; "
              "Blackwell)")

    @property
    def card_name(self):
        return "torchao fp8"

    def resolve(self, options, checkpoint_quantization, on_cuda):
        if self.prequantized(checkpoint_quantization):
            dynamic = torchao_config_type(checkpoint_quantization) == "Float8DynamicActivationFloat8WeightConfig"
            return replace(options, fp8_activation="dynamic" if dynamic else "none")
        return options

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        refusal = self.device_refusal(on_cuda)
        if refusal:
            raise UnsupportedModeError(refusal, "Use torchao_int8 for 8-bit weights here (the same memory as fp8 "
                                                "weights, on the CPU and any GPU), or bf16.")
        return warnings

    def device_refusal(self, on_cuda: bool) -> str | None:
        """Why fp8 cannot run where the model is placed, or None."""
        if not on_cuda:
            return f"Mode fp8 needs {self.NEEDED}; the model is placed on the CPU."
        capability = gpu_capability()
        if capability is None:
            return f"Mode fp8 needs {self.NEEDED}; no CUDA GPU is visible."
        if capability < FP8_CAPABILITY:
            return (f"Mode fp8 needs {self.NEEDED}; this GPU has compute capability {capability[0]}.{capability[1]} "
                    "(no fp8 tensor cores).")
        return None

    def torchao_config(self, options, on_cuda):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow

        if options.fp8_activation == "dynamic":
            return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
        return Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)

    def compile_options(self, options):
        return dict(GEMV_SETTINGS) if options.fp8_activation == "none" else {}  # dynamic: `_scaled_mm`

    def bytes_per_weight(self, checkpoint_quantization):
        return 1 + 4 / 4096  # fp8 weights; an fp32 scale per output row of (at 8B) 4096 inputs

    def quantize_refusal(self, config, kind):
        refusal = super().quantize_refusal(config, kind)
        if refusal:
            return refusal
        why = self.device_refusal(on_cuda=True)
        return (why.replace("Mode fp8 needs", "Writing fp8 checkpoints needs"),
                "Quantize on such a GPU, or write torchao int8 here.") if why else None
