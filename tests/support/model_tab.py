"""The Model tab's fields as an HTTP client sends them to /load_model (tests/app/, and the one app-served check in
tests/unit/test_architectures.py)."""

from __future__ import annotations


def load_args(model: str, mode: str, **fields):
    """The Model tab's fields as a user who typed `model`, picked `mode` and changed `fields` (by LoadForm field
    name: revision, token, a method option such as gptq_backend, max_memory...) sends them: in the app's own order
    (LoadForm.INPUTS, the order /load_model takes them), the others at what the tab starts with."""
    from quant.forms import LoadForm

    values = LoadForm(model=model, mode=mode).to_values()
    unknown = set(fields) - set(values)
    assert not unknown, f"the Model tab has no field {sorted(unknown)}"
    values.update(fields)
    return tuple(values[name] for name in LoadForm.INPUTS)
