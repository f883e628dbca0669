# Quantization Playground on a CUDA GPU; also a Hugging Face Space (`sdk: docker`, port 7860).
#   docker build -t quant-playground .
#   docker run --gpus all -p 7860:7860 -v quant-data:/data quant-playground
#
# torch from PyPI (requirements.txt) is a CUDA 13.0 build: a 13.0 base makes the NVIDIA runtime refuse a host
# driver too old for it, and its system CUDA libraries are there for bitsandbytes' native library too.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

# gcc, libc6-dev and python3-dev stay in the image: pypcre (a gptqmodel dependency) builds from source, and Triton
# (gptq_triton kernels, torch.compile) compiles its C launcher at run time. Distro package versions are not pinned:
# the pinned base tag fixes the Ubuntu release, and the archive drops superseded versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 python3-pip python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Hugging Face Spaces run the container as uid 1000, which Ubuntu 24.04 images give to a user `ubuntu`: replace it
# with `user`, and give it the app folder and the cache volume (created before VOLUME, so the ownership sticks).
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --create-home --uid 1000 --shell /bin/bash user \
    && mkdir -p /home/user/app /data/hf /data/kernels /data/outputs \
    && chown -R user:user /home/user /data

# Ubuntu's Python refuses pip installs into the system (PEP 668): a virtualenv first on PATH makes the `python3`
# that scripts/setup.sh calls (and the app runs with) the venv's.
RUN python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

WORKDIR /home/user/app

# The README's install recipe, as root (it apt-installs the PCRE2 headers), with the exact versions CI tested
# (constraints.txt). Only its inputs are copied first, so editing the code does not reinstall torch.
COPY --chown=user:user requirements.txt constraints.txt ./
COPY --chown=user:user scripts/setup.sh scripts/
RUN PIP_NO_CACHE_DIR=1 bash scripts/setup.sh \
    && rm -rf /var/lib/apt/lists/*

COPY --chown=user:user . .

# Downloaded models, compiled kernels and quantized outputs go to the /data volume, not the container's layer: a
# named volume keeps them across new containers and images (a Space's persistent storage mounts at /data too).
# HOME is set only now, so the root build above leaves nothing in the user's home.
ENV HOME=/home/user \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    HF_HOME=/data/hf \
    QUANT_KERNEL_CACHE=/data/kernels \
    QUANT_OUTPUT_DIR=/data/outputs
VOLUME /data

# Numeric, so a runtime can tell it is not root without reading the image's /etc/passwd.
USER 1000:1000
EXPOSE 7860

# The app imports torch, transformers and gptqmodel before it listens (about 20 s): give it a start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=5)"]

CMD ["python3", "app.py"]
