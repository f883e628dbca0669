"""Before loading: does this model fit, in each mode, on the GPUs present (or on GPUs named in max_memory)?

The model is built from its config on the meta device (no weight is read or allocated) and placed module by module
by transformers' own device-map planner (`quant.placement.plan_placement`), which is asked for each parameter's bytes
by the mode's method (`QuantMethod.bytes_per_weight` for the weights it quantizes, `rest_bytes_per_weight` for the
others): the same numbers as `quant.registry.estimate_footprint`, now per device.

What it counts: the weights (and the model's buffers) only. What it ignores: the KV cache, activations and
temporary buffers of a forward pass, the CUDA context (about 0.3-0.5 GiB a GPU), kernels' workspaces, and the
allocator's fragmentation. To leave room for them, each device's budget is cut by `PLAN_HEADROOM` (10%) before the
weights are placed; a long context or a large batch can need more than that. A mode whose load peaks above its
loaded size (HQQ quantizes after a 16-bit load) is planned at its peak, as the registry's estimate is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psutil
import torch
from accelerate.utils import convert_file_size_to_int

from .errors import PlacementError
from .methods import METHODS, QuantMethod
from .placement import (DEVICE_MAP_CHOICES, STRATEGY_CHOICES as STRATEGIES, TENSOR_PARALLEL, WeightBytes,
                        cuda_device_count, parse_max_memory, plan_placement)
from .settings import load_settings
from .source import ModelSource

PLAN_HEADROOM = 0.10
"""Share of each device's budget kept free for what the plan does not count (see the module's docstring)."""


Verdict = Literal["gpu", "offload", "cpu", "no"]
"""gpu: every weight on GPUs; offload: part in CPU RAM (it runs, each offloaded layer copied to its GPU at every
forward pass); cpu: no GPU planned, all in CPU RAM; no: it does not fit (some weights are left over)."""

GiB = 2**30


def gib(n: int | float) -> str:
    """A size in GiB, or MiB / KiB below one GiB (the demo models weigh a few MiB)."""
    for unit, scale in (("GiB", GiB), ("MiB", 2**20)):
        if abs(n) >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def device_name(device: int | str) -> str:
    """A device as the plan names it: "0", "1" for GPUs, "cpu"."""
    return str(device)


# --- the model without weights ---------------------------------------------------------------------------------------

def meta_skeleton(source: ModelSource) -> torch.nn.Module:
    """The model built from its config on the meta device, output head tied as the checkpoint ties it.

    Under `torch.device("meta")`, not accelerate's `init_empty_weights`: that one creates each weight on the CPU and
    moves it, 0.07-0.4 s for the 8B shape on the CPU box against 0.02 s (1.2 s of an H200 host's profiled warm start,
    built twice a load: the registry's estimate and the placement check)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model_class = AutoModelForSeq2SeqLM if source.kind == "seq2seq" else AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = model_class.from_config(source.config)
    # from_config on the meta device leaves the output head untied: a model that ties it to the embeddings
    # (Llama-3.2-1B, Gemma, small Qwen) was counted twice, 17% too large at the 1B shape (H200 bench, 2026-11-30)
    skeleton.tie_weights()
    return skeleton


def quantized_weights(skeleton: torch.nn.Module) -> frozenset[str]:
    """Names of the weights a method quantizes: the linear layers', the output head's excepted (it stays 16-bit)."""
    out_head = skeleton.get_output_embeddings()
    return frozenset(f"{name}.weight" for name, m in skeleton.named_modules()
                     if isinstance(m, torch.nn.Linear) and m is not out_head)


def weight_bytes(source: ModelSource, method: QuantMethod, skeleton: torch.nn.Module,
                 quantization_config=None) -> WeightBytes:
    """Each parameter's bytes in `method`'s mode. `quantization_config`: what the load passes to `from_pretrained`
    (its options, a group size say, set the bytes per weight); a quantized checkpoint's own config comes first."""
    planned = quantization_config.to_dict() if hasattr(quantization_config, "to_dict") else quantization_config
    return WeightBytes(quantized_weights(skeleton), method.bytes_per_weight(source.checkpoint_quantization or planned),
                       method.rest_bytes_per_weight)


def footprint(skeleton: torch.nn.Module, sizes: WeightBytes) -> int:
    """Bytes of all the parameters (each tied weight once)."""
    return int(sum(p.numel() * sizes.param_element_size(skeleton, name, p) for name, p in skeleton.named_parameters()))


# --- budgets ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budgets:
    """Memory per device to plan with, before headroom, and where the numbers came from."""

    sizes: dict[int | str, int]
    source: Literal["max_memory", "free", "cpu_only"]
    """max_memory: as given; free: this machine's free GPU memory and available RAM; cpu_only: no GPU here and no
    max_memory, so RAM alone."""

    @property
    def gpus(self) -> list[int]:
        return sorted(k for k in self.sizes if isinstance(k, int))


def budgets_for(max_memory: str | dict | None) -> Budgets:
    """The budgets to plan with: `max_memory` as given (it may name GPUs this machine does not have), else each
    GPU's free memory and the available RAM. The disk is left out: this tool never offloads weights to disk."""
    parsed = parse_max_memory(max_memory, gpus_present=False)
    if parsed:
        sizes = {k: convert_file_size_to_int(v) for k, v in parsed.items() if k in ("cpu",) or isinstance(k, int)}
        if not sizes:
            raise PlacementError("max_memory names no GPU and no cpu to plan with.", "Write it as 0=80GiB, cpu=64GiB.")
        return Budgets(sizes, "max_memory")
    ram = psutil.virtual_memory().available
    count = cuda_device_count()
    if not count:
        return Budgets({"cpu": ram}, "cpu_only")
    return Budgets({**{i: torch.cuda.mem_get_info(i)[0] for i in range(count)}, "cpu": ram}, "free")


# --- the plan --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceShare:
    device: str
    """"0", "1"... for GPUs, "cpu", or "left over" (the weights that fit nowhere)."""
    bytes: int
    usable: int | None
    """The device's budget less the headroom (None for what is left over)."""


@dataclass(frozen=True)
class ModePlan:
    mode: str
    verdict: Verdict
    total_bytes: int
    """The sum of `devices`' bytes: the weights (the estimate) and the buffers."""
    devices: tuple[DeviceShare, ...]
    peak_note: bool = False
    """The mode's load peaks above its loaded size (its method's loaded bytes per weight are fewer)."""

    def on(self, device: str) -> int:
        return sum(d.bytes for d in self.devices if d.device == device)

    @property
    def fits(self) -> bool:
        return self.verdict != "no"

    @property
    def only_gpu(self) -> str | None:
        """"cuda:N" where every weight goes to GPU N, else None (split over GPUs, offloaded, CPU, or no fit)."""
        used = [d.device for d in self.devices if d.bytes]
        return f"cuda:{used[0]}" if self.verdict == "gpu" and len(used) == 1 else None

    def reason(self, language: str = "en") -> str:
        """One line on why, in English or Korean (quant.ui_strings, `plan.reason.*`)."""
        words = _words(language)
        gpus = [d for d in self.devices if d.device not in ("cpu", LEFT_OVER) and d.bytes]
        usable = sum(d.usable or 0 for d in self.devices if d.device != LEFT_OVER)
        line = words[f"plan.reason.{self.verdict}"].format(
            total=gib(self.total_bytes), cpu=gib(self.on("cpu")), left=gib(self.on(LEFT_OVER)), usable=gib(usable),
            gpus=", ".join(d.device for d in gpus) or "-",
            spare=gib(sum((d.usable or 0) - d.bytes for d in self.devices if d.device not in ("cpu", LEFT_OVER))))
        return line + (words["plan.reason.peak"] if self.peak_note else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "reason": self.reason()}


LEFT_OVER = "left over"


@dataclass(frozen=True)
class MemoryPlan:
    """Per mode, where the weights would go and whether they fit, within budgets that `note` names."""

    model: str
    device_map: str
    budgets: dict[str, int]
    """Per device, before headroom."""
    budget_source: str
    headroom: float
    modes: list[ModePlan] = field(default_factory=list)
    placements_mode: str | None = None
    placements: list["PlacementChoice"] = field(default_factory=list)
    """The placements `placements_mode` has on these GPUs (`placement_choices`), where one was asked for."""

    @property
    def devices(self) -> list[str]:
        """The devices the table shows: each budget's, then "left over" where some mode has weights left over."""
        extra = [LEFT_OVER] if any(m.on(LEFT_OVER) for m in self.modes) else []
        return [*self.budgets, *extra]

    def mode(self, name: str) -> ModePlan:
        return next(m for m in self.modes if m.mode == name)

    def note(self, language: str = "en") -> str:
        """What the plan is for (the budgets and where they came from) and the headroom, in one paragraph."""
        words = _words(language)
        where = ", ".join(f"{_device_label(d, words)} {gib(b)}" for d, b in self.budgets.items())
        line = words[f"plan.budgets.{self.budget_source}"].format(budgets=where, device_map=self.device_map)
        return line + " " + words["plan.headroom"].format(percent=round(self.headroom * 100))

    def to_dict(self) -> dict:
        return {"model": self.model, "device_map": self.device_map, "budgets": self.budgets,
                "budget_source": self.budget_source, "headroom": self.headroom, "note": self.note(),
                "modes": [m.to_dict() for m in self.modes], "placements_mode": self.placements_mode,
                "placements": [p.to_dict() for p in self.placements]}

    def to_text(self) -> str:
        """The CLI's table."""
        words = _words("en")
        devices = self.devices
        header = f"{'mode':<14}{'verdict':<9}" + "".join(f"{_device_label(d, words):>12}" for d in devices)
        lines = [self.note(), "", header + f"{'total':>12}  reason"]
        for m in self.modes:
            cells = "".join(f"{gib(m.on(d)) if m.on(d) else '-':>12}" for d in devices)
            lines.append(f"{m.mode:<14}{m.verdict:<9}{cells}{gib(m.total_bytes):>12}  {m.reason()}")
        if self.placements:
            lines += ["", words["placements.title"].format(mode=self.placements_mode)]
            lines += [f"- {p.describe()}" for p in self.placements]
            lines += ["", words["placements.loadable"]]
        return "\n".join(lines)

    def to_markdown(self, language: str = "en", chosen: str | None = None) -> str:
        """The Model tab's "Fits on your GPUs?" table; `chosen`: the mode the form has, in bold."""
        words = _words(language)
        devices = self.devices
        header = [words["plan.col.mode"], words["plan.col.verdict"], *(_device_label(d, words) for d in devices),
                  words["plan.col.total"], words["plan.col.reason"]]
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in self.modes:
            name = f"**{m.mode}**" if m.mode == chosen else m.mode
            cells = [name, words[f"plan.verdict.{m.verdict}"], *(gib(m.on(d)) if m.on(d) else "" for d in devices),
                     gib(m.total_bytes), m.reason(language)]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        text = f"{self.note(language)}\n\n" + "\n".join(rows)
        if self.placements:
            text += "\n\n" + words["placements.title"].format(mode=self.placements_mode) + "\n\n"
            text += "\n".join(f"- {p.describe(language)}" for p in self.placements)
            text += "\n\n" + words["placements.loadable"]
        return text


def _words(language: str) -> dict:
    from .ui_strings import EN, KO

    return KO if language == "ko" else EN


def _device_label(device: str, words: dict) -> str:
    if device == "cpu":
        return words["plan.device.cpu"]
    if device == LEFT_OVER:
        return words["plan.device.left"]
    return words["plan.device.gpu"].format(index=device)


def planned_modes(source: ModelSource) -> list[str]:
    """The modes that could load this checkpoint: every load-time mode for an unquantized one, else the method that
    loads its quantization."""
    return [name for name, method in METHODS.items() if method.loads_checkpoint(source.checkpoint_quantization)]


def plan_mode(skeleton: torch.nn.Module, sizes: WeightBytes, device_map: str, budgets: Budgets, mode: str,
              headroom: float = PLAN_HEADROOM, peak_note: bool = False) -> ModePlan:
    """Where one mode's weights would go within `budgets` (each cut by `headroom`), and the verdict.

    A strategy (auto, balanced, balanced_low_0, sequential) over budgets that include a GPU is placed by transformers'
    planner; without a GPU, or for one device (cpu, cuda, cuda:N), the whole model goes to that device, as the
    load does (quant.loader.prepare)."""
    usable = {k: int(v * (1 - headroom)) for k, v in budgets.sizes.items()}
    text = (device_map or "auto").strip().lower()
    used: dict[str, int] = {}
    if text == TENSOR_PARALLEL and len(budgets.gpus) >= 2:  # each GPU holds its slice of every layer
        share = _tensor_parallel_bytes(skeleton, sizes, len(budgets.gpus))
        used = {device_name(g): share for g in budgets.gpus}
    else:
        if text in STRATEGIES and budgets.gpus:
            placement = plan_placement(skeleton, text, usable, sizes)
        else:  # tensor_parallel without 2 GPUs: the CPU ranks' slices add up to the whole model in RAM
            placement = {"": _single_device("cpu" if text == TENSOR_PARALLEL else text, budgets)}
        from transformers.integrations.accelerate import compute_module_sizes

        module_sizes, _ = compute_module_sizes(skeleton, sizes, only_modules=False)
        for name, device in placement.items():
            used[device_name(device)] = used.get(device_name(device), 0) + int(module_sizes[name])
    # one device: the weights fit or they do not (the load puts them all there)
    for device, n in list(used.items()):
        key = int(device) if device.isdigit() else device
        if key in usable and n > usable[key]:
            used[LEFT_OVER] = used.get(LEFT_OVER, 0) + n - usable[key]
            used[device] = usable[key]
    if "disk" in used:
        used[LEFT_OVER] = used.get(LEFT_OVER, 0) + used.pop("disk")
    shares = [DeviceShare(device_name(k), used.get(device_name(k), 0), v) for k, v in usable.items()]
    if used.get(LEFT_OVER):
        shares.append(DeviceShare(LEFT_OVER, used[LEFT_OVER], None))
    total = sum(used.values())
    if used.get(LEFT_OVER):
        verdict: Verdict = "no"
    elif not budgets.gpus:
        verdict = "cpu"
    elif used.get("cpu"):
        verdict = "offload"
    else:
        verdict = "gpu"
    return ModePlan(mode, verdict, total, tuple(shares), peak_note)


def _single_device(text: str, budgets: Budgets) -> int | str:
    """The budget key of a one-device device_map (cpu, cuda, cuda:N, N); a strategy without GPUs is the CPU."""
    if text in STRATEGIES or text == "cpu":
        device: int | str = "cpu"
    elif text == "cuda" or text.startswith("cuda:") or text.isdigit():
        tail = text.partition(":")[2] if text.startswith("cuda") else text
        device = int(tail or 0) if (tail or "0").isdigit() else -1
    else:
        raise PlacementError(f"Unknown device_map {text!r}.", f"Use one of {', '.join(DEVICE_MAP_CHOICES)} or cuda:N.")
    if device not in budgets.sizes:
        if budgets.source == "cpu_only":
            raise PlacementError(f"device_map {text} asks for a GPU, and this machine has none.",
                                 "Give max_memory such as 0=80GiB to plan for one, or pick cpu.")
        what = "CPU RAM" if device == "cpu" else f"GPU {device}"
        raise PlacementError(f"device_map {text} puts the model on {what}, which the budgets do not name.",
                             f"Add it to max_memory (e.g. {device}=80GiB), or pick a strategy such as auto.")
    return device


def plan_memory(source: ModelSource, device_map: str | None = "auto", max_memory: str | dict | None = None,
                modes: list[str] | None = None, headroom: float = PLAN_HEADROOM,
                placements_mode: str | None = None) -> MemoryPlan:
    """Per mode (every mode that could load `source`, or `modes`): the bytes on each device for `device_map` within
    the budgets (`max_memory` as given, else the GPUs present with their free memory and the available RAM; RAM
    alone where there is no GPU and no max_memory), cut by `headroom`, and whether it fits; with `placements_mode`,
    also the placements that mode has (one GPU, split, tensor parallel) and their costs. Nothing is loaded."""
    if not 0 <= headroom < 1:
        raise PlacementError(f"headroom must be between 0 and 1 (got {headroom}).")
    budgets = budgets_for(max_memory)
    skeleton = meta_skeleton(source)
    plans = []
    for name in modes or planned_modes(source):
        method = METHODS[name]
        sizes = weight_bytes(source, method, skeleton)
        peak = method.loaded_bytes_per_weight(source.checkpoint_quantization, _default_options()) < sizes.per_weight
        plans.append(plan_mode(skeleton, sizes, device_map or "auto", budgets, name, headroom, peak))
    placements = placement_choices(source, placements_mode, max_memory, headroom) if placements_mode else []
    return MemoryPlan(source.ref, (device_map or "auto").strip().lower(),
                      {device_name(k): v for k, v in budgets.sizes.items()}, budgets.source, headroom, plans,
                      placements_mode if placements else None, placements)


def plan_model(model: str, *, revision: str | None = None, token: str | None = None, folders=None,
               device_map: str | None = "auto", max_memory: str | dict | None = None,
               modes: list[str] | None = None, placements_mode: str | None = None) -> MemoryPlan:
    """`plan_memory` for a model reference as the Model tab and the CLI take it: only its config is read (with the
    requester's token and folder rule, as a load would)."""
    from .source import resolve_source

    for mode in modes or []:
        if mode not in METHODS:
            raise PlacementError(f"Unknown mode {mode!r}.", f"Modes: {', '.join(METHODS)}.")
    source = resolve_source(model or "", revision=revision or None, token=token or None,
                            trust_remote_code=load_settings().trust_remote_code, folders=folders)
    if placements_mode and placements_mode not in planned_modes(source):
        placements_mode = None  # a mode this checkpoint cannot load: the table says so, no placements to list
    return plan_memory(source, device_map, max_memory, modes=modes, placements_mode=placements_mode)


def _default_options():
    from .methods import QuantOptions

    return QuantOptions()


def refuse_unplaceable(source: ModelSource, mode: str, quantization_config, device_map: str,
                       max_memory: dict | None) -> None:
    """Refuse a load that a strategy would spread over devices when its weights cannot be placed: some module fits
    on no device within the budgets (max_memory as given, else what is free now), with no headroom (the budgets
    are the caps accelerate honours; the plan's headroom is advice). Totals are checked elsewhere
    (quant.placement.check_fits, the registry's room check), also for a load on one device."""
    budgets = budgets_for(max_memory)
    if not budgets.gpus:
        return
    try:
        skeleton = meta_skeleton(source)
    except Exception:  # noqa: BLE001 - as the registry's estimate: a model the meta device cannot build still loads
        return
    method = METHODS[mode]
    plan = plan_mode(skeleton, weight_bytes(source, method, skeleton, quantization_config), device_map, budgets,
                     mode, headroom=0.0)
    if plan.fits:
        return
    where = ", ".join(f"{_device_label(d.device, _words('en'))} {gib(d.usable)}" for d in plan.devices
                      if d.usable is not None)
    raise PlacementError(
        f"{source.ref} in {mode} does not fit with device_map={device_map}: {gib(plan.on(LEFT_OVER))} of its "
        f"{gib(plan.total_bytes)} would be left over within {where} (no decoder block is split across devices).",
        "Add cpu=<size> to max_memory to offload, give the GPUs more, or pick a smaller mode "
        "(python -m quant plan MODEL shows every mode).")


# --- placement choices -----------------------------------------------------------------------------------------------

PlacementKind = Literal["one_gpu", "split", "tensor_parallel"]
PLACEMENT_KINDS: tuple[PlacementKind, ...] = ("one_gpu", "split", "tensor_parallel")


@dataclass(frozen=True)
class PlacementChoice:
    """One way to put a model in one mode on the GPUs present: whether it is offered, the weights' bytes on each
    GPU it uses, and what it costs in traffic between GPUs (the words: `placements.cost.<kind>`)."""

    kind: PlacementKind
    offered: bool
    gpus: tuple[int, ...] = ()
    """The GPUs it uses."""
    per_gpu: tuple[int, ...] = ()
    """The weights' bytes on each of `gpus` (as the memory planner counts them)."""
    usable: tuple[int, ...] = ()
    """Each GPU's budget less the planner's headroom."""
    refusal: str = ""
    """Why it is not offered: a `placements.refused.<refusal>` string, formatted with `refusal_args`."""
    refusal_args: tuple[tuple[str, Any], ...] = ()
    layers: int = 0

    @property
    def fits(self) -> bool:
        return self.offered and all(b <= u for b, u in zip(self.per_gpu, self.usable))

    def cost(self, language: str = "en") -> str:
        words = _words(language)
        return words[f"placements.cost.{self.kind}"].format(
            boundaries=max(0, len([b for b in self.per_gpu if b]) - 1), layers=self.layers,
            all_reduces=2 * self.layers)

    def describe(self, language: str = "en") -> str:
        """One line: what it is, its bytes per GPU and its cost, or why it is not offered."""
        words = _words(language)
        name = words[f"placements.kind.{self.kind}"]
        if not self.offered:
            return f"{name}: " + words[f"placements.refused.{self.refusal}"].format(**dict(self.refusal_args))
        where = ", ".join(f"{_device_label(str(g), words)} {gib(b)}" for g, b in zip(self.gpus, self.per_gpu))
        fits = words["placements.fits" if self.fits else "placements.does_not_fit"]
        return f"{name}: {where} ({fits}). {self.cost(language)}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offered": self.offered, "fits": self.fits, "gpus": list(self.gpus),
                "per_gpu": list(self.per_gpu), "usable": list(self.usable), "describe": self.describe()}


def tensor_parallel_refusal(source: ModelSource, method: QuantMethod, gpu_count: int,
                            on_gpus: bool = True) -> tuple[str, dict] | None:
    """Why transformers' tensor parallelism cannot run this model in this mode over `gpu_count` ranks, or None.

    It needs the architecture's `base_model_tp_plan`, heads that divide evenly (each GPU holds whole attention and
    KV heads: transformers' own `get_kv_heads_per_rank`), and a mode that quant.tensor_parallel can run (the
    method's `tensor_parallel_refusal`: 16/32-bit weights only). Ranks that are GPUs (`on_gpus`, not the CPU
    ranks of QUANT_TENSOR_PARALLEL_CPU_RANKS) also need the operator's QUANT_TENSOR_PARALLEL_GPUS=on: measured,
    its eager decode is much slower than a split over the same GPUs (the refusal's words say how much)."""
    from transformers.distributed.tensor_parallel import get_kv_heads_per_rank

    config = source.config
    plan = getattr(config, "base_model_tp_plan", None)
    if gpu_count < 2:
        return "gpus", {"gpus": gpu_count}
    if source.kind != "causal" or not plan:
        return "no_plan", {"architecture": source.architecture}
    if method.tensor_parallel_refusal:
        return method.tensor_parallel_refusal, {"mode": method.name}
    heads = getattr(config, "num_attention_heads", None) or 0
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % gpu_count or get_kv_heads_per_rank(plan, kv_heads, gpu_count) is None:
        return "heads", {"heads": heads, "kv_heads": kv_heads, "gpus": gpu_count}
    if on_gpus and not load_settings().tensor_parallel_gpus:
        return "gpus_off", {}
    return None


def _tensor_parallel_bytes(skeleton: torch.nn.Module, sizes: WeightBytes, world: int) -> int:
    """One GPU's bytes under the model's tp_plan: a parameter whose style shards it (the style's class shards
    parameters; a row-wise bias stays whole) holds 1/world of its bytes, rounded up; the others are whole, and so are
    the input embedding and the output head, which quant.tensor_parallel.localize gathers whole on every rank."""
    from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES, _get_parameter_plan
    from transformers.distributed.tensor_parallel import RowwiseParallel, TensorParallelLayer

    plan = skeleton.tp_plan or {}
    total = 0.0
    seen: set[int] = set()
    whole = {id(p) for end in (skeleton.get_input_embeddings(), skeleton.get_output_embeddings()) if end is not None
             for p in end.parameters()}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel() * sizes.param_element_size(skeleton, name, param)
        style = _get_parameter_plan(name, plan, is_weight=True)
        layer = ALL_PARALLEL_STYLES[style] if style in ALL_PARALLEL_STYLES else None
        shards = (layer is not None and type(layer).shard_param is not TensorParallelLayer.shard_param
                  and not (isinstance(layer, RowwiseParallel) and name.endswith(".bias")) and id(param) not in whole)
        total += -(-n // world) if shards else n
    total += sum(b.numel() * sizes.rest for b in skeleton.buffers())  # rotary tables...: whole on every GPU
    return int(total)


def placement_choices(source: ModelSource, mode: str, max_memory: str | dict | None = None,
                      headroom: float = PLAN_HEADROOM) -> list[PlacementChoice]:
    """The placements this model has in `mode` on the GPUs of the budgets (max_memory's, else those present): one
    GPU, split over the GPUs (device_map, each GPU holds whole layers in turn) and tensor parallel (each GPU holds a
    slice of every layer), with the weights' (and buffers') bytes per GPU and the traffic each costs. Nothing is loaded."""
    if mode not in METHODS:
        raise PlacementError(f"Unknown mode {mode!r}.", f"Modes: {', '.join(METHODS)}.")
    method = METHODS[mode]
    budgets = budgets_for(max_memory)
    gpus = tuple(budgets.gpus)
    usable = {g: int(budgets.sizes[g] * (1 - headroom)) for g in gpus}
    skeleton = meta_skeleton(source)
    sizes = weight_bytes(source, method, skeleton)
    layers = int(getattr(source.config, "num_hidden_layers", 0) or 0)
    choices = []
    if gpus:
        total = plan_mode(skeleton, sizes, str(gpus[0]), budgets, mode, headroom).total_bytes
        choices.append(PlacementChoice("one_gpu", True, gpus[:1], (total,), (usable[gpus[0]],), layers=layers))
    else:
        choices.append(PlacementChoice("one_gpu", False, refusal="no_gpu"))
    if len(gpus) >= 2:
        gpu_only = Budgets({g: budgets.sizes[g] for g in gpus}, budgets.source)
        split = plan_mode(skeleton, sizes, "balanced", gpu_only, mode, headroom)
        per_gpu = tuple(split.on(str(g)) + (split.on(LEFT_OVER) if g == gpus[-1] else 0) for g in gpus)
        choices.append(PlacementChoice("split", True, gpus, per_gpu, tuple(usable[g] for g in gpus), layers=layers))
    else:
        choices.append(PlacementChoice("split", False, refusal="gpus", refusal_args=(("gpus", len(gpus)),)))
    refusal = tensor_parallel_refusal(source, method, len(gpus))
    if refusal:
        choices.append(PlacementChoice("tensor_parallel", False, refusal=refusal[0],
                                       refusal_args=tuple(refusal[1].items()), layers=layers))
    else:
        share = _tensor_parallel_bytes(skeleton, sizes, len(gpus))
        choices.append(PlacementChoice("tensor_parallel", True, gpus, (share,) * len(gpus),
                                       tuple(usable[g] for g in gpus), layers=layers))
    return choices
