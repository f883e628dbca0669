"""Two visitors of one served app, each in a browser of their own (headless Chromium through Playwright).

Alice signs nothing in: she types her own Hugging Face token to load a gated model and to quantize it. Mallory,
on the same server, must not be able to use, list or download what Alice loaded with her token; and her tabs say
which model answers them. The Hub is tests/support/hub_server.FakeHub over real HTTP, serving a gated copy of the
demo Llama that only `carol` (Alice's token) may read.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from tests.conftest import LLAMA
from tests.support.browser import CHROMIUM, QUICK, SLOW, data_rows
from tests.support.hub_server import FakeHub
from tests.support.visitors import CAROL, GATED, demo_files

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)

LOADED = "Loaded models you can use (public ones are shared by all sessions)"
HISTORY = "Your loads, side by side"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import transformers  # noqa: F401 - imported before patching, as hub_server.point_client_at requires

    from app import serve_in_process
    from quant.registry import default_registry

    default_registry().unload_all()
    tmp = tmp_path_factory.mktemp("two-visitors")
    with pytest.MonkeyPatch.context() as mp, FakeHub(tokens={CAROL: "carol"}) as hub:
        mp.setenv("QUANT_OUTPUT_DIR", str(tmp / "outputs"))
        mp.delenv("QUANT_LOCAL_MODELS_ROOT", raising=False)
        mp.delenv("HF_TOKEN", raising=False)
        mp.setenv("QUANT_API_KEY", "sk-operator-key-for-the-browser-test")
        hub.patch_client(mp, tmp / "hf_home")
        hub.add_repo(GATED, gated=True, granted={"carol"})
        hub.put_files(GATED, demo_files())
        hub.drop_next(r"^/api/models$", method="HEAD")  # the start-up probe finds no Hub, as offline
        try:
            with serve_in_process() as url:
                yield SimpleNamespace(url=url, hub=hub, outputs=tmp / "outputs")
        finally:
            default_registry().unload_all()
        assert hub.server_errors == []


def open_page(server, browser):
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(QUICK)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url, wait_until="domcontentloaded")
    expect(page.get_by_role("tab", name="Model")).to_be_visible(timeout=SLOW)
    return SimpleNamespace(page=page, context=context, errors=errors)


def load(page, model: str, token: str = "") -> None:
    """The Model tab's load, as typed by a user (the tab must be shown)."""
    tab = page.get_by_role("tabpanel")
    box = tab.get_by_label("Model: Hub id, local folder or demo model")
    box.fill(model)
    box.press("Enter")
    tab.get_by_label("Hugging Face token (private or gated repos)").fill(token)
    page.get_by_role("button", name="Load", exact=True).click()


def toast(page, pattern: str):
    return page.locator(".toast-body").filter(has_text=re.compile(pattern))


def test_what_one_visitor_loads_with_their_token_the_other_cannot_use_list_or_download(server, browser):
    alice, mallory = open_page(server, browser), open_page(server, browser)
    try:
        # Alice loads the gated model with her token, then the public demo model.
        load(alice.page, GATED, CAROL)
        expect(alice.page.get_by_text(re.compile(re.escape(GATED) + r" \[bf16\] loaded in"))).to_be_visible(
            timeout=SLOW)
        load(alice.page, LLAMA)
        expect(alice.page.get_by_text(re.compile(re.escape(LLAMA) + r" \[bf16\] loaded in"))).to_be_visible(
            timeout=SLOW)
        expect(data_rows(alice.page.get_by_role("grid", name=LOADED))).to_have_count(2)
        # The Model tab says where the OpenAI-compatible API is and which id names her (shared) model; never the key.
        api = re.compile(r"OpenAI-compatible API \(bearer key: QUANT_API_KEY\): " + re.escape(server.url) +
                         r"v1 · model " + re.escape(f"{LLAMA} [bf16]"))
        expect(alice.page.get_by_text(api)).to_be_visible()
        assert "sk-operator-key-for-the-browser-test" not in alice.page.content()

        # Mallory opens the app afterwards: only the public model is listed, and her tabs say it answers them.
        mallory.page.reload(wait_until="domcontentloaded")
        loaded = mallory.page.get_by_role("grid", name=LOADED)
        expect(data_rows(loaded)).to_have_count(1, timeout=SLOW)
        expect(data_rows(loaded).first).to_contain_text(LLAMA)
        assert GATED not in mallory.page.content()
        expect(data_rows(mallory.page.get_by_role("grid", name=HISTORY))).to_have_count(0)  # Alice's loads are hers
        mallory.page.get_by_role("tab", name="Chat").click()
        expect(mallory.page.get_by_role("tabpanel").get_by_text(f"Answering: {LLAMA} [bf16]")).to_be_visible()

        # She cannot load it without a token of her own: one message, and only the status line is marked.
        mallory.page.get_by_role("tab", name="Model").click()
        report_before = mallory.page.locator(".block", has_text="Load report").inner_text()
        load(mallory.page, GATED)
        expect(toast(mallory.page, "gated repository: it needs the token")).to_be_visible(timeout=SLOW)
        for name in (LOADED, HISTORY):
            block = mallory.page.locator(".block", has=mallory.page.get_by_role("grid", name=name))
            expect(block.get_by_text("Error", exact=True)).to_have_count(0)
        expect(mallory.page.locator(".block", has_text="Load report").get_by_text("Error", exact=True)).to_have_count(
            0)
        assert mallory.page.locator(".block", has_text="Load report").inner_text() == report_before
        assert GATED not in data_rows(loaded).all_inner_texts().__repr__()

        # Alice quantizes her model with her token; the folder is hers: Mallory can neither push nor load it.
        alice.page.get_by_role("tab", name="Quantize").click()
        tab = alice.page.get_by_role("tabpanel")
        source = tab.get_by_label("Source model (unquantized): Hub id, local folder or demo model")
        source.fill(GATED)
        source.press("Enter")
        tab.get_by_label("Hugging Face token (private or gated repos)").fill(CAROL)
        alice.page.get_by_role("radio", name="bitsandbytes nf4 (serialized)").check()
        alice.page.get_by_role("button", name="Quantize", exact=True).click()
        expect(tab.get_by_text("Saved to")).to_be_visible(timeout=SLOW)
        folder = tab.get_by_label("Folder to push").input_value()
        assert folder.startswith(str(server.outputs))

        mallory.page.get_by_role("tab", name="Quantize").click()
        other = mallory.page.get_by_role("tabpanel")
        other.get_by_label("Folder to push").fill(folder)
        other.get_by_label("Repo id").fill("mallory/stolen")
        other.get_by_label("Hugging Face token (write)").fill("hf_mallory_write_token")
        mallory.page.get_by_role("button", name="Push to the Hub", exact=True).click()
        expect(toast(mallory.page, "Only folders this session quantized")).to_be_visible(timeout=SLOW)
        mallory.page.get_by_role("tab", name="Model").click()
        load(mallory.page, folder)
        expect(toast(mallory.page, "is not a model this server can load")).to_be_visible(timeout=SLOW)
        assert not server.hub.find_requests(pattern="mallory"), "nothing of Alice's reached the Hub for Mallory"
        assert CAROL not in mallory.page.content() and alice.errors == [] and mallory.errors == []
    finally:
        alice.context.close()
        mallory.context.close()
