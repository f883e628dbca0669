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
def blocks():
    import app

    return list(app.build_app().blocks.values())


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
