"""The Gradio UI, a module per tab: each holds its components and their wiring together. app.py is the frame that
assembles them (`build_app`) and serves the app; `quant` does the work and imports no Gradio.

- common.py: what every tab uses (the i18n `t`, user_errors, visitor_of, Slider, the Stop buttons' events)
- shared.py: what the tabs share within one page (`Shared`: the session's model, the notes that name it, the API line)
- model_tab.py, chat_tab.py, batch_tab.py, compare_tab.py, quantize_tab.py: the tabs, each a `build(shared)`

A new load mode or method option (quant.methods) needs no change here: the Model tab, Compare's and "Measure these
modes" lists and the Quantize tab's methods are generated from METHODS; only its strings go in quant/ui_strings.py.
"""
