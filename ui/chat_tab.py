"""The Chat tab: a conversation with the session's model, streamed, with Stop, Regenerate, Undo and Clear; and the
generation settings, which the Batch tab shares."""

from __future__ import annotations

import gradio as gr

from quant.errors import QuantError
from quant.forms import GenerationForm
from quant.generation import at_most_every, check_message_size, stream_chat
from quant.registry import default_registry

from .common import Slider, as_text, new_stop_event, stop_button, t, user_errors, visitor_of
from .shared import Shared, model_for_session

UI_UPDATE_SECONDS = 0.04
"""The chat redraws at most 25 times a second; the reply's own speed is measured on the server, token by token."""


def chat_display(messages: list[dict]) -> list[dict]:
    """What the Chatbot shows: each reply with its footer (tokens, speed, mode) under it."""
    shown = []
    for m in messages:
        content = m["content"]
        if m.get("footer"):
            content = f"{content}\n\n---\n*{m['footer']}*"
        shown.append({"role": m["role"], "content": content})
    return shown


@user_errors
def add_user_message(message, messages, key, request: gr.Request):
    """Add the message to this session's conversation, once it is known to fit: a refused message never enters the
    conversation (every later reply would encode it again)."""
    if not (message or "").strip():
        raise gr.Error("Type a message first.")
    visitor = visitor_of(request)
    registry = default_registry()
    try:
        loaded = registry.get(model_for_session(key, visitor), visitor)
    except QuantError:
        loaded = None  # the reply says which model is missing
    check_message_size(loaded, message, "The message")
    messages = [*messages, {"role": "user", "content": message.strip()}]
    return "", messages, chat_display(messages)


@user_errors
def respond(key, messages, system_prompt, request: gr.Request, **generation):
    """Stream the reply to the last user message; the reply is saved in the session state as it grows. The
    generation settings arrive by GenerationForm field name."""
    settings = GenerationForm.from_values(generation).to_settings()
    if not messages or messages[-1]["role"] != "user":
        raise gr.Error("Type a message first.")
    stop = new_stop_event(request)
    registry = default_registry()
    visitor = visitor_of(request)
    with registry.use(model_for_session(key, visitor), visitor) as loaded:
        history = [{"role": m["role"], "content": m["content"]} for m in messages]
        reply = {"role": "assistant", "content": "", "footer": "…"}
        chunks = stream_chat(loaded, history, system_prompt=system_prompt, settings=settings, stop=stop)
        for chunk in at_most_every(chunks, UI_UPDATE_SECONDS):
            reply = {"role": "assistant", "content": chunk.text,
                     "footer": chunk.stats.summary() if chunk.done else f"{chunk.stats.new_tokens} tokens…"}
            if chunk.done:
                for notice in chunk.notices:
                    gr.Warning(as_text(notice))
            updated = [*messages, reply]
            yield chat_display(updated), updated


def regenerate_prepare(messages):
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise gr.Error("Nothing to regenerate.")
    return messages, chat_display(messages)


def undo(messages):
    """Remove the last exchange and put its message back in the box."""
    text = ""
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if messages and messages[-1]["role"] == "user":
        text = messages[-1]["content"]
        messages = messages[:-1]
    return text, messages, chat_display(messages)


def generation_settings() -> dict[str, gr.components.Component]:
    """The generation settings' fields by GenerationForm field name (in its order: the endpoints' order)."""
    start = GenerationForm()
    with gr.Accordion(t("settings"), open=False):
        with gr.Row():
            max_new_tokens = Slider(1, 2048, value=start.max_new_tokens, step=1, label=t("max_new_tokens"))
            do_sample = gr.Checkbox(value=start.do_sample, label=t("sample"))
            # Text, not a gr.Number: a Number shows and sends 0 when empty (every sampled reply seeded with 0).
            seed = gr.Textbox("", label=t("seed"), placeholder=t("seed.placeholder"), info=t("seed.info"), max_lines=1)
        with gr.Row():
            temperature = Slider(0.05, 2.0, value=start.temperature, step=0.05, label=t("temperature"))
            top_p = Slider(0.05, 1.0, value=start.top_p, step=0.05, label=t("top_p"))
            top_k = Slider(0, 200, value=start.top_k, step=1, label=t("top_k"))
        with gr.Row():
            repetition_penalty = Slider(0.5, 2.0, value=start.repetition_penalty, step=0.05,
                                        label=t("repetition_penalty"))
            no_repeat_ngram_size = Slider(0, 10, value=start.no_repeat_ngram_size, step=1, label=t("no_repeat"))
    named = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                 top_k=top_k, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                 seed=seed)
    return {name: named[name] for name in GenerationForm.INPUTS}


def build(shared: Shared) -> None:
    with gr.Tab(t("tab.chat"), id="chat"):
        shared.answering_note()
        chat_state = gr.State([])  # this session's conversation: role, content, and a footer per reply
        chatbot = gr.Chatbot(label=t("chat.label"), height=420, buttons=["copy"])
        with gr.Row():
            chat_box = gr.Textbox(show_label=False, placeholder=t("message"), scale=5, lines=1)
            send_btn = gr.Button(t("send"), variant="primary", scale=1)
        with gr.Row():
            stop_btn = gr.Button(t("stop"))
            regen_btn = gr.Button(t("regenerate"))
            undo_btn = gr.Button(t("undo"))
            clear_btn = gr.Button(t("clear"))
        system_prompt = gr.Textbox(label=t("system"), lines=2, placeholder=t("system.placeholder"))
        shared.generation = generation_settings()

    key = shared.active_key
    chat_run = dict(fn=respond, inputs=[key, chat_state, system_prompt], inputs_kwargs=shared.generation,
                    outputs=[chatbot, chat_state], concurrency_id="generate")
    send_btn.click(add_user_message, [chat_box, chat_state, key], [chat_box, chat_state, chatbot],
                   api_name="chat_add_message").success(**chat_run, api_name="chat_respond")
    chat_box.submit(add_user_message, [chat_box, chat_state, key], [chat_box, chat_state, chatbot],
                    api_name=False).success(**chat_run, api_name=False)
    regen_btn.click(regenerate_prepare, chat_state, [chat_state, chatbot], api_name=False).then(
        **chat_run, api_name=False)
    undo_btn.click(undo, chat_state, [chat_box, chat_state, chatbot], api_name=False)
    clear_btn.click(lambda: ([], []), None, [chat_state, chatbot], api_name=False)
    chatbot.clear(lambda: [], None, chat_state, api_name=False)  # the Chatbot's own trash icon clears the state too
    stop_button(stop_btn, "stop")
