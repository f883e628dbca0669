"""Compiled decode in segments: a captured graph per device segment of a model split over GPUs, and one compiled
decoder layer for all layers on one device (regional compilation).

A model placed with accelerate's `device_map` / `max_memory` over several GPUs runs each module on its own device,
and accelerate's hooks move the activations between them. One CUDA graph cannot hold that step: a graph is captured
on one device's stream, and a copy to another device waits on that device's stream. Eager, the split model decoded a
1B Llama at 46 tok/s where the same model on one GPU, compiled, made 630 (2 H200s).

So the decode step is cut where the device changes:

* The decoder layers (`model.model.layers`, Llama/Qwen/Mistral/Gemma style) are split into segments: contiguous
  layers on one device (`SegmentPlan`). QUANT_DECODE_SEGMENTS cuts them further, also on one device (tests, and to
  measure the segments' own cost).
* The first group runs the model's own forward up to the first layer on the embedding's device: the embedding,
  transformers' masks and rotary embeddings, exactly as the model builds them. It is the model's forward, run on a
  shallow copy of the decoder whose layers are taps that keep what each layer is called with (`_Tap`), so nothing
  is rewritten per architecture (Gemma's embedding scale, per-layer-type masks and rotary tables come as they are).
  Then that device's layers.
* Each further segment is one compiled call: its layers, called with the tensors the first group made for them,
  copied to its device; after the last layer the final norm, then the model's own head (`lm_head`, soft-capping,
  scaling: the CausalLM's forward on a copy whose decoder hands back the hidden state).
* On CUDA each group is captured as one CUDA graph on its device; a step replays them in order, with the hidden
  state (and the few per-step tensors: mask, rotary cos/sin, positions) copied between devices by eager copies in
  between, which PyTorch orders against both devices' streams without a host sync.

The static cache's layers live on their layer's device: transformers 5's StaticLayer allocates its tensors at its
first update, on the device of the keys it is given, which is its layer's (the prefill runs the model as placed).

The groups run accelerate-free copies of the modules (`_unhooked`: the same parameters and buffers, each module's
class forward). accelerate's hooks (AlignDevicesHook) move a module's inputs to its device and its outputs back; inside
a group everything is already on its device, so they would do nothing, but accelerate wraps their pre- and
post-forward in `torch.compiler.disable`: under torch.compile each hooked module is a graph break, the step falls
into dozens of small graphs, and on the demo Llama dynamo's recompile limit was reached at 4 layers (the resume
function after a hook is one code object for every hooked module). The copies are made once per loop; the model
itself keeps its hooks for the eager prefill and the eager path.

The same groups serve regional compilation on one device (QUANT_COMPILE_REGIONS=layers, the default for every
model whose structure is recognised): one segment, whose group is run as Python calls of three compiled regions (the
prologue; one decoder layer, called for every layer with that layer's view of the cache, `_LayerCache`; the norm and
head) and captured as one CUDA graph all the same. dynamo traces and Inductor compiles one layer instead of all of
them: at 8B on an H200 the compile at load went from 38.7 to 4.6 s at the same decode rate
(bench/results/methods-bench-8b-cuda-regions.md).

A model whose structure is not recognised stays eager with the reason (split or cut), or compiles whole (regional).
Every loop checks its captured step against the model's own forward once at load (`SegmentedDecodeLoop.capture`), so a
structure recognised wrongly (something the model's forward does between its layers, or after them, that the segments
skip) fails to compile, loudly: a split model then stays on the eager path, a regional one compiles whole.
"""

from __future__ import annotations

import contextlib
import copy
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .decode import DecodeLoop, _capture_stream
from .ragged import CHECK_TOLERANCE, relative_error


@dataclass(frozen=True)
class SegmentPlan:
    """Where the parts of a split decoder run: the embedding, each segment of layers, the final norm, the head."""

    embed: torch.device
    segments: tuple[tuple[torch.device, range], ...]
    norm: torch.device
    head: torch.device

    @property
    def devices(self) -> list[torch.device]:
        """The devices in the order the step visits them first."""
        seen: list[torch.device] = []
        for device in (self.embed, *(d for d, _ in self.segments), self.norm, self.head):
            if device not in seen:
                seen.append(device)
        return seen

    def describe(self) -> str:
        count = len(self.segments)
        return f"{count} segment{'s' if count > 1 else ''} over {', '.join(map(str, self.devices))}"


def _module_devices(module: nn.Module) -> set[torch.device]:
    return {t.device for t in (*module.parameters(), *module.buffers())}


def _one_device(module: nn.Module, what: str) -> torch.device | str:
    devices = _module_devices(module)
    if len(devices) != 1:
        return f"{what} is split over {', '.join(sorted(map(str, devices))) or 'no device'}"
    return next(iter(devices))


def _decoder(model) -> nn.Module | None:
    return getattr(model, getattr(model, "base_model_prefix", "") or "model", None)


def segment_plan(model, cuts: int = 0) -> SegmentPlan | str:
    """Where each part of `model`'s decode step runs, or why the model's structure is not one the segmented step
    knows. `cuts` (QUANT_DECODE_SEGMENTS): at least this many segments of layers, also on one device."""
    decoder = _decoder(model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return f"{type(model).__name__} keeps no decoder layers at model.layers"
    norm, embed, head = getattr(decoder, "norm", None), model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(norm, nn.Module):
        return f"{type(model).__name__} has no final norm at model.norm"
    if embed is None or not any(child is embed for child in decoder.children()):
        return f"{type(model).__name__}'s input embedding is not a module of its decoder"
    if head is None or not any(child is head for child in model.children()):
        return f"{type(model).__name__}'s output head is not a module of the model"
    places = [_one_device(layer, f"decoder layer {i}") for i, layer in enumerate(layers)]
    places += [_one_device(m, name) for m, name in ((embed, "the input embedding"), (norm, "the final norm"),
                                                      (head, "the output head"))]
    refusal = next((p for p in places if isinstance(p, str)), None)
    if refusal:
        return refusal
    *layer_devices, embed_device, norm_device, head_device = places
    elsewhere = [name for name, child in decoder.named_children()
                 if child is not layers and child is not norm and child is not embed
                 and any(p.device != embed_device for p in child.parameters())]
    if elsewhere:
        return f"model.{elsewhere[0]} has weights away from the input embedding's {embed_device}"
    offloaded = sorted({str(d) for d in places if d.type not in ("cuda", "cpu")})
    if offloaded:
        return f"weights on {', '.join(offloaded)} (offloaded)"
    if layer_devices[0] != embed_device:
        # The first graph builds the masks on the embedding's GPU from a static cache whose first layer lives on the
        # next one: its capture failed there (2 H200s, 2026-12-01: "operation failed due to a previous error during
        # capture"). accelerate leaves a GPU with the embedding alone only when max_memory gives it no room for more.
        return (f"the input embedding's {embed_device} holds no decoder layer (decoder layer 0 is on "
                f"{layer_devices[0]}): give that GPU room for its first layers too")
    count = len(layers)
    cut_at = {round(k * count / cuts) for k in range(1, cuts)} if cuts > 1 else set()
    segments: list[tuple[torch.device, range]] = []
    start = 0
    for i in range(1, count + 1):
        if i == count or layer_devices[i] != layer_devices[start] or i in cut_at:
            segments.append((layer_devices[start], range(start, i)))
            start = i
    return SegmentPlan(embed=embed_device, segments=tuple(segments), norm=norm_device, head=head_device)


# --- the modules the groups run -------------------------------------------------------------------------------------

def _drop_hook(clone: nn.Module) -> None:
    """Remove accelerate's hook from a copied module. The hook replaced the module's forward by an instance attribute
    bound to the original module, and kept the forward it wrapped in `_old_forward`: the copy gets that forward back,
    bound to the copy (the class's forward, or one a library set on the instance before accelerate did)."""
    if "_hf_hook" not in clone.__dict__:
        return
    wrapped = clone.__dict__.pop("_old_forward", None)
    for name in ("forward", "_hf_hook"):
        clone.__dict__.pop(name, None)
    if isinstance(wrapped, types.MethodType) and wrapped.__func__ is not type(clone).forward:
        clone.__dict__["forward"] = types.MethodType(wrapped.__func__, clone)
    elif wrapped is not None and not isinstance(wrapped, types.MethodType):
        clone.__dict__["forward"] = wrapped


def _shallow_copy(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """`module` with some children replaced: same class, same parameters, without accelerate's hook."""
    clone = copy.copy(module)
    _drop_hook(clone)
    clone.__dict__["_modules"] = {**module._modules, **children}
    return clone


def _unhooked(module: nn.Module) -> nn.Module:
    """`module` as is when no accelerate hook sits in it; else a copy of its tree (sharing every parameter and
    buffer) whose modules run their class's forward."""
    if not any(hasattr(m, "_hf_hook") for m in module.modules()):
        return module
    clone = copy.copy(module)
    _drop_hook(clone)
    clone.__dict__["_modules"] = {k: None if v is None else _unhooked(v) for k, v in module._modules.items()}
    return clone


def _moved_copy(module: nn.Module, device: torch.device) -> nn.Module | None:
    """A copy of a module without weights (a rotary embedding's tables) on `device`, without accelerate's hooks;
    None when it has weights."""
    if any(True for _ in module.parameters()):
        return None
    clone = copy.copy(module)
    _drop_hook(clone)
    for name, value in list(clone.__dict__.items()):
        if isinstance(value, torch.Tensor):
            clone.__dict__[name] = value.to(device)
    clone.__dict__["_buffers"] = {k: None if v is None else v.to(device) for k, v in module._buffers.items()}
    children = {k: _moved_copy(v, device) for k, v in module._modules.items()}
    if any(v is None for v in children.values()):
        return None
    clone.__dict__["_modules"] = children
    return clone


class _Tap(nn.Module):
    """Stands in for a decoder layer in the first group's copy of the decoder: keeps what the model's forward calls
    the layer with, and hands the hidden state on unchanged. Carries the layer's plain attributes (Gemma 3's forward
    reads `decoder_layer.attention_type`)."""

    def __init__(self, layer: nn.Module, index: int, sink: list) -> None:
        super().__init__()
        for name, value in vars(layer).items():
            if not name.startswith("_") and name != "training" and isinstance(value, (str, int, float, bool)):
                setattr(self, name, value)
        self.index = index
        self.sink = sink

    def forward(self, hidden_states, *args, **kwargs):
        self.sink.append((self.index, hidden_states, args, kwargs))
        return hidden_states


class _Given(nn.Module):
    """Stands in for the decoder in the head's copy of the model: hands back the hidden state it is given as
    `inputs_embeds`, so the model's own forward applies its head (lm_head, soft-capping, scaling) to it. The output
    is a mixture-of-experts decoder's (no router logits): Mixtral's forward reads `router_logits` from it."""

    def forward(self, inputs_embeds=None, **kwargs):
        from transformers.modeling_outputs import MoeModelOutputWithPast

        return MoeModelOutputWithPast(last_hidden_state=inputs_embeds)


@dataclass(frozen=True)
class _Slot:
    """A tensor argument of a layer in a call template: the index of the tensor in its group's inputs."""

    index: int


_CONSTANTS = (type(None), bool, int, float, str, torch.dtype, torch.device)


def _tensor_leaves(value, out: list) -> list:
    """The tensors of a layer call's arguments, in a fixed walk order (tuples, lists and dicts are walked)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _tensor_leaves(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _tensor_leaves(item, out)
    return out


def _remade(container, items: list):
    """A tuple or list like `container` (a named tuple too) holding `items`."""
    return type(container)(*items) if hasattr(container, "_fields") else type(container)(items)


def _template(value, slot_of: Callable[[torch.Tensor], int]):
    """`value` with each tensor replaced by its `_Slot`; `_NotRecognised` for an argument the walk cannot see into
    (an object holding tensors would be passed as it was at load, stale at every step)."""
    if isinstance(value, torch.Tensor):
        return _Slot(slot_of(value))
    if isinstance(value, (tuple, list)):
        return _remade(value, [_template(item, slot_of) for item in value])
    if isinstance(value, dict):
        return {key: _template(item, slot_of) for key, item in value.items()}
    from transformers.cache_utils import Cache

    if isinstance(value, (*_CONSTANTS, Cache)):
        return value
    raise _NotRecognised(f"a decoder layer is called with a {type(value).__name__}, which the segments cannot pass on")


def _rebuild(template, tensors):
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, (tuple, list)):
        return _remade(template, [_rebuild(item, tensors) for item in template])
    if isinstance(template, dict):
        return {key: _rebuild(item, tensors) for key, item in template.items()}
    return template


class _NotRecognised(RuntimeError):
    pass


class _LayerCache:
    """One decoder layer's view of the static cache, handed to that layer in place of the whole cache when the layers
    share one compiled call (regional compilation).

    Why: a layer writes its keys and values with `past_key_values.update(k, v, self.layer_idx)`, and the cache picks
    `self.layers[layer_idx]`. dynamo reads the index as a constant of the module, so the same layer code compiled once
    per layer (32 graphs for an 8B Llama, each traced and checked on its own). Given its own cache layer, the layer's
    index is passed along unused and one graph serves every layer of the same structure. Anything else a layer asks
    of its cache is the whole cache's answer."""

    def __init__(self, cache, index: int) -> None:
        self.cache = cache
        self.layer = cache.layers[index]

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        return self.layer.update(key_states, value_states, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.cache, name)


def _with_cache(template, cache, view):
    """A layer's call template with `cache` replaced by that layer's `view` of it."""
    if template is cache:
        return view
    if isinstance(template, (tuple, list)):
        return _remade(template, [_with_cache(item, cache, view) for item in template])
    if isinstance(template, dict):
        return {key: _with_cache(item, cache, view) for key, item in template.items()}
    return template


def _call_layer(layer, hidden, args, kwargs):
    """One decoder layer: the function every layer's call goes through when the layers share one compiled call."""
    return layer(hidden, *args, **kwargs)


@dataclass(eq=False)
class _Group:
    """One compiled call (one CUDA graph) on one device: the prologue and/or layers, and/or the norm and/or the
    head."""

    device: torch.device
    layers: range
    prologue: bool = False
    norm: bool = False
    head: bool = False
    fn: Callable | None = None
    needs: tuple[int, ...] = ()
    """Indices, into the first group's tensors, of the tensors this group's layers take (one per distinct tensor)."""
    templates: tuple = ()
    """(args, kwargs) per layer, with `_Slot`s into `needs`."""
    graph: torch.cuda.CUDAGraph | None = None
    inputs: tuple = ()
    """(hidden, tensors) this group's graph reads (CUDA; the first group reads the loop's buffers)."""
    output: Any = None
    copies: tuple = ()
    """(destination, source) copied before this group's graph replays (CUDA, across devices)."""

    def describe(self) -> str:
        first, last = (self.layers.start, self.layers.stop - 1) if len(self.layers) else (0, -1)
        parts = (["prologue"] if self.prologue else []) + ([] if last < first else [f"layer {first}"] if first == last
                                                            else [f"layers {first}-{last}"])
        return f"{' + '.join(parts + (['norm'] if self.norm else []) + (['head'] if self.head else []))} on {self.device}"


def _groups(plan: SegmentPlan) -> list[_Group]:
    """The plan's compiled calls: the prologue joins the first segment, the norm and the head the last group, where
    they share its device."""
    groups = [] if plan.segments[0][0] == plan.embed else [_Group(plan.embed, range(0), prologue=True)]
    groups += [_Group(device, layers) for device, layers in plan.segments]
    groups[0].prologue = True
    if groups[-1].device != plan.norm:
        groups.append(_Group(plan.norm, range(0)))
    groups[-1].norm = True
    if groups[-1].device != plan.head:
        groups.append(_Group(plan.head, range(0)))
    groups[-1].head = True
    return groups


class SegmentedDecodeLoop(DecodeLoop):
    """A `DecodeLoop` whose step runs as one compiled call per segment (`_Group`), each captured as its own CUDA
    graph on CUDA (see the module's docstring).

    The step's bookkeeping differs from the one-device loop's: the slot and the position advance at the start of the
    step (in the first graph), so the tensors the first group hands to later segments, which may be the position
    buffer itself, are not changed under them before they are copied.
    """

    def __init__(self, model, *, batch_size: int, max_cache_len: int, plan: SegmentPlan, compile: Callable,
                 regional: bool = False) -> None:
        super().__init__(model, batch_size=batch_size, max_cache_len=max_cache_len, forward=None, device=plan.embed)
        self.plan = plan
        self.compile = compile
        """torch.compile with the path's settings."""
        self.regional = regional
        """Compile the decoder layer once for all layers (and the prologue, the norm + head on their own) instead of
        each group whole (QUANT_COMPILE_REGIONS=layers); a group is still one CUDA graph."""
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self.groups: list[_Group] = []
        self._leaf_count = 0

    @property
    def captured(self) -> bool:
        return bool(self.groups) and all(group.graph is not None for group in self.groups)

    # --- building the groups ----------------------------------------------------------------------------------------

    def _build(self) -> None:
        """The groups' compiled calls, from one eager run of the model's forward up to its layers (on the buffers
        the prefill set), which tells what each layer is called with."""
        model, plan = self.model, self.plan
        decoder = _decoder(model)
        layers = decoder.layers
        sink: list = []
        taps = nn.ModuleList(_Tap(layer, i, sink) for i, layer in enumerate(layers))
        children: dict[str, nn.Module] = {"layers": taps, "norm": nn.Identity()}
        for name, child in decoder.named_children():
            if child is layers or child is decoder.norm:
                continue
            if _module_devices(child) <= {plan.embed}:
                children[name] = _unhooked(child)
                continue
            moved = _moved_copy(child, plan.embed)
            if moved is None:
                raise _NotRecognised(f"model.{name} has weights away from the input embedding")
            children[name] = moved
        first = _shallow_copy(decoder, children)
        head = _shallow_copy(model, {name: _Given() if child is decoder else _unhooked(child)
                                     for name, child in model.named_children()})
        cache = self.cache

        def prologue(token, mask, position):
            first(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
            calls = list(sink)
            sink.clear()
            return calls

        # What each layer is called with: which arguments are tensors, and which of them are one tensor.
        with torch.inference_mode():
            calls = prologue(self.token, self.mask, self.position + 1)
        if [index for index, *_ in calls] != list(range(len(layers))):
            raise _NotRecognised("the model's forward does not call each decoder layer once, in order")
        if any(hidden is not calls[0][1] for _, hidden, _, _ in calls):
            raise _NotRecognised("the model's forward changes the hidden state between its decoder layers")
        flat = _tensor_leaves([(args, kwargs) for _, _, args, kwargs in calls], [])
        first_of = {}
        for j, tensor in enumerate(flat):
            first_of.setdefault(id(tensor), j)

        groups = _groups(plan)
        for group in groups:
            needs: dict[int, int] = {}  # first index in `flat` of a distinct tensor -> its index in the group's inputs

            def slot_of(tensor, needs=needs):
                return needs.setdefault(first_of[id(tensor)], len(needs))

            group.templates = tuple(_template((args, kwargs), slot_of)
                                    for i, (_, _, args, kwargs) in enumerate(calls) if i in group.layers)
            group.needs = tuple(needs)
        self._leaf_count = len(flat)
        norm = _unhooked(decoder.norm)
        if self.regional:
            views = [_LayerCache(cache, index) for index in range(len(cache.layers))]
            call_layer = self.compile(_call_layer)
            for group in groups:
                group.fn = self._regional_group_call(group, prologue, layers, norm, head, call_layer, views)
        else:
            for group in groups:
                group.fn = self.compile(self._group_call(group, prologue, layers, norm, head))
        self.groups = groups

    def _regional_group_call(self, group: _Group, prologue, layers, norm, head, call_layer, views) -> Callable:
        """A group as Python calls of compiled regions: the prologue (first group), each layer through the one
        compiled `call_layer` with its own view of the cache, then the norm and the head. Captured as one CUDA
        graph on CUDA like a group compiled whole."""
        layer_list = [_unhooked(layers[i]) for i in group.layers]
        templates = [_with_cache(template, self.cache, views[i]) for i, template in zip(group.layers, group.templates)]
        tail = self.compile(self._tail(group, norm, head)) if group.norm or group.head else None

        def run_layers(hidden, tensors):
            for layer, template in zip(layer_list, templates):
                args, kwargs = _rebuild(template, tensors)
                hidden = call_layer(layer, hidden, args, kwargs)
            return hidden if tail is None else tail(hidden)

        if group.prologue:
            def first_tensors(token, mask, position):
                calls = prologue(token, mask, position)
                return calls[0][1], tuple(_tensor_leaves([(args, kwargs) for _, _, args, kwargs in calls], []))

            compiled_prologue = self.compile(first_tensors)

            def first_group(token, mask, position):
                hidden, flat = compiled_prologue(token, mask, position)
                return run_layers(hidden, tuple(flat[j] for j in group.needs)), flat
            return first_group
        return run_layers

    @staticmethod
    def _tail(group: _Group, norm, head) -> Callable:
        def tail(hidden):
            if group.norm:
                hidden = norm(hidden)
            if group.head:
                hidden = head(inputs_embeds=hidden, use_cache=False, logits_to_keep=1).logits[:, -1]
            return hidden
        return tail

    @staticmethod
    def _group_call(group: _Group, prologue, layers, norm, head) -> Callable:
        layer_list = [_unhooked(layers[i]) for i in group.layers]
        templates = group.templates
        tail = SegmentedDecodeLoop._tail(group, norm, head)

        if group.prologue:
            def first_group(token, mask, position):
                calls = prologue(token, mask, position)
                flat = _tensor_leaves([(args, kwargs) for _, _, args, kwargs in calls], [])
                hidden = calls[0][1]
                for layer, (_, _, args, kwargs) in zip(layer_list, calls[group.layers.start:group.layers.stop]):
                    hidden = layer(hidden, *args, **kwargs)
                return tail(hidden), tuple(flat)
            return first_group

        def later_group(hidden, tensors):
            for layer, template in zip(layer_list, templates):
                args, kwargs = _rebuild(template, tensors)
                hidden = layer(hidden, *args, **kwargs)
            return tail(hidden)
        return later_group

    # --- the step ---------------------------------------------------------------------------------------------------

    def _advance(self) -> None:
        self.position.add_(1)
        self.slot.add_(1)
        self.mask.index_fill_(1, self.slot, 1)

    def _step(self) -> torch.Tensor:
        """The step with the groups' compiled calls run from Python and tensors moved with `.to` (the CPU; the
        warm-up before capture)."""
        self._advance()
        hidden, flat = self.groups[0].fn(self.token, self.mask, self.position)
        if len(flat) != self._leaf_count:
            raise RuntimeError(f"the compiled prologue gives {len(flat)} tensors for the layers, the model's forward "
                               f"{self._leaf_count}")
        for group in self.groups[1:]:
            tensors = tuple(flat[j].to(group.device, non_blocking=True) for j in group.needs)
            hidden = group.fn(hidden.to(group.device, non_blocking=True), tensors)
        return hidden

    def _run_step(self) -> torch.Tensor:
        if not self.captured:
            return self._step()
        for group in self.groups:
            for destination, source in group.copies:
                destination.copy_(source, non_blocking=True)
            group.graph.replay()
        return self.groups[-1].output

    def _prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        logits = super()._prefill(input_ids, attention_mask, position_ids)
        self.position.sub_(1)  # the step advances first
        self.slot.fill_(input_ids.shape[1] - 1)
        return logits

    def capture(self, prompt_ids: torch.Tensor) -> None:
        """Build and compile the groups and, on CUDA, capture each as a graph on its device; then check one step
        against the model's own forward."""
        with torch.inference_mode():
            self._prefill(prompt_ids, None, None)
            try:
                self._build()
            except _NotRecognised as exc:
                raise RuntimeError(f"the split model's structure is not recognised: {exc}") from None
            if self.device.type == "cuda":
                self._capture_graphs()
            else:
                self._step()  # compiles
            self._check(prompt_ids)
            self.cache.reset()

    def _capture_graphs(self) -> None:
        devices = sorted({group.device for group in self.groups}, key=str)
        sides = {device: _capture_stream(device) for device in devices}
        for device, side in sides.items():
            side.wait_stream(torch.cuda.current_stream(device))
        with contextlib.ExitStack() as streams:
            for side in sides.values():
                streams.enter_context(torch.cuda.stream(side))
            for _ in range(2):  # the first call compiles; the second runs what will be captured
                self._step()
        for device, side in sides.items():
            torch.cuda.current_stream(device).wait_stream(side)
        flat: tuple = ()
        previous: torch.Tensor | None = None
        for group in self.groups:
            graph = torch.cuda.CUDAGraph()
            if group.prologue:
                with torch.cuda.device(group.device), torch.cuda.graph(graph, stream=sides[group.device],
                                                                         capture_error_mode="thread_local"):
                    self._advance()
                    previous, flat = group.fn(self.token, self.mask, self.position)
                group.inputs = (self.token, self.mask, self.position)
            else:
                copies = []
                hidden = previous if previous.device == group.device else torch.empty_like(previous,
                                                                                           device=group.device)
                if hidden is not previous:
                    copies.append((hidden, previous))
                tensors = []
                for j in group.needs:
                    source = flat[j]
                    if source.device == group.device:
                        tensors.append(source)
                    else:
                        tensors.append(torch.empty_like(source, device=group.device))
                        copies.append((tensors[-1], source))
                tensors = tuple(tensors)
                with torch.cuda.device(group.device), torch.cuda.graph(graph, stream=sides[group.device],
                                                                         capture_error_mode="thread_local"):
                    previous = group.fn(hidden, tensors)
                group.inputs, group.copies = (hidden, tensors), tuple(copies)
            group.graph, group.output = graph, previous

    def _check(self, prompt_ids: torch.Tensor) -> None:
        """One step of the segments against the model's own forward on the same cache: a structure taken wrongly
        (something the model does between or after its layers that the segments skip) fails here, at load."""
        self.cache.reset()
        self.token.copy_(self._prefill(prompt_ids, None, None).argmax(-1, keepdim=True))
        mask = self.mask.clone()
        mask.index_fill_(1, self.slot + 1, 1)
        want = self.model(input_ids=self.token, attention_mask=mask, position_ids=self.position + 1,
                          past_key_values=self.cache, use_cache=True).logits[:, -1].float()
        for layer in self.cache.layers:  # the segments write the same slot again
            layer.cumulative_length.sub_(1)
        got = self._run_step().to(want.device).float()
        error = relative_error(got, want)
        if not error <= CHECK_TOLERANCE:
            raise RuntimeError(f"the segmented decode step does not give the model's logits (relative error "
                               f"{error:.3f}): the split model's structure is not one it knows")

    def describe(self) -> str:
        return "; ".join(group.describe() for group in self.groups)

    def release(self) -> None:
        for group in self.groups:
            group.graph = group.output = group.fn = None
            group.inputs = group.copies = ()
        self.groups = []
        super().release()
