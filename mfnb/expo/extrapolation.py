"""ExPO's weight arithmetic on model folders and state dicts (Zheng et al., paper 002): no training.

``theta_s = theta + alpha * (theta - theta_w)`` with ``theta_w`` the weaker (SFT) model and ``theta`` the
aligned one; computed per tensor in float32 (``torch.lerp(theta_w, theta, 1 + alpha)``) and cast back to the
tensor's dtype, so both ends are exact: alpha = 0 returns the aligned model bit for bit, alpha = -1 the weak
model's values (exactly, in every dtype).

* :func:`extrapolate` works on model folders and streams: headers are read and validated with
  ``safetensors.safe_open``, tensor bytes are read in 1M-element chunks with ``pread`` and written chunk by
  chunk behind a header computed up front, so memory stays at a few chunk buffers whatever the model size.
* :func:`extrapolate_state_dict` is the same arithmetic on in-memory state dicts.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import struct
import sys
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open

from mfnb.core.atomic import atomic_dir
from mfnb.core.progress import progress as progress_bar

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Files never copied from ``strong``: they would be stale weights beside the extrapolated ones.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
# Elements per working chunk: a few buffers of this many elements (2-4 MB each, cache-sized) are all the
# memory extrapolate() holds, whatever the tensor or model size.
CHUNK_ELEMENTS = 1 << 20
# Chunks that may wait for the writer thread at once.
WRITE_RING = 3

_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
_FLOAT = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


class ExpoError(ValueError):
    """Inputs that cannot be extrapolated (mismatched models, missing shards, bad alpha or output path)."""


# ----------------------------------------------------------------------------------------------- arithmetic


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _check_alpha(alpha: Any, what: str = "alpha") -> float:
    """A real number (not a bool or a string such as '0.5') whose 1 + alpha fits the float32 arithmetic."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ExpoError(f"{what} must be a finite number (int or float), got {alpha!r} ({type(alpha).__name__})")
    value = float(alpha)
    if not math.isfinite(value):
        raise ExpoError(f"{what} must be a finite number, got {alpha!r}")
    if abs(1.0 + value) > _FLOAT32_MAX:
        raise ExpoError(f"{what}={value:g} overflows: ExPO computes in float32, where 1 + {what} must stay "
                        f"within +-{_FLOAT32_MAX:.3g}")
    return value


_NATIVE_LERP = {torch.float64, torch.float32, torch.float16, torch.bfloat16}


def _combine(strong: torch.Tensor, weak: torch.Tensor, alpha: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``strong + alpha * (strong - weak)`` in float32, in strong's dtype; never writes into its inputs.

    It is ``torch.lerp(weak, strong, 1 + alpha)``: for weight 1 + alpha >= 0.5 lerp computes exactly
    ``strong - (strong - weak) * (-alpha)``, and at alpha = -1 (weight 0) it returns ``weak`` exactly.  On CPU
    a bf16/fp16 lerp upcasts to float32 internally (a test checks it is bit-equal to lerp in float32 cast
    back) and is several times faster than explicit casts, so same-dtype pairs take it natively.
    """
    weight = 1.0 + alpha
    if strong.dtype == weak.dtype and strong.dtype in _NATIVE_LERP:
        return torch.lerp(weak, strong, weight, out=out)
    result = torch.lerp(weak.float(), strong.float(), weight).to(strong.dtype)
    return result if out is None else out.copy_(result)


def extrapolate_state_dict(weak_sd: Mapping[str, torch.Tensor], strong_sd: Mapping[str, torch.Tensor],
                           alpha: float) -> dict[str, torch.Tensor]:
    """ExPO on in-memory state dicts; returns new tensors, inputs untouched.

    Non-float tensors (int buffers) are copied from ``strong``; tensors tied in ``strong`` (sharing storage,
    e.g. tied embeddings) are extrapolated once and stay tied in the result.
    """
    alpha = _check_alpha(alpha)
    _check_same_tensors({k: _describe(v) for k, v in weak_sd.items()},
                        {k: _describe(v) for k, v in strong_sd.items()})
    out: dict[str, torch.Tensor] = {}
    tied: dict[tuple, torch.Tensor] = {}
    for name, s in strong_sd.items():
        key = (s.untyped_storage().data_ptr(), s.storage_offset(), tuple(s.shape), s.stride(), s.dtype)
        if s.numel() and key in tied:
            out[name] = tied[key]
            continue
        if alpha == 0 or not s.is_floating_point():
            result = s.detach().clone()
        else:
            result = _combine(s.detach(), weak_sd[name].detach(), alpha)
            if s.numel() and not bool(result.abs().max() <= torch.finfo(result.dtype).max) \
                    and bool(s.isfinite().all()):
                raise ExpoError(f"alpha={alpha:g} overflows {name!r}: strong + alpha * (strong - weak) leaves "
                                f"the range of {str(result.dtype).removeprefix('torch.')}")
        if s.numel():
            tied[key] = result
        out[name] = result
    return out


def _describe(t: torch.Tensor) -> tuple[bool, tuple[int, ...], str]:
    return t.is_floating_point(), tuple(t.shape), str(t.dtype).removeprefix("torch.")


def _check_same_tensors(weak: Mapping[str, tuple], strong: Mapping[str, tuple]) -> None:
    """Same names, shapes and float-ness (name -> (is_float, shape, dtype)); the error names the first mismatch."""
    for name, (s_float, s_shape, s_dtype) in strong.items():
        if name not in weak:
            raise ExpoError(f"tensor {name!r} is in strong but not in weak")
        w_float, w_shape, w_dtype = weak[name]
        if w_shape != s_shape:
            raise ExpoError(f"tensor {name!r} has shape {w_shape} in weak but {s_shape} in strong")
        if w_float != s_float:
            raise ExpoError(f"tensor {name!r} is {w_dtype} in weak but {s_dtype} in strong")
    for name in weak:
        if name not in strong:
            raise ExpoError(f"tensor {name!r} is in weak but not in strong")


# ------------------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class _Entry:
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offset of the tensor's data in its file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]

    def describe(self) -> tuple[bool, tuple[int, ...], str]:
        return self.dtype in _FLOAT, self.shape, self.dtype


class _Checkpoint:
    """A safetensors model folder's layout: tensor -> (shard file, dtype, shape), read from headers only."""

    def __init__(self, folder: str | Path, role: str):
        self.folder = Path(folder)
        self.role = role
        if not self.folder.is_dir():
            raise ExpoError(f"{role} model folder {str(self.folder)!r} does not exist")
        index = self.folder / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.index: Path | None = index
        elif (self.folder / SINGLE_FILE).is_file():
            weight_map = None
            self.index = None
        else:
            raise ExpoError(f"{role} model folder {str(self.folder)!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        for file in files:
            if not (self.folder / file).is_file():
                raise ExpoError(f"missing shard file {file!r} of the {role} model (named by {INDEX_FILE} "
                                f"in {str(self.folder)!r})")
        self.files = files
        self.metadata: dict[str, dict | None] = {}
        self.entries: dict[str, _Entry] = {}
        found: dict[str, _Entry] = {}
        for file in files:
            with safe_open(self.folder / file, framework="pt") as f:  # validates the file's header
                self.metadata[file] = f.metadata()
                starts = _data_starts(self.folder / file)
                for name in f.keys():
                    sl = f.get_slice(name)
                    dtype = sl.get_dtype()
                    if dtype not in _ITEMSIZE:
                        raise ExpoError(f"tensor {name!r} in {file!r} has unsupported dtype {dtype}")
                    found[name] = _Entry(file, dtype, tuple(sl.get_shape()), starts[name])
        if weight_map is None:
            self.entries = found
        else:
            for name, file in weight_map.items():
                if name not in found or found[name].file != file:
                    raise ExpoError(f"{INDEX_FILE} of the {role} model maps tensor {name!r} to {file!r}, "
                                    f"which does not hold it")
                self.entries[name] = found[name]

    def config(self) -> dict:
        path = self.folder / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def shard_names(self) -> dict[str, list[str]]:
        """Shard file -> its tensor names, in index (or file) order."""
        out: dict[str, list[str]] = {file: [] for file in self.files}
        for name, entry in self.entries.items():
            out[entry.file].append(name)
        return out


def _data_starts(path: Path) -> dict[str, int]:
    """Tensor name -> absolute byte offset of its data (safetensors: u64 header length, JSON header, data)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {name: 8 + length + info["data_offsets"][0] for name, info in header.items() if name != "__metadata__"}


def _check_architecture(weak: _Checkpoint, strong: _Checkpoint) -> None:
    w, s = weak.config(), strong.config()
    for key in ("architectures", "model_type"):
        if key in w and key in s and w[key] != s[key]:
            raise ExpoError(f"different architectures: config {key} is {w[key]!r} in weak but {s[key]!r} in strong")


def _check_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    out_r = out.resolve()
    for folder in inputs:
        f = folder.resolve()
        if out_r == f or f in out_r.parents:
            raise ExpoError(f"output folder {str(out)!r} is (inside) the input folder {str(folder)!r}")
        if out_r in f.parents:
            raise ExpoError(f"output folder {str(out)!r} contains the input folder {str(folder)!r}; "
                            f"replacing it would delete that input")
    if out.exists() and not overwrite:
        raise ExpoError(f"output folder {str(out)!r} already exists (pass overwrite=True to replace it)")


# ---------------------------------------------------------------------------------------------- writing


class _ShardWriter:
    """Writes one safetensors file tensor by tensor: the header is computed from shapes and dtypes up front,
    then raw bytes are appended, so nothing larger than a chunk is ever held for the write."""

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None):
        header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
        header["__metadata__"].setdefault("format", "pt")
        offset = 0
        self.expected: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            nbytes = math.prod(shape) * _ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.expected.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keeps the data section 8-byte aligned, as safetensors does
        self.path = path
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(raw)))
        self.file.write(raw)
        self.position = 0
        self.written = 0

    def write(self, chunk: torch.Tensor) -> None:
        data = chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        self.file.write(memoryview(data))
        self.written += data.nbytes

    def end_tensor(self) -> None:
        name, nbytes = self.expected[self.position]
        if self.written != nbytes:  # a bug guard: a header promising bytes that were not written
            raise RuntimeError(f"wrote {self.written} bytes for {name!r}, header says {nbytes}")
        self.position += 1
        self.written = 0

    def finish(self, durable: bool) -> None:
        if self.position != len(self.expected):
            raise RuntimeError(f"{self.path.name}: {len(self.expected) - self.position} tensors not written")
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


_TORCH_DTYPE = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class _Buffers:
    """Byte buffers reused for every chunk: fresh allocations would page-fault on every chunk."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, role: str, nbytes: int) -> torch.Tensor:
        if role not in self.buffers or self.buffers[role].numel() < nbytes:
            self.buffers[role] = torch.empty(nbytes, dtype=torch.uint8)
        return self.buffers[role][:nbytes]


def _pread_into(fd: int, offset: int, buffer: torch.Tensor, path: Path) -> None:
    view = memoryview(buffer.numpy())
    while view.nbytes:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise ExpoError(f"{str(path)!r} is truncated: tensor data ends past the end of the file")
        view, offset = view[n:], offset + n


def _write_shard(path: Path, file: str, strong: _Checkpoint, weak: _Checkpoint, alpha: float,
                 durable: bool, buffers: _Buffers, bar) -> None:
    """One output shard, tensor by tensor and chunk by chunk, laid out like strong's shard ``file``.

    Tensor bytes are read with ``pread`` into reused buffers (the ranges come from the headers that
    ``safe_open`` validated): a memory map page-faults every 4 KB, which on a 2-core machine cost more than
    the arithmetic.  Writes run on one background thread, overlapping the next chunk's read and arithmetic;
    a ring of WRITE_RING buffer sets keeps a buffer from being refilled before its write is done.
    """
    # Largest items first keeps every tensor aligned to its element size within the data section.
    names = sorted(strong.shard_names[file], key=lambda n: -_ITEMSIZE[strong.entries[n].dtype])
    entries = [(n, strong.entries[n].dtype, strong.entries[n].shape) for n in names]
    with _ShardWriter(path, entries, strong.metadata[file]) as writer, ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="expo-write"))
        stack.callback(pool.shutdown, cancel_futures=True)  # on an error: drop queued writes
        in_flight: deque[Future] = deque()  # chunk writes, oldest first; Future.result() re-raises errors
        checks: list[Future] = []  # end-of-tensor byte counts
        fds: dict[Path, int] = {}  # input files, opened on demand and closed with this shard

        def fd(folder: Path, name: str) -> int:
            if folder / name not in fds:
                fds[folder / name] = os.open(folder / name, os.O_RDONLY)
                stack.callback(os.close, fds[folder / name])
            return fds[folder / name]

        chunk = 0
        for name, dtype, shape in entries:
            s_entry = strong.entries[name]
            w_entry = weak.entries[name]
            combine = dtype in _FLOAT and alpha != 0
            numel, s_item, w_item = math.prod(shape), _ITEMSIZE[dtype], _ITEMSIZE[w_entry.dtype]
            for start in range(0, numel, CHUNK_ELEMENTS):
                if len(in_flight) == WRITE_RING:  # the oldest write used the buffer set we are about to refill
                    in_flight.popleft().result()
                slot, chunk = chunk % WRITE_RING, chunk + 1
                count = min(CHUNK_ELEMENTS, numel - start)
                s = buffers.get(f"strong{slot}", count * s_item)
                _pread_into(fd(strong.folder, file), s_entry.start + start * s_item, s, strong.folder / file)
                if combine:
                    w = buffers.get("weak", count * w_item)
                    _pread_into(fd(weak.folder, w_entry.file), w_entry.start + start * w_item, w,
                                weak.folder / w_entry.file)
                    out = buffers.get(f"out{slot}", count * s_item).view(_TORCH_DTYPE[dtype])
                    s = _combine(s.view(_TORCH_DTYPE[dtype]), w.view(_TORCH_DTYPE[w_entry.dtype]), alpha, out=out)
                in_flight.append(pool.submit(writer.write, s))
            checks.append(pool.submit(writer.end_tensor))  # runs after this tensor's writes (one thread, FIFO)
            bar.update(s_entry.nbytes)
        for future in (*in_flight, *checks):
            future.result()
        writer.finish(durable)


def _copy_small_files(strong: Path, dest: Path, written: set[str]) -> list[str]:
    """Everything in ``strong`` but weights and hidden entries; returns skipped foreign weight files."""
    skipped = []
    for item in sorted(strong.iterdir()):
        if item.name.startswith(".") or item.name == INDEX_FILE or item.name in written:
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns(*(f"*{s}" for s in WEIGHT_SUFFIXES)))
        elif item.name.endswith(WEIGHT_SUFFIXES):
            skipped.append(item.name)
        else:
            shutil.copy2(item, dest / item.name)
    return skipped


def extrapolate(weak: str | Path, strong: str | Path, alpha: float, out: str | Path, *,
                overwrite: bool = False, progress: bool = True, durable: bool = False) -> Path:
    """Write ``strong + alpha * (strong - weak)`` as a model folder ``out``; returns ``out``.

    ``out`` gets strong's shard names and index and copies of its config, generation config, tokenizer and
    other small files.  ``weak`` may be sharded differently (tensors are looked up through its index).
    Streams: tensors are read and written in chunks of CHUNK_ELEMENTS elements, so peak memory is a few
    chunk buffers (tens of MB) whatever the model or tensor size; inputs are only read.  Everything is
    written into a hidden folder beside ``out`` and renamed at the end, so a killed process leaves no
    ``out`` (its written pages still reach the disk).  ``durable=True`` also fsyncs every file before the
    rename, so that a power loss or kernel crash cannot leave a finished-looking folder either; it is off by
    default, like ``save_pretrained``, because flushing gigabytes costs about 3x the extrapolation itself
    (benchmarks/bench_expo.py measures both).  ``overwrite`` replaces an existing ``out`` atomically.
    """
    alpha = _check_alpha(alpha)
    weak, strong, out = Path(weak), Path(strong), Path(out)
    _check_output(out, [weak, strong], overwrite)
    w_ckpt = _Checkpoint(weak, "weak")
    s_ckpt = _Checkpoint(strong, "strong")
    _check_architecture(w_ckpt, s_ckpt)
    _check_same_tensors({k: e.describe() for k, e in w_ckpt.entries.items()},
                        {k: e.describe() for k, e in s_ckpt.entries.items()})
    if sys.byteorder != "little":
        raise ExpoError("safetensors is little-endian; writing it from a big-endian machine is not supported")

    total = sum(e.nbytes for e in s_ckpt.entries.values())
    bar = progress_bar(total=total, unit="B", unit_scale=True, disable=not progress, desc=f"ExPO alpha={alpha:g}")
    with bar, _one_torch_thread(), atomic_dir(out) as tmp:
        buffers = _Buffers()
        for file in s_ckpt.files:
            _write_shard(tmp / file, file, s_ckpt, w_ckpt, alpha, durable, buffers, bar)
        if s_ckpt.index is not None:
            shutil.copy2(s_ckpt.index, tmp / INDEX_FILE)
        skipped = _copy_small_files(strong, tmp, set(s_ckpt.files))
        if skipped:
            warnings.warn(f"not copied from {str(strong)!r} (other weight files): {', '.join(skipped)}", stacklevel=2)
        if durable:
            for path in sorted(tmp.rglob("*"), reverse=True):  # files, then their folders
                _fsync(path)
            _fsync(tmp)
    if durable:
        _fsync(out.parent)
    return out


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the chunk arithmetic on one intra-op thread, restoring the old count after.

    Each chunk is ~1 ms of work; with 2 threads on a busy 2-core machine every parallel region waited a
    scheduler slice for the second thread (~3 ms per call, 10x slower overall).  The work is bound by
    memory bandwidth and I/O anyway.  Other threads using torch meanwhile see the same setting.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
