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
"""

from __future__ import annotations

import inspect

import torch

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


def _prefilled_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, group_tokens: int | None):
    """Prefill each row's prompt but its last token, group by group: yields (the group's rows as an index tensor, a
    `Placement` of its keys and values in the left-padded batch, the group's DynamicCache).

    A group's rows are right-padded (each row's tokens from position 0, the padding after them) and run without an
    attention mask: causal attention alone keeps each real token from the padding that follows it, so the attention
    runs as a causal one with no mask (flash attention on a GPU, grouped-query heads unrepeated) instead of one with a
    padding mask (a masked kernel computing every position pair: 2.7x the attention time of the H200's goal job).
    """
    from transformers import DynamicCache

    width = input_ids.shape[1]
    lengths = attention_mask.sum(-1).tolist()
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    for group in prefill_groups(lengths, group_tokens):
        counts = [lengths[r] - 1 for r in group]  # every token but the last: the batch's last column computes it
        span = max(counts)
        if span == 0:  # single-token prompts only: nothing before their last token
            continue
        index = torch.tensor(group, device=input_ids.device)
        left = input_ids[index, width - 1 - span:width - 1]  # left-padded: each row's tokens end at the last column
        shift = torch.tensor([span - c for c in counts], device=input_ids.device)
        columns = torch.arange(span, device=input_ids.device)
        right = left.gather(1, (columns + shift[:, None]) % span)  # each row's tokens first, its padding after
        cache = DynamicCache(config=model.config)
        model(input_ids=right, position_ids=columns.expand(len(group), -1), past_key_values=cache, use_cache=True,
              **keep_last)
        yield index, Placement.of(index, counts, width), cache
        del cache


class Placement:
    """Where a right-padded group's keys and values go in the left-padded batch's cache: row `local[i]`'s column
    `column[i]` of the group to row `row[i]`'s slot `slot[i]` of the batch (whose tokens end at slot width - 2)."""

    def __init__(self, local: torch.Tensor, column: torch.Tensor, row: torch.Tensor, slot: torch.Tensor) -> None:
        self.local, self.column, self.row, self.slot = local, column, row, slot

    @classmethod
    def of(cls, index: torch.Tensor, counts: list[int], width: int) -> "Placement":
        device = index.device
        count = torch.tensor(counts, device=device)
        local = torch.repeat_interleave(torch.arange(len(counts), device=device), count)
        starts = torch.cumsum(count, 0) - count  # each row's first entry among the flattened ones
        column = torch.arange(int(count.sum()), device=device) - starts[local]
        return cls(local, column, index[local], (width - 1 - count)[local] + column)

    def copy(self, source: torch.Tensor, target: torch.Tensor) -> None:
        """The group's keys (or values) [rows, heads, span, dim] into the batch's [batch, heads, slots, dim]."""
        to, at = target.device, source.device  # a model split over GPUs keeps each layer's cache on its GPU
        target.transpose(1, 2)[self.row.to(to), self.slot.to(to)] = source.transpose(1, 2)[self.local.to(at),
                                                                                           self.column.to(at)]


def prefill_in_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      group_tokens: int | None = None):
    """The DynamicCache of positions 0..L-2 of the left-padded batch `input_ids` [B, L], prefilled in groups of
    similar length (see the module's docstring); `generate(input_ids, attention_mask, past_key_values=cache)` then
    computes the last position onward. Returns (cache, groups)."""
    from transformers import DynamicCache

    rows, width = input_ids.shape
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    groups = []
    for index, placement, cache in _prefilled_groups(model, input_ids, attention_mask, group_tokens):
        groups.append(index.tolist())
        for layer, part in enumerate(cache.layers):
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
                              group_tokens: int | None = None) -> None:
    """Positions 0..L-2 of the left-padded batch `input_ids` [B, L], prefilled in groups straight into the static
    cache of the compiled decode loop (quant.decode), whose batch is B rows: each group's keys and values go to their
    rows' slots (slot = column, as the whole batch's prefill writes them), the rest stays as the cache's reset left
    it (zeros, masked), and every layer's write position becomes L-1, so that the loop's next forward is the last
    column. The cache must hold its tensors already (a loop's cache does once captured) and be reset."""
    width = input_ids.shape[1]
    layers = cache.layers
    if not all(getattr(layer, "is_initialized", False) for layer in layers):
        raise RuntimeError("the static cache has no tensors yet")
    for _, placement, part in _prefilled_groups(model, input_ids, attention_mask, group_tokens):
        if len(part.layers) != len(layers):
            raise RuntimeError(f"a group's cache has {len(part.layers)} layers, the static cache {len(layers)}")
        for layer, group_layer in zip(layers, part.layers):
            placement.copy(group_layer.keys, layer.keys)
            placement.copy(group_layer.values, layer.values)
    for layer in layers:
        layer.cumulative_length.fill_(width - 1)
