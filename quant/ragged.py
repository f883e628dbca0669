"""A padded batch of ragged prompts prefilled without computing its padding (issue 26: "ragged prompt lengths must not
pay for padding to the longest").

A padded batch left-pads every prompt to the longest: 128 prompts of 16 to 1,000 tokens make one prefill of
128 x 1,000 positions where about half are padding, all of it computed (every layer, every position) and then masked
away. Here the prompts are prefilled in groups of similar length (sorted, each group padded only to its own longest,
at most `GROUP_TOKENS` positions a forward), with the output head on the last position only, and their key/value
caches are laid side by side into one left-padded cache of the batch's length (zeros where a group had no position:
masked, as padding always is). `generate` then gets the whole padded batch with that cache and computes only the last
position onward: decode runs on the whole batch at once as before, so the replies are those of the padded batch
(the same positions, masks and keys; up to the arithmetic's order in 16-bit).

The compiled decode loop's batches are prefilled the same way, each group's keys and values written into the loop's
static cache at the slots the whole prefill would have written (`prefill_into_static_cache`), then the loop computes
the last position onward.

Only where every layer attends to the whole sequence (sliding-window and hybrid caches hold a shape of their own),
for decoder-only models, in one process (not tensor parallel), and when padding is at least `MIN_WASTE` of the batch.
"""

from __future__ import annotations

import inspect

import torch

GROUP_TOKENS = 16384
"""Most padded positions in one prefill forward: large enough to keep a GPU busy, small enough to bound activations."""
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


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` gives a left-padded batch: each row's tokens count from 0, padding at 1."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _prefilled_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, group_tokens: int | None):
    """Prefill the left-padded batch's positions 0..L-2 group by group: yields (the group's rows as an index tensor,
    the group's first column, the group's DynamicCache of columns first..L-2)."""
    from transformers import DynamicCache

    width = input_ids.shape[1]
    lengths = attention_mask.sum(-1).tolist()
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    for group in prefill_groups(lengths, group_tokens):
        longest = max(lengths[r] for r in group)
        index = torch.tensor(group, device=input_ids.device)
        span = slice(width - longest, width - 1)  # left padding: each row's tokens end at the last column
        mask = attention_mask[index, span]
        cache = DynamicCache(config=model.config)
        model(input_ids=input_ids[index, span], attention_mask=mask, position_ids=_position_ids(mask),
              past_key_values=cache, use_cache=True, **keep_last)
        yield index, width - longest, cache
        del cache


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
    for index, first, cache in _prefilled_groups(model, input_ids, attention_mask, group_tokens):
        groups.append(index.tolist())
        for layer, part in enumerate(cache.layers):
            if layer == len(keys):  # the first group: the batch's whole cache, zeros where a group has no position
                keys.append(part.keys.new_zeros(rows, *part.keys.shape[1:2], width - 1, part.keys.shape[-1]))
                values.append(part.values.new_zeros(rows, *part.values.shape[1:2], width - 1,
                                                    part.values.shape[-1]))
            keys[layer][index, :, first:] = part.keys
            values[layer][index, :, first:] = part.values
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
    for index, first, part in _prefilled_groups(model, input_ids, attention_mask, group_tokens):
        if len(part.layers) != len(layers):
            raise RuntimeError(f"a group's cache has {len(part.layers)} layers, the static cache {len(layers)}")
        for layer, group_layer in zip(layers, part.layers):
            rows = index.to(layer.keys.device)  # a model split over GPUs keeps each layer's cache on its GPU
            layer.keys[rows, :, first:width - 1] = group_layer.keys
            layer.values[rows, :, first:width - 1] = group_layer.values
    for layer in layers:
        layer.cumulative_length.fill_(width - 1)
