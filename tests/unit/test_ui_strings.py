"""The UI's words: every text a user reads goes through gr.I18n, and the Korean table covers the English one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quant.ui_strings import EN, KO

HANGUL = re.compile(r"[\uac00-\ud7a3]")
NOT_TRANSLATED = {"device_map", "max_memory", "main", "prompt", "0=20GiB, 1=20GiB, cpu=30GiB",
                  "user/model-GPTQ-4bit-g128"}
"""Labels and placeholders that are code: from_pretrained's argument names, a revision, a field name, examples."""


def test_korean_covers_every_english_key_in_korean():
    assert set(KO) == set(EN)
    untranslated = {k: v for k, v in KO.items() if not HANGUL.search(v)}
    assert untranslated == {"top_p": "Top-p"}  # a parameter's name, the same in both


def test_no_key_is_a_section_of_gradios_own_translations():
    """The browser looks our keys up beside Gradio's own tables: a key such as "chatbot" names Gradio's section of
    Chatbot strings, and the label showed "[object Object]"."""
    import gradio

    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    english = sorted(assets.glob("en-*.js"))
    sections = set(re.findall(r"\bas (\w+)", english[0].read_text(encoding="utf-8"))) if english else set()
    if "chatbot" not in sections:
        pytest.skip("Gradio's English table was not found where 6.31 keeps it")
    assert [k for k in EN if k.split(".")[0] in sections] == []


def test_batch_and_placement_are_told_apart_in_korean():
    """Both were 배치: the Batch tab and its button must share no word with the Placement accordion."""
    batch = set(KO["tab.batch"].split()) | set(KO["batch.run"].split())
    assert batch.isdisjoint(KO["placement"].split()), (batch, KO["placement"])


def _translated(text) -> bool:
    from gradio.i18n import I18nData

    return isinstance(text, I18nData) or "__i18n__" in str(text)


@pytest.fixture(scope="module")
def demo():
    import app

    return app.build_app()


@pytest.fixture(scope="module")
def blocks(demo):
    return list(demo.blocks.values())


def _event(demo, api_name: str):
    return next(fn for fn in demo.fns.values() if fn.api_name == api_name)


def test_every_method_and_option_has_its_field_and_words_in_both_languages(demo):
    """The UI is generated from quant.methods: each option of each method is one field of the Model tab's load
    (labelled `option.<field>`, named by its field in the endpoint), each mode is offered where it applies, and each
    has its words in English and Korean. A new method or option needs only its strings."""
    from quant.forms import LoadForm
    from quant.methods import ALL_OPTIONS, METHODS, load_time_methods, quantize_methods

    keys = ([f"option.{o.field}" for o in ALL_OPTIONS] + [f"mode.{name}" for name in METHODS]
            + [f"quantize.method.{name}" for name in quantize_methods()]
            + [f"option.{o.field}.auto" for o in ALL_OPTIONS if any(value == "" for value, _ in o.choices)])
    assert [k for k in keys if k not in EN or k not in KO] == []

    load = _event(demo, "load_model")
    fields = dict(zip(load.input_keyword_names, load.inputs, strict=True))
    assert list(fields) == list(LoadForm.INPUTS)
    assert {name: getattr(fields[name].label, "key", None) for name in (o.field for o in ALL_OPTIONS)} == {
        o.field: f"option.{o.field}" for o in ALL_OPTIONS}
    assert [value for _, value in fields["mode"].choices] == list(METHODS)

    [measured] = _event(demo, "measure_modes").inputs[:1]
    compared = _event(demo, "compare").inputs[1]
    assert [value for _, value in measured.choices] == [value for _, value in compared.choices] == load_time_methods()
    method = next(c for c in _event(demo, "quantize").inputs if getattr(c.label, "key", None) == "quantize.method")
    assert [value for _, value in method.choices] == quantize_methods()


def test_every_label_placeholder_and_info_is_translated(blocks):
    english_only = [(type(b).__name__, attr, getattr(b, attr)) for b in blocks for attr in ("label", "placeholder", "info")
                    if isinstance(getattr(b, attr, None), str) and getattr(b, attr)
                    and not _translated(getattr(b, attr)) and getattr(b, attr) not in NOT_TRANSLATED]
    assert english_only == []


def test_every_choice_label_and_note_is_translated(blocks):
    import gradio as gr

    # a choice whose label is only its value (a mode, a kernel's name, a number) needs no words, nor do the models
    # that the server has loaded (their labels are data)
    choices = [(type(b).__name__, label) for b in blocks for label, value in getattr(b, "choices", None) or []
               if str(label) != str(value) and not _translated(label) and getattr(b.label, "key", None) != "loaded"]
    assert choices == []
    notes = [b.value for b in blocks if isinstance(b, gr.Markdown) and b.value and not _translated(b.value)]
    assert notes == [f"# {EN['title']} · {KO['title']}\n{EN['subtitle']} / {KO['subtitle']}"]  # bilingual already
