"""A padded batch of ragged prompts prefilled without computing its padding (issue 26: "ragged prompt lengths must not
pay for padding to the longest").

A padded batch left-pads every prompt to the longest: 128 prompts of 16 to 1,000 tokens make one prefill of 128 x 1,000
positions where about half are padding, all of it computed (every layer, every position) and then masked away. Here the
prompts are prefilled in groups of similar length (sorted, each group padded only to its own longest, at most
`GROUP_TOKENS` positions a forward), with the output head on the last position only, and their key/value caches are laid
side by side into one left-padded cache of the batch's length (zeros where a group had no position: masked, as padding
always is). Within a group the prompts are right-padded and run with causal attention and no mask: a real token never
sees the padding after it, and the attention runs as an unmasked causal one. `generate` then gets the whole padded batch
with that cache and computes only the last position onward: decode runs on the whole batch at once as before, so the
replies are those of the padded batch (the same positions and keys; up to the arithmetic's order in 16-bit).

The compiled decode loop's batches are prefilled the same way, each group's keys and values written into the loop's
static cache at the slots the whole prefill would have written (`prefill_into_static_cache`), then the loop computes the
last position onward.

Only where every layer attends to the whole sequence (sliding-window and hybrid caches hold a shape of their own), for
decoder-only models, in one process (not tensor parallel), and when padding is at least `MIN_WASTE` of the batch.

The compiled loop's groups run their decoder layers through one torch.compile'd call with dynamic shapes
(`CompiledPrefill`; QUANT_COMPILE_PREFILL=on, the default since the nineteenth session: the H200 goal job 1.09-1.13x
faster, bench/results/batch-engines-8b-compiled-prefill-l2.md) instead of eagerly (=off).
"""

from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch
from torch import nn
from transformers import DynamicCache

GROUP_TOKENS = 4096
"""Most padded positions in one prefill forward: enough rows to keep a GPU's matrix units busy, few enough that a group
pads little. The goal job's prefill (8B bf16, 128 prompts of 16-1,000 tokens, H200, one run) took 2.523 s in groups of
16,384 positions, 2.440 s of 8,192, 2.396 s of 4,096
(bench/results/prefill-profile-8b-bf16-causal-groups-smaller.md)."""
MIN_WASTE = 0.25
"""Prefill in groups only when the padding is at least this share of the padded batch's positions."""


def refusal(loaded) -> str | None:
    """Why this loaded model's batches cannot be prefilled in groups, or None."""
    return model_refusal(loaded.model, loaded.source.kind, tensor_parallel=loaded.group is not None)


def model_refusal(model, kind: str = "causal", *, tensor_parallel: bool = False) -> str | None:
    """`refusal` from the model itself (the compiled decode loop has no LoadedModel)."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "its forward takes no position ids (a row's positions must not count its padding)"
    return config_refusal(kind, model.config, tensor_parallel=tensor_parallel)


def config_refusal(kind: str, config, *, tensor_parallel: bool = False) -> str | None:
    """`refusal` from the model's kind ("causal", "seq2seq") and config."""
    if kind != "causal":
        return "seq2seq (the encoder takes the whole padded input at once)"
    if tensor_parallel:
        return "tensor parallel (every forward pass runs on all ranks, through generate)"
    config = config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    if any(layer_type != "full_attention" for layer_type in layer_types) or (
            not layer_types and getattr(config, "sliding_window", None)):
        return "its cache is not one of full-attention layers (sliding-window or hybrid layers)"
    return None


def prefill_groups(lengths: list[int], group_tokens: int | None = None) -> list[list[int]]:
    """Rows grouped for prefill: sorted by length, each group as many rows as fit `group_tokens` padded positions
    (at least one), none with a longest prompt of a single token (it has no position to prefill)."""
    group_tokens = group_tokens or GROUP_TOKENS
    groups: list[list[int]] = []
    current: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: lengths[r]):
        if current and (len(current) + 1) * lengths[row] > group_tokens and lengths[current[-1]] > 1:
            groups.append(current)
            current = []
        current.append(row)
    if current:
        groups.append(current)
    return groups


def worth_it(attention_mask: torch.Tensor) -> bool:
    """Whether the padding is at least MIN_WASTE of the batch's positions (two rows or more)."""
    rows, width = attention_mask.shape
    return rows > 1 and int(attention_mask.sum()) <= (1 - MIN_WASTE) * rows * width


class _LayerKeysValues:
    """One decoder layer's keys and values of a group's prefill, kept as the layer computed them."""

    def __init__(self) -> None:
        self.keys = self.values = None

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class GroupCache(DynamicCache):
    """A group's prefill cache: each layer's keys and values as the layer computed them (`kv[layer]`). A DynamicCache
    concatenated them to its empty tensors first, one more copy of every layer's keys and values; everything else a
    model asks of its cache (the masks) is an empty DynamicCache's answer, as the prefill starts at position 0."""

    def __init__(self, config) -> None:
        super().__init__(config=config)
        self.kv: dict[int, _LayerKeysValues] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.kv.setdefault(layer_idx, _LayerKeysValues()).update(key_states, value_states)

    def parts(self) -> list[_LayerKeysValues]:
        """The layers' keys and values in layer order."""
        return [self.kv[index] for index in sorted(self.kv)]


def _prefilled_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, group_tokens: int | None,
                      forward: Callable | None = None):
    """Prefill each row's prompt but its last token, group by group: yields (the group's rows, a `Placement` of its
    keys and values in the left-padded batch, each layer's keys and values in layer order).
    `forward`: what runs a group (a `CompiledPrefill`'s), else the model.

    A group's rows are right-padded (each row's tokens from position 0, the padding after them) and run without an
    attention mask: causal attention alone keeps each real token from the padding that follows it, so the attention
    runs as a causal one with no mask (flash attention on a GPU, grouped-query heads unrepeated) instead of one with a
    padding mask (a masked kernel computing every position pair: 2.7x the attention time of the H200's goal job).
    """
    width = input_ids.shape[1]
    lengths = attention_mask.sum(-1).tolist()
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    device = input_ids.device
    for group in prefill_groups(lengths, group_tokens):
        counts = [lengths[r] - 1 for r in group]  # every token but the last: the batch's last column computes it
        span = max(counts)
        if span == 0:  # single-token prompts only: nothing before their last token
            continue
        placement = Placement.of(group, counts, width, device)
        index, shift = on_device(device, torch.tensor(group), torch.tensor([span - c for c in counts]))
        left = input_ids[index, width - 1 - span:width - 1]  # left-padded: each row's tokens end at the last column
        columns = torch.arange(span, device=device)
        right = left.gather(1, (columns + shift[:, None]) % span)  # each row's tokens first, its padding after
        cache = GroupCache(model.config)
        (forward or model)(input_ids=right, position_ids=columns.expand(len(group), -1), past_key_values=cache,
                           use_cache=True, **keep_last)
        yield group, placement, cache.parts()
        del cache


def on_device(device: torch.device, *host: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Host integer tensors on `device` in one copy that does not wait for the GPU. A copy from pageable host memory
    waits for every kernel queued on the stream (CUDA's rule for such copies), and so does reading a GPU value on the
    host: the goal job's prefill did both several times a group (128 stream syncs, 64 reads in its 21 groups, H200
    profile bench/results/batch-engines-8b-defaults-nineteenth.md), each leaving the GPU idle until the host queued
    the group's next kernels. From pinned memory the copy is queued like a kernel (PyTorch's pinned allocator keeps
    the block until the copy is done)."""
    if device.type != "cuda":
        return tuple(tensor.to(device) for tensor in host)
    packed = torch.cat([tensor.to(torch.int64) for tensor in host]).pin_memory().to(device, non_blocking=True)
    return tuple(packed.split([tensor.numel() for tensor in host]))


def _call_layer(layer, hidden, args, kwargs):
    """One decoder layer of a prefill: the function every layer's call goes through in a `CompiledPrefill`. The body
    of quant.segments' `_call_layer`, kept a function of its own: dynamo keeps compiled entries per code object, so
    the prefill's graphs (rows and positions dynamic) and the decode step's (static shapes) do not share one list of
    entries, its recompile limit and its guard checks."""
    return layer(hidden, *args, **kwargs)


class _ThroughCompiledCall(nn.Module):
    """Stands in a `CompiledPrefill`'s copy of the decoder for one layer: calls it through the compiled call, giving
    it its own keys-and-values slot of the group's cache instead of the cache. A layer writes with
    `past_key_values.update(k, v, self.layer_idx)`; dynamo reads that index as a constant of the module, so each layer
    would compile its own graph (quant.segments' `_LayerCache` says the same for the decode step). Given its own slot,
    the index goes unused and one graph serves every layer."""

    def __init__(self, layer: nn.Module, index: int, call: Callable) -> None:
        super().__init__()
        self.__dict__["layer"] = layer  # not a submodule: the copy's parameters stay the model's own
        self.__dict__["call"] = call
        self.index = index

    def forward(self, hidden_states, *args, **kwargs):
        # the cache's keyword is past_key_values for most decoders, layer_past for GPT-NeoX's
        name = next((key for key, value in kwargs.items() if isinstance(value, GroupCache)), None)
        if name is None:
            raise TypeError(f"the decoder called layer {self.index} without the group's cache as a keyword")
        slot = kwargs[name].kv.setdefault(self.index, _LayerKeysValues())
        _mark_rows_and_positions_dynamic(hidden_states, (args, kwargs))
        return self.call(self.layer, hidden_states, args, {**kwargs, name: slot})


def _mark_rows_and_positions_dynamic(hidden: torch.Tensor, inputs) -> None:
    """Mark the group's rows and positions, the first two dimensions of the hidden states and of every input that
    shares them (position ids, the rotary cos and sin), as sizes that vary: one graph then serves every group, while
    the model's own sizes (hidden, heads) stay constants Inductor's kernels are specialised for (torch.compile's
    dynamic=True would make those symbolic too)."""
    leading = tuple(hidden.shape[:2])
    pending = [hidden, inputs]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            if item.dim() >= 2 and tuple(item.shape[:2]) == leading:
                torch._dynamo.maybe_mark_dynamic(item, 0)
                torch._dynamo.maybe_mark_dynamic(item, 1)
        elif isinstance(item, (tuple, list)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())


def _with_module_replaced(root: nn.Module, target: nn.Module, replacement: nn.Module) -> nn.Module:
    """A shallow copy of `root` (sharing every parameter, buffer and untouched submodule) in which `target`, a module
    somewhere in its tree, is `replacement`; `root` itself is unchanged, so other threads' calls of the model are not
    affected."""
    if root is target:
        return replacement
    for name, child in root._modules.items():
        if child is not None and any(module is target for module in child.modules()):
            clone = copy.copy(root)
            clone._modules = {**root._modules, name: _with_module_replaced(child, target, replacement)}
            return clone
    raise ValueError("the module is not in the model")


def compiled_prefill_refusal(model) -> str | None:
    """Why `CompiledPrefill` cannot take this model, or None."""
    if any(hasattr(module, "_hf_hook") for module in model.modules()):
        return "the model is split over devices (accelerate's hooks move tensors between layers)"
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return "its decoder layers are not a ModuleList at decoder.layers"
    return None


class CompiledPrefill:
    """A model's grouped prefill (`prefill_into_static_cache`) with its decoder layers through one torch.compile'd
    call with dynamic shapes (QUANT_COMPILE_PREFILL=on).

    Why: eager, a prefill runs each layer's norms, rotary embedding, activation and residual adds as separate kernels
    over every position; in the H200's goal job (8B bf16, 72,973 prompt tokens) the prefill took 2.6 s of GPU time, of
    which the projections' matmuls about 1.3 s (bench/results/batch-engines-8b-nf4-compute-dtype.md). Compiled, those
    fuse around the same cuBLAS matmuls. One graph for every layer and every group's shape (a second for groups of one
    row, which dynamo specializes); compiled at its first use, which `GenerationPath` makes the batch size's compile.

    Runs on a copy of the model's module tree whose decoder has the layers through the compiled call: the model itself
    is unchanged (a chat's eager generation may run on it from another thread meanwhile)."""

    def __init__(self, model, compile: Callable[[Callable], Callable]) -> None:
        refusal = compiled_prefill_refusal(model)
        if refusal:
            raise ValueError(refusal)
        decoder = model.get_decoder()
        call = compile(_call_layer)
        through = copy.copy(decoder)
        through._modules = {**decoder._modules, "layers": nn.ModuleList(
            _ThroughCompiledCall(layer, index, call) for index, layer in enumerate(decoder.layers))}
        self.forward = _with_module_replaced(model, decoder, through)
        """Runs a group as the model would, its layers through the compiled call (holds the model's modules, not the
        model: dropped with the generation path's loops)."""

    def check(self, model) -> str | None:
        """Compile (groups of two rows and of one) and compare with `model`'s eager prefill on random tokens: None, or
        why the compiled prefill is not used (its last logits or a layer's keys off by more than `CHECK_TOLERANCE`)."""
        device = model.get_input_embeddings().weight.device
        vocab_size = model.get_input_embeddings().weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        for rows, span in ((2, 24), (1, 16)):
            ids = torch.randint(0, vocab_size, (rows, span), generator=generator).to(device)
            positions = torch.arange(span, device=device).expand(rows, -1)
            got, want = GroupCache(self.forward.config), GroupCache(self.forward.config)
            with torch.inference_mode():
                compiled = self.forward(input_ids=ids, position_ids=positions, past_key_values=got, use_cache=True)
                eager = model(input_ids=ids, position_ids=positions, past_key_values=want, use_cache=True)
            pairs = [(compiled.logits[:, -1], eager.logits[:, -1])]
            pairs += [(g.keys, w.keys) for g, w in zip(got.parts(), want.parts())]
            if len(got.kv) != len(want.kv) or any(g.shape != w.shape for g, w in pairs):
                return f"its compiled prefill differs from the eager one in shape ({rows} rows of {span} tokens)"
            error = max(relative_error(g, w) for g, w in pairs)
            if not error <= CHECK_TOLERANCE:
                return (f"its compiled prefill differs from the eager one ({rows} rows of {span} tokens: relative "
                        f"error {error:.3f}, more than {CHECK_TOLERANCE})")
        return None


CHECK_TOLERANCE = 0.1
"""The largest `relative_error` a compiled path's check against the model's own forward accepts: `CompiledPrefill`'s
and quant.segments' check of a split decode step. Fused kernels round in another order (a segmented step's bf16
logits: around 1e-2), and a random-weight model's 32 layers carry that further (the 8B shape in bf16 failed a
max-element test at 2**-5 of the largest magnitude on an H200, bench/results/batch-engines-8b-compiled-prefill.md); a
layer computing something else, or a part of the model skipped or applied twice, is off by O(1)."""


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The L2 norm of the difference over the reference's, in float32."""
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-6)).item()


class Placement:
    """Where a right-padded group's keys and values go in the left-padded batch's cache: row `local[i]`'s column
    `column[i]` of the group to row `row[i]`'s slot `slot[i]` of the batch (whose tokens end at slot width - 2)."""

    def __init__(self, local: torch.Tensor, column: torch.Tensor, row: torch.Tensor, slot: torch.Tensor) -> None:
        self.local, self.column, self.row, self.slot = local, column, row, slot

    @classmethod
    def of(cls, rows: list[int], counts: list[int], width: int, device: torch.device | str = "cpu") -> "Placement":
        """The placement of a group of `rows` of the batch with `counts` positions each, in a batch `width` wide,
        computed on the host (from lists the host has: no GPU value is read) and copied to `device` in one copy that
        does not wait for the GPU."""
        device, rows = torch.device(device), torch.tensor(rows)
        count = torch.tensor(counts)
        local = torch.repeat_interleave(torch.arange(len(counts)), count)
        starts = torch.cumsum(count, 0) - count  # each row's first entry among the flattened ones
        column = torch.arange(sum(counts)) - starts[local]
        return cls(*on_device(device, local, column, rows[local], (width - 1 - count)[local] + column))

    def copy(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """The group's keys (or values) [rows, heads, span, dim] into the batch's [batch, heads, slots, dim], with
        torch's indexing (a gather, then an index_put through transposed views). A Triton kernel copying each
        position's head rows (QUANT_KV_PLACEMENT=triton, nineteenth session, in git at add8d5e) was slower alone
        (0.072-0.083 against 0.057-0.061 ms a group's keys) and no faster in the goal job (H200,
        bench/results/kv-placement.md, batch-engines-8b-defaults-nineteenth.md): removed."""
        to, at = target.device, source.device  # a model split over GPUs keeps each layer's cache on its GPU
        target.transpose(1, 2)[self.row.to(to), self.slot.to(to)] = source.transpose(1, 2)[self.local.to(at),
                                                                                            self.column.to(at)]


def prefill_in_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      group_tokens: int | None = None):
    """The DynamicCache of positions 0..L-2 of the left-padded batch `input_ids` [B, L], prefilled in groups of
    similar length (see the module's docstring); `generate(input_ids, attention_mask, past_key_values=cache)` then
    computes the last position onward. Returns (cache, groups)."""
    rows, width = input_ids.shape
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    groups = []
    for group, placement, parts in _prefilled_groups(model, input_ids, attention_mask, group_tokens):
        groups.append(group)
        for layer, part in enumerate(parts):
            if layer == len(keys):  # the first group: the batch's whole cache, zeros where a group has no position
                keys.append(part.keys.new_zeros(rows, *part.keys.shape[1:2], width - 1, part.keys.shape[-1]))
                values.append(part.values.new_zeros(rows, *part.values.shape[1:2], width - 1,
                                                    part.values.shape[-1]))
            placement.copy(part.keys, keys[layer])
            placement.copy(part.values, values[layer])
    merged = DynamicCache(config=model.config)
    for layer in range(len(keys)):
        merged.update(keys[layer], values[layer], layer)
        keys[layer] = values[layer] = None  # the cache holds its own copy now
    return merged, groups


def prefill_into_static_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache,
                              group_tokens: int | None = None, forward: Callable | None = None) -> None:
    """Positions 0..L-2 of the left-padded batch `input_ids` [B, L], prefilled in groups straight into the static
    cache of the compiled decode loop (quant.decode), whose batch is B rows: each group's keys and values go to their
    rows' slots (slot = column, as the whole batch's prefill writes them), the rest stays as the cache's reset left
    it (zeros, masked), and every layer's write position becomes L-1, so that the loop's next forward is the last
    column. The cache must hold its tensors already (a loop's cache does once captured) and be reset. `forward`: a
    `CompiledPrefill`'s, else the model runs each group eagerly."""
    width = input_ids.shape[1]
    layers = cache.layers
    if not all(getattr(layer, "is_initialized", False) for layer in layers):
        raise RuntimeError("the static cache has no tensors yet")
    for _, placement, parts in _prefilled_groups(model, input_ids, attention_mask, group_tokens, forward):
        if len(parts) != len(layers):
            raise RuntimeError(f"a group's cache has {len(parts)} layers, the static cache {len(layers)}")
        for layer, part in zip(layers, parts):
            placement.copy(part.keys, layer.keys)
            placement.copy(part.values, layer.values)
    for layer in layers:
        layer.cumulative_length.fill_(width - 1)
