"""Quantization Playground: load, compare, quantize and publish Hugging Face models. No UI code lives here."""

import logging
import os

# gptqmodel sizes a worker pool from the CPU count and refuses fewer than 2 workers (seen on 2-core machines).
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))

# torchao (pulled in by transformers when installed) registers enums that torch 2.14 warns about on import:
# noise in every CLI run, nothing a user can act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
