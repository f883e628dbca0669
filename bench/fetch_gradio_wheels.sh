#!/usr/bin/env bash
# Wheels for running the app (bench/load_test.py serve) on the GPU machine, whose image has no gradio stack:
# `bash bench/fetch_gradio_wheels.sh` here fills .whlg/ (git-ignored through .git/info/exclude, ~52 MB); on the device,
# carry ".whlg" and begin with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whlg/*.whl && export PYTHONPATH=/tmp/site:$PWD
# transformers/tokenizers/safetensors are in it too, so a load test needs no other carry (.whl + .whlg exceed 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whlg/" .git/info/exclude 2>/dev/null || echo "/.whlg/" >> .git/info/exclude
mkdir -p .whlg
for pkg in gradio==6.31.0 gradio_client==2.7.2 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.13.4 \
    pydantic_core==2.46.4 annotated_types==0.7.0 typing_inspection==0.4.2 orjson==3.11.9 python_multipart==0.0.34 \
    safehttpx==0.1.7 semantic_version==2.10.0 tomlkit==0.14.0 groovy==0.1.2 hf_gradio==0.4.1 pydub==0.25.1 \
    brotli==1.2.1 pytz==2026.6 opentelemetry-api==1.45.2 transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 -d .whlg "$pkg"
done
du -sh .whlg
