"""What a load cost and produced: the table the team's notes were made of ("load RAM 8000MB -> 4000MB")."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import psutil
import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

MiB = 2**20


def process_rss() -> int:
    """Resident memory of this process, in bytes."""
    return psutil.Process(os.getpid()).memory_info().rss


def gpu_allocated() -> dict[str, int]:
    """Bytes allocated by PyTorch on each GPU."""
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}


@dataclass
class MemorySnapshot:
    rss: int
    gpu: dict[str, int]

    @classmethod
    def take(cls) -> MemorySnapshot:
        return cls(rss=process_rss(), gpu=gpu_allocated())


def logical_parameter_count(model: torch.nn.Module) -> int:
    """Parameters as the unquantized model has them: packed 4-bit and GPTQ weights count as their full shape."""
    total = 0
    for module in model.modules():
        packed = getattr(module, "qweight", None)
        if packed is None:
            packed = getattr(module, "packed_weight", None)  # quant.int4pack.Int4PackedLinear
        if packed is not None and hasattr(module, "in_features") and hasattr(module, "out_features"):
            total += module.in_features * module.out_features
            bias = getattr(module, "bias", None)
            total += bias.numel() if bias is not None else 0
            continue
        for param in module.parameters(recurse=False):
            quant_state = getattr(param, "quant_state", None)
            total += quant_state.shape.numel() if quant_state is not None else param.numel()
    return total


def _layer_name(module: torch.nn.Module) -> str:
    """A layer's class, with the class of its weight where that is a quantized tensor subclass: torchao keeps
    nn.Linear and swaps the weight for one (`Linear[Int4OpaqueTensor]`)."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and is_traceable_wrapper_subclass(weight):
        return f"{type(module).__name__}[{type(weight).__name__}]"
    return type(module).__name__


def linear_layer_types(model: torch.nn.Module) -> dict[str, int]:
    """How many layers of each linear class the model holds (Linear8bitLt, Linear4bit, TorchQuantLinear,
    Linear[Int8Tensor], Linear...)."""
    counts = Counter(
        _layer_name(m)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__ and hasattr(m, "in_features")
    )
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds. A tensor subclass that wraps others (torchao's Int8Tensor, Int4OpaqueTensor,
    Float8Tensor...) reports the shape and dtype of the weight it stands for (an int4 weight "is" bf16, 2 bytes a
    value), so its size is that of the tensors it is made of (`__tensor_flatten__`: packed data, scales, zeros)."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()  # a DTensor's local slice (its device mesh is not a tensor)
        return sum(tensor_bytes(t) for t in (getattr(tensor, name) for name in names) if isinstance(t, torch.Tensor))
    return tensor.numel() * tensor.element_size() + sum(t.numel() * t.element_size() for t in _scales_beside(tensor))


def _scales_beside(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps as attributes of a quantized weight, outside the parameters and buffers that
    `get_memory_footprint` counts: a 4-bit weight's absmax per block (with double quant: 8-bit absmax and the fp32
    absmax of those), an int8 weight's scale per row (SCB)."""
    found = []
    state = getattr(tensor, "quant_state", None)
    for holder in (state, getattr(state, "state2", None)):
        absmax = getattr(holder, "absmax", None)
        if isinstance(absmax, torch.Tensor):
            found.append(absmax)
    scb = getattr(tensor, "SCB", None)
    if isinstance(scb, torch.Tensor):
        found.append(scb)
    return found


def memory_footprint(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers: transformers' `get_memory_footprint`, with tensor subclasses counted at
    what they hold (it counts a torchao int4 weight as a bf16 one)."""
    return sum(tensor_bytes(t) for t in list(model.parameters()) + list(model.buffers()))


def bytes_by_device(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers on each device, measured on the tensors themselves."""
    sizes: Counter[str] = Counter()
    for tensor in list(model.parameters()) + list(model.buffers()):
        sizes[str(tensor.device)] += tensor_bytes(tensor)
    return dict(sizes)


@dataclass
class LoadReport:
    """One row of the load comparison. Sizes in bytes, times in seconds."""

    model: str
    revision: str | None
    kind: str
    architecture: str
    mode: str
    dtype: str
    attn_implementation: str | None
    parameters: int
    footprint_bytes: int
    bytes_by_device: dict[str, int]
    gpu_allocated_bytes: dict[str, int]
    """GPU memory this load added, per device (allocated after minus before)."""
    ram_before_bytes: int
    ram_after_bytes: int
    load_seconds: float
    linear_layers: dict[str, int]
    device_map: dict[str, str]
    quantization: dict | None
    weights_read: str = ""
    """How the weights were read: transformers' from_pretrained, or streamed by quant.weight_stream (with its time)."""
    warnings: list[str] = field(default_factory=list)
    generation_path: str = ""
    """How generate runs: compiled (static cache + torch.compile) or eager, and why."""
    compile_seconds: float = 0.0
    """Compiling and warming the decode step at load time (0 on the eager path)."""
    static_cache_bytes: int = 0
    """KV cache held by the compiled path (one static cache per compiled batch size)."""
    kept: list[dict] = field(default_factory=list)
    """Modules left unquantized or wider than the mode's dtype, one record per reason with their count, parameters
    and bytes (quant.kept.KeptGroup.to_dict)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_row(self) -> dict[str, object]:
        """The compact row of the comparison table (MiB and seconds)."""
        quantized = {k: v for k, v in self.linear_layers.items() if k != "Linear"}
        return {
            "model": self.model,
            "mode": self.mode,
            "params (M)": round(self.parameters / 1e6, 2),
            "footprint (MiB)": round(self.footprint_bytes / MiB, 1),
            "RAM before→after (MiB)": f"{self.ram_before_bytes / MiB:.0f} → {self.ram_after_bytes / MiB:.0f}",
            "GPU alloc (MiB)": round(sum(self.gpu_allocated_bytes.values()) / MiB, 1),
            "load (s)": round(self.load_seconds, 2),
            "compile (s)": round(self.compile_seconds, 1),
            "generation": self.generation_path,
            "quantized layers": ", ".join(f"{k}×{v}" for k, v in quantized.items()) or "none",
        }

    def to_text(self, language: str = "en") -> str:
        """Plain-text report, as `python -m quant load` prints it; `language` ("en" or "ko") is that of the lines on
        modules left out of the mode (the Model tab shows them in the visitor's)."""
        from .kept import kept_label, kept_line

        def mib(n: int) -> str:
            return f"{n / MiB:,.1f} MiB"

        lines = [
            f"model            {self.model}" + (f" @ {self.revision}" if self.revision else ""),
            f"kind             {self.kind} ({self.architecture})",
            f"mode             {self.mode} (dtype {self.dtype}, attention {self.attn_implementation})",
            f"parameters       {self.parameters:,}",
            f"footprint        {mib(self.footprint_bytes)}",
            "on devices       " + ", ".join(f"{d}: {mib(b)}" for d, b in self.bytes_by_device.items()),
            "GPU allocated    " + (", ".join(f"{d}: +{mib(b)}" for d, b in self.gpu_allocated_bytes.items()) or "no GPU"),
            f"process RAM      {mib(self.ram_before_bytes)} -> {mib(self.ram_after_bytes)}",
            f"load time        {self.load_seconds:.2f} s" + (f" (weights {self.weights_read})" if self.weights_read
                                                                   else ""),
            f"generation       {self.generation_path}",
            "linear layers    " + ", ".join(f"{k} x{v}" for k, v in self.linear_layers.items()),
            *(f"{kept_label(self.mode, language):<16} {kept_line(group, self.mode, language)}" for group in self.kept),
            "placement        " + _placement_text(self.device_map),
        ]
        if self.quantization:
            shown = {k: v for k, v in self.quantization.items() if _shown(k, self.quantization)}
            lines.append("quantization     " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        if self.compile_seconds:
            lines.append(f"compile warm-up  {self.compile_seconds:.1f} s, static KV cache {mib(self.static_cache_bytes)}")
        lines += [f"warning          {w}" for w in self.warnings]
        return "\n".join(lines)


_QUANT_KEYS_SHOWN = {
    "quant_method", "bits", "group_size", "desc_act", "sym", "backend", "load_in_8bit", "load_in_4bit",
    "llm_int8_threshold", "llm_int8_skip_modules", "llm_int8_enable_fp32_cpu_offload", "bnb_4bit_quant_type",
    "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage",
    "torchao_config", "int4_packing_format", "granularity", "weight_dtype", "activation_dtype",
}


def _shown(key: str, quantization: dict) -> bool:
    """Keys worth showing: the method's own (no bnb_4bit_* for int8, no int8 threshold for 4-bit)."""
    if key not in _QUANT_KEYS_SHOWN:
        return False
    if quantization.get("load_in_8bit"):
        return not key.startswith("bnb_4bit") and key != "load_in_4bit"
    if quantization.get("load_in_4bit"):
        return key not in {"llm_int8_threshold", "llm_int8_enable_fp32_cpu_offload", "load_in_8bit"}
    return True


def _placement_text(device_map: dict[str, str]) -> str:
    by_device: dict[str, list[str]] = {}
    for module, device in device_map.items():
        by_device.setdefault(str(device), []).append(module or "(whole model)")
    return "; ".join(f"{d}: {len(m)} module(s) [{_span(m)}]" for d, m in by_device.items())


def _span(modules: list[str]) -> str:
    return modules[0] if len(modules) == 1 else f"{modules[0]} … {modules[-1]}"
