"""Checkpoint weights read straight into tensors on their device, through pinned host buffers for a GPU.

A warm 8B bf16 start spent 3.3 of its 4.3 s of weights copying from pageable host memory to the GPU
(bench/results/startup-8b-cuda-profiled-fifteenth.md): transformers materializes each tensor from the file's mmap
and then copies it with `.to("cuda")`, which the driver stages through its own small pinned buffer. Here each file
is read with `pread` (no page faults on a mapping; the GIL is released while the kernel copies) by a few threads into
their own pinned buffers, and each buffer goes to the GPU on the thread's own stream while the thread reads the next.
The result is a plain state dict (one tensor per entry, each its own storage) for `from_pretrained(state_dict=...)`.

Measured against transformers' own load by `bench/weight_load.py` (the same tensors, asserted there); quant.loader
streams a checkpoint's weights this way where it is the same load (`streamed_weights_device`, QUANT_STREAM_WEIGHTS).
"""

from __future__ import annotations

import json
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .errors import QuantError

SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64, "F16": torch.float16,
    "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""The safetensors format's dtype names (its specification) and torch's dtypes for them."""

BUFFER_BYTES = 32 << 20
"""One pinned buffer; each thread has two (one being read into while the other is copied to the GPU)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: where its bytes are in the file (absolute offsets)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class _Piece:
    """Up to BUFFER_BYTES of one tensor: read `length` bytes at `file_offset` into its bytes from `tensor_offset`."""

    path: Path
    name: str
    file_offset: int
    tensor_offset: int
    length: int


def safetensors_entries(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file from its header (8 bytes of little-endian length, then JSON), in file order.

    Raises QuantError for a file that is not a well-formed safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise QuantError(f"{path} is not a safetensors file: it is shorter than its header's length field.")
        (header_length,) = struct.unpack("<Q", head)
        if header_length > size - 8:
            raise QuantError(f"{path} is not a safetensors file, or is cut short: its header says {header_length} "
                             f"bytes, the file has {size - 8} after the length field.")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise QuantError(f"{path} is not a safetensors file: its header is not JSON ({exc}).") from None
    data_start = 8 + header_length
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise QuantError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, which this reader does not "
                             "know.")
        shape = tuple(int(d) for d in info["shape"])
        begin, finish = (int(o) for o in info["data_offsets"])
        if finish - begin != math.prod(shape) * dtype.itemsize or begin < 0 or data_start + finish > size:
            raise QuantError(f"{path}: tensor {name}'s bytes ({begin}-{finish}) do not match its shape {shape} and "
                             f"dtype, or lie past the end of the file (is it cut short?).")
        entries.append(TensorEntry(name, dtype, shape, data_start + begin, data_start + finish))
    return sorted(entries, key=lambda e: e.start)


def default_threads() -> int:
    """Reader threads: 8 where the machine has the cores (an 8B bf16 checkpoint from the page cache to an H200: 0.71 s
    with 8, 0.95 s with 4, 3.20 s with 1; bench/results/weight-load-8b-cuda.md), else one per core."""
    return max(1, min(8, os.cpu_count() or 1))


def read_safetensors(paths: list[Path], device: torch.device | str, *, threads: int | None = None,
                     buffer_bytes: int = BUFFER_BYTES) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files `paths` as a tensor on `device` (its own storage, the file's dtype).

    On a GPU the bytes go through two pinned buffers per thread and the thread's own stream; on the CPU they are read
    into the tensors directly. Raises QuantError for a malformed or truncated file, or a name in two files."""
    device = torch.device(device)
    tensors: dict[str, torch.Tensor] = {}
    pieces: list[_Piece] = []
    for path in paths:
        for entry in safetensors_entries(Path(path)):
            if entry.name in tensors:
                raise QuantError(f"Tensor {entry.name} is in two checkpoint files (the second: {path}).")
            tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype, device=device)
            for offset in range(0, entry.end - entry.start, buffer_bytes):
                pieces.append(_Piece(Path(path), entry.name, entry.start + offset, offset,
                                     min(buffer_bytes, entry.end - entry.start - offset)))
    byte_views = {name: t.view(-1).view(torch.uint8) if t.numel() else None for name, t in tensors.items()}
    threads = max(1, min(threads or default_threads(), len(pieces)))
    work = [pieces[i::threads] for i in range(threads)]  # file order within each thread: sequential reads
    if device.type == "cuda":
        reader = _GpuReader(device, buffer_bytes)
        run = reader.run
    else:
        run = _read_into_host
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="weight-stream") as pool:
        for future in [pool.submit(run, share, byte_views) for share in work]:
            future.result()
    return tensors


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill `view` from the file at `offset`; a short file is an error, not zeros."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise QuantError(f"{path} ends before its tensors' bytes do (cut short while copying?).")
        done += n


class _Files:
    """One descriptor per file per thread (a thread's reads do not move another's)."""

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        return self.fds[path]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _read_into_host(pieces: list[_Piece], byte_views: dict[str, torch.Tensor]) -> None:
    files = _Files()
    try:
        for piece in pieces:
            target = byte_views[piece.name][piece.tensor_offset:piece.tensor_offset + piece.length]
            _pread_into(files.fd(piece.path), memoryview(target.numpy()), piece.file_offset, piece.path)
    finally:
        files.close()


class _GpuReader:
    """Each thread: two pinned buffers, one stream; a buffer is read into again only after its copy finished."""

    def __init__(self, device: torch.device, buffer_bytes: int) -> None:
        self.device = device
        self.buffer_bytes = buffer_bytes

    def run(self, pieces: list[_Piece], byte_views: dict[str, torch.Tensor]) -> None:
        files = _Files()
        stream = torch.cuda.Stream(self.device)
        buffers = [torch.empty(self.buffer_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        copied = [None, None]
        try:
            for i, piece in enumerate(pieces):
                slot = i % 2
                if copied[slot] is not None:
                    copied[slot].synchronize()
                buffer = buffers[slot][:piece.length]
                _pread_into(files.fd(piece.path), memoryview(buffer.numpy()), piece.file_offset, piece.path)
                target = byte_views[piece.name][piece.tensor_offset:piece.tensor_offset + piece.length]
                with torch.cuda.stream(stream):
                    target.copy_(buffer, non_blocking=True)
                    copied[slot] = torch.cuda.Event()
                    copied[slot].record(stream)
        finally:
            stream.synchronize()  # every copy done (or, after an error, none left reading a buffer)
            files.close()


def checkpoint_files(folder: Path | str) -> list[Path]:
    """The safetensors files from_pretrained reads from a local folder: the shards its index names, else its single
    file; none for a checkpoint in another format (a folder may hold other .safetensors files, Mistral's consolidated
    one for instance, that are not the model's)."""
    folder = Path(folder)
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    single = folder / SAFE_WEIGHTS_NAME
    return [single] if single.is_file() else []
