"""ExPO, weak-to-strong model extrapolation (Zheng et al., paper 002): no training, just weight arithmetic.

``theta_s = theta + alpha * (theta - theta_w)`` with ``theta_w`` the weaker (SFT) model and ``theta`` the
aligned one; computed per tensor in float32 (``torch.lerp(theta_w, theta, 1 + alpha)``) and cast back to the
tensor's dtype, so both ends are exact: alpha = 0 returns the aligned model bit for bit, alpha = -1 the weak
model's values (exactly, in every dtype).

* :func:`extrapolate` works on model folders and streams: headers are read and validated with
  ``safetensors.safe_open``, tensor bytes are read in 1M-element chunks with ``pread`` and written chunk by
  chunk behind a header computed up front, so memory stays at a few chunk buffers whatever the model size.
* :func:`extrapolate_state_dict` is the same arithmetic on in-memory state dicts.
* When the aligned model is the SFT model plus a LoRA adapter, ``theta - theta_w = B A * scaling`` and ExPO
  is the same adapter scaled by ``1 + alpha``: :func:`scale_lora_adapter` writes such an adapter and
  :func:`lora_extrapolation` sweeps alpha on a loaded ``PeftModel`` without merged copies.
* Notebook 03 (the paper's Section 3): :class:`ExpoParams`, DPO adapters per data fraction cached by config
  (:func:`train_dpo_adapter`), :func:`alpha_sweep` on the LoRA fast path, :func:`optimal_alpha_table`,
  :func:`length_controlled_win_rate`, :func:`less_data_table` (Table 1) and :func:`plot_alpha_curves` (Figure 5).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import random
import shutil
import struct
import sys
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from mfnb.atomic import atomic_dir

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
    bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=f"ExPO alpha={alpha:g}")
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


# ------------------------------------------------------------------------------------------------- LoRA


ADAPTER_FILE = "adapter_model.safetensors"


def _is_lora_b(name: str) -> bool:
    return "lora_B" in name or "lora_embedding_B" in name


def _check_linear_adapter(config: Mapping[str, Any], where: str) -> None:
    """Only a plain LoRA delta ``B A * scaling`` is linear in the scale; refuse what is not."""
    if config.get("use_dora"):
        raise ExpoError(f"{where}: DoRA adapters are not linear in their scale; merge and use extrapolate()")
    if config.get("modules_to_save"):
        raise ExpoError(f"{where}: modules_to_save {config['modules_to_save']} hold full weights, not deltas; "
                        f"merge and use extrapolate()")
    if config.get("bias", "none") != "none":
        raise ExpoError(f"{where}: trained biases (bias={config['bias']!r}) are not deltas; merge and use extrapolate()")


def scale_lora_adapter(adapter: Any, factor: float, out: str | Path | None = None, *,
                       overwrite: bool = False):
    """Multiply a LoRA adapter's delta by ``factor`` (ExPO with alpha = factor - 1) by scaling its lora_B.

    ``adapter`` is an adapter folder (then ``out`` is required: inputs are never modified; returns ``out``)
    or a loaded ``PeftModel`` (scaled in place and returned when ``out`` is None; otherwise its scaled
    adapter is saved to ``out``, the model is left as it was, and ``out`` is returned).  B is scaled in
    float32 and cast back, so the delta is multiplied to within one rounding of B's dtype.
    """
    factor = _check_alpha(factor, "factor")
    if isinstance(adapter, (str, Path)):
        return _scale_adapter_folder(Path(adapter), factor, out, overwrite)
    lora_bs = _peft_lora_b_params(adapter)
    if out is None:
        with torch.no_grad():
            for p in lora_bs:
                p.copy_(p.float() * factor)
        return adapter
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExpoError(f"output folder {str(out)!r} already exists (pass overwrite=True to replace it)")
    saved = [p.detach().clone() for p in lora_bs]
    try:
        with torch.no_grad():
            for p in lora_bs:
                p.copy_(p.float() * factor)
        with atomic_dir(out) as tmp:
            adapter.save_pretrained(tmp)
    finally:
        with torch.no_grad():
            for p, original in zip(lora_bs, saved):
                p.copy_(original)
    return out


def _peft_lora_b_params(model) -> list[torch.Tensor]:
    for name, cfg in getattr(model, "peft_config", {}).items():
        _check_linear_adapter(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg), f"adapter {name!r}")
    params = [p for n, p in model.named_parameters() if _is_lora_b(n)]
    if not params:
        raise ExpoError("model has no LoRA lora_B parameters")
    return params


def _scale_adapter_folder(folder: Path, factor: float, out: str | Path | None, overwrite: bool) -> Path:
    from safetensors.torch import load_file, save_file

    if out is None:
        raise ExpoError(f"scaling the adapter folder {str(folder)!r} needs an output folder (inputs are never modified)")
    out = Path(out)
    _check_output(out, [folder], overwrite)
    if not (folder / ADAPTER_FILE).is_file():
        raise ExpoError(f"adapter folder {str(folder)!r} has no {ADAPTER_FILE}")
    config_path = folder / "adapter_config.json"
    if config_path.is_file():
        _check_linear_adapter(json.loads(config_path.read_text()), str(folder))
    with safe_open(folder / ADAPTER_FILE, framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(folder / ADAPTER_FILE)
    scaled = [name for name in tensors if _is_lora_b(name)]
    if not scaled:
        raise ExpoError(f"{folder / ADAPTER_FILE} has no lora_B tensors")
    for name in scaled:
        tensors[name] = (tensors[name].float() * factor).to(tensors[name].dtype)
    with atomic_dir(out) as tmp:
        save_file(tensors, tmp / ADAPTER_FILE, metadata=metadata)
        for item in folder.iterdir():
            if item.name != ADAPTER_FILE and not item.name.startswith(".") and item.is_file():
                shutil.copy2(item, tmp / item.name)
    return out


@contextmanager
def lora_extrapolation(model, alpha: float) -> Iterator[Any]:
    """Within the block, ``model`` (a PeftModel) behaves as its ExPO extrapolation with this alpha.

    Multiplies each active LoRA layer's scaling by ``1 + alpha`` and restores the exact old values on
    exit, so an alpha sweep needs one loaded model and no merged copies.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    factor = 1.0 + _check_alpha(alpha)
    for name, cfg in getattr(model, "peft_config", {}).items():
        _check_linear_adapter(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg), f"adapter {name!r}")
    if any(isinstance(m, ModulesToSaveWrapper) for m in model.modules()):
        raise ExpoError("model has modules_to_save (full weights, not deltas); merge and use extrapolate()")
    saved: list[tuple[Any, str, float]] = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if module.merged:
            raise ExpoError("a LoRA layer is merged into its base weights; unmerge it before lora_extrapolation()")
        for adapter in module.active_adapters:
            if adapter in module.scaling:
                if module.use_dora.get(adapter):
                    raise ExpoError(f"adapter {adapter!r} uses DoRA, which is not linear in its scale")
                saved.append((module, adapter, module.scaling[adapter]))
    if not saved:
        raise ExpoError("model has no active LoRA layers")
    try:
        for module, adapter, scaling in saved:
            module.scaling[adapter] = scaling * factor
        yield model
    finally:
        for module, adapter, scaling in saved:
            module.scaling[adapter] = scaling


# ================================================================================================
# Notebook 03: ExPO on DPO models trained with less preference data (the paper's Section 3)
# ================================================================================================
#
# The SFT model is one of the world's roles (the tiny world's habit-ridden student); the aligned models
# are LoRA DPO adapters on it trained on nested fractions of one preference set, so every ExPO model is
# the SFT model plus a scaled adapter and the whole alpha sweep runs on one loaded PeftModel.

EXPO_VERSION = 1  # bump when the data recipe or training changes meaning, so cached adapters are not reused
_SCHEMAS = ("ExpoParams", "PreferenceDataParams")


def __getattr__(name: str):
    """``ExpoParams`` and ``PreferenceDataParams`` are defined on first use: their fields are DPO, LoRA and
    sampling settings, whose modules import TRL and transformers (~5 s), which the weight arithmetic above
    never needs."""
    if name in _SCHEMAS:
        _define_schemas()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_schemas() -> None:
    from typing import Annotated, Literal

    from pydantic import Field, field_validator

    from mfnb.dpo import DPOParams
    from mfnb.models import LoraParams, SamplingParams
    from mfnb.params import Params

    FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
    Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]

    class PreferenceDataParams(Params):
        """The full ("100%") preference set; each data fraction trains on a nested prefix of it.

        ``correct_vs_habit``: for a training prompt of the world, chosen = the correct answer and rejected =
        the answer with the task's habit (the student's systematic mistake), both known to the world.
        """

        source: Literal["correct_vs_habit"] = "correct_vs_habit"
        n_pairs: int = Field(default=4096, ge=1)
        seed: int = 0

    class ExpoParams(Params):
        """Notebook 03: reward, quality and length vs alpha per data fraction (Figure 5) and Table 1."""

        profile: str
        world: dict
        sft_role: str = "student"
        preference: PreferenceDataParams = PreferenceDataParams()
        fractions: list[Fraction] = Field(min_length=1)
        dpo: DPOParams
        lora: LoraParams = LoraParams()
        lr_probe: list[PositiveFloat] = Field(default_factory=list)
        alphas: list[FiniteFloat] = Field(min_length=1)
        reward_model: dict
        sampling: SamplingParams
        sweep_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
        n_select: int | None = Field(default=None, ge=1)
        n_report: int | None = Field(default=None, ge=1)
        judge: dict
        baseline_role: str = "g2"
        report_seed: int = 0
        train_seed: int = 0
        torch_threads: int | None = Field(default=None, ge=1)
        delta: float = Field(default=0.05, gt=0, lt=1)

        @field_validator("fractions", "alphas")
        @classmethod
        def _distinct(cls, value: list[float], info) -> list[float]:
            if len(set(value)) != len(value):
                raise ValueError(f"{info.field_name} must be distinct, got {value}")
            return value

    for cls in (PreferenceDataParams, ExpoParams):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    globals().update(PreferenceDataParams=PreferenceDataParams, ExpoParams=ExpoParams)


def paper_alpha_grid() -> list[float]:
    """Every alpha the paper searched (Table 3), sorted."""
    from mfnb import reference

    ranges = reference.load("expo_table3")["search_range"]
    return sorted({float(a) for r in ranges for a in str(r).split(",")})


# ------------------------------------------------------------------------------- preference data


def preference_rows(world, data: PreferenceDataParams) -> list[dict]:
    """The full preference set, in a seeded order: fraction f trains on the first ``ceil(f * n)`` rows,
    so a larger fraction contains every pair of a smaller one (as subsampling one dataset does)."""
    from mfnb.worlds import tasks

    prompts = list(world.prompts["train"])
    if data.n_pairs > len(prompts):
        raise ValueError(f"preference.n_pairs={data.n_pairs} exceeds the world's {len(prompts)} training prompts")
    random.Random(f"expo-preference-{data.seed}").shuffle(prompts)
    rows = []
    for prompt in prompts[: data.n_pairs]:
        example = tasks.parse_prompt(prompt)
        rows.append({"prompt": prompt, "chosen": example.answer(), "rejected": example.answer(habit=True)})
    return rows


def fraction_rows(rows: Sequence[dict], fraction: float) -> list[dict]:
    return list(rows[: max(1, math.ceil(fraction * len(rows) - 1e-9))])


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# ----------------------------------------------------------------------------------- DPO adapters


def adapter_key(world, params: ExpoParams, fraction: float, lr: float | None = None) -> str:
    """Everything that changes the adapter: world, SFT role, data, fraction, DPO and LoRA settings, seed."""
    dpo = params.dpo.model_dump()
    if lr is not None:
        dpo["lr"] = lr
    blob = json.dumps({"version": EXPO_VERSION, "world": world.key, "sft": params.sft_role,
                       "data": params.preference.model_dump(), "fraction": fraction, "dpo": dpo,
                       "lora": params.lora.model_dump(), "seed": params.train_seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def adapter_path(world, params: ExpoParams, fraction: float, lr: float | None = None,
                 cache_root: str | Path | None = None) -> Path:
    from mfnb import paths

    root = Path(cache_root or paths.cache_dir("expo_adapters"))
    return root / f"{world.key}-{params.sft_role}-{fraction:g}-{adapter_key(world, params, fraction, lr)}"


def train_dpo_adapter(world, params: ExpoParams, fraction: float, *, lr: float | None = None,
                      cache_root: str | Path | None = None, rows: Sequence[dict] | None = None) -> Path:
    """The LoRA DPO adapter for one data fraction, trained only when not cached.

    The adapter and its ``dpo.json`` (metrics, seconds) are written in one atomic rename, so a killed run
    leaves nothing that looks finished and a rerun trains exactly the adapters that are missing.
    """
    import time

    from mfnb.atomic import write_json
    from mfnb.dpo import dpo_update, preference_dataset
    from mfnb.models import attach_lora

    target = adapter_path(world, params, fraction, lr, cache_root)
    if (target / "dpo.json").is_file():
        return target
    start = time.perf_counter()
    rows = fraction_rows(rows if rows is not None else preference_rows(world, params.preference), fraction)
    model, tokenizer = world.load(params.sft_role)
    torch.manual_seed(params.train_seed)
    policy = attach_lora(model, params.lora)
    dpo = params.dpo if lr is None else params.dpo.model_copy(update={"lr": lr})
    data = preference_dataset([r["prompt"] for r in rows], [r["chosen"] for r in rows],
                              [r["rejected"] for r in rows], drop_identical=dpo.drop_identical)
    metrics = dpo_update(policy, tokenizer, data, dpo, seed=params.train_seed)
    info = {"fraction": fraction, "pairs": len(rows), "lr": dpo.lr, "world": world.key, "sft_role": params.sft_role,
            "seconds": round(time.perf_counter() - start, 1),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    with atomic_dir(target) as tmp:
        policy.save_pretrained(tmp)
        write_json(tmp / "dpo.json", info)
    return target


def adapter_info(path: str | Path) -> dict:
    file = Path(path) / "dpo.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_aligned(world, sft_role: str, adapter: str | Path):
    """(PeftModel = SFT model + DPO adapter, tokenizer), frozen, in eval mode."""
    from mfnb.models import load_adapter

    model, tokenizer = world.load(sft_role)
    return load_adapter(model, adapter, trainable=False).eval(), tokenizer


def lora_delta_norm(model) -> float:
    """Frobenius norm of the adapter's weight change ``sum ||B A * scaling||`` (how far DPO moved)."""
    from peft.tuners.lora import LoraLayer

    total = 0.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in module.active_adapters:
                    if name in module.lora_A:
                        delta = module.lora_B[name].weight @ module.lora_A[name].weight * module.scaling[name]
                        total += float(delta.float().pow(2).sum())
    return math.sqrt(total)


# ----------------------------------------------------------------------------------------- sweeps


def _responses_cache(folder: Path, alpha: float, prompts: Sequence[str], sampling: SamplingParams, seed: int) -> Path:
    blob = json.dumps({"alpha": alpha, "sampling": sampling.model_dump(), "seed": seed,
                       "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest()}, sort_keys=True)
    return folder / f"alpha{alpha:g}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"


def sweep_responses(model, tokenizer, prompts: Sequence[str], alphas: Sequence[float], sampling: SamplingParams,
                    *, seed: int = 0, cache: str | Path | None = None, progress: bool = True,
                    desc: str = "alpha sweep") -> dict[float, list[str]]:
    """Responses of the ExPO model for each alpha (``model``: SFT model + LoRA adapter, scaled in place
    by :func:`lora_extrapolation`; no merged copies).  Same seed for every alpha (common random numbers:
    differences between alphas are not sampling noise).  ``cache``: a folder (e.g. the adapter's) where
    each alpha's responses are saved atomically, so a killed sweep resumes where it stopped."""
    from mfnb.atomic import write_json
    from mfnb.models import generate

    out: dict[float, list[str]] = {}
    for alpha in tqdm(list(alphas), desc=desc, disable=not progress, leave=False):
        alpha = _check_alpha(alpha)
        file = _responses_cache(Path(cache), alpha, prompts, sampling, seed) if cache else None
        if file is not None and file.is_file():
            out[alpha] = json.loads(file.read_text())["responses"]
            continue
        with lora_extrapolation(model, alpha):
            out[alpha] = generate(model, tokenizer, list(prompts), sampling, seed=seed, show_progress=False)
        if file is not None:
            write_json(file, {"alpha": alpha, "seed": seed, "responses": out[alpha]})
    return out


def response_metrics(prompts: Sequence[str], responses: Sequence[str], *, reward_fn: Callable | None = None,
                     quality_fn: Callable | None = None, tokenizer=None) -> dict:
    """Mean reward (reward model), mean known quality, mean length in words (and tokens) of responses."""
    row = {"n": len(responses), "length_words": float(np.mean([len(r.split()) for r in responses]))}
    if tokenizer is not None:
        row["length_tokens"] = float(np.mean([len(tokenizer(r, add_special_tokens=False)["input_ids"])
                                              for r in responses]))
    if reward_fn is not None:
        row["reward"] = float(np.mean(reward_fn(list(prompts), list(responses))))
    if quality_fn is not None:
        row["quality"] = float(np.mean([quality_fn(p, r) for p, r in zip(prompts, responses)]))
    return row


def alpha_sweep(model, tokenizer, prompts: Sequence[str], alphas: Sequence[float], sampling: SamplingParams, *,
                seeds: Sequence[int] = (0,), reward_fn: Callable | None = None, quality_fn: Callable | None = None,
                cache: str | Path | None = None, progress: bool = True, desc: str = "alpha sweep"):
    """One row per alpha: mean reward / quality / length over ``prompts`` x ``seeds`` (a DataFrame)."""
    import pandas as pd

    answers = [sweep_responses(model, tokenizer, prompts, alphas, sampling, seed=s, cache=cache,
                               progress=progress, desc=f"{desc} (seed {s})") for s in seeds]
    rows = []
    for alpha in alphas:
        alpha = float(alpha)
        responses = [r for per_seed in answers for r in per_seed[alpha]]
        rows.append({"alpha": alpha, **response_metrics(list(prompts) * len(seeds), responses, reward_fn=reward_fn,
                                                        quality_fn=quality_fn, tokenizer=tokenizer)})
    return pd.DataFrame(rows)


def optimal_alpha(sweep, metric: str = "reward") -> float:
    """The alpha with the highest mean ``metric`` (the smallest such alpha on a tie), as the paper picks it."""
    best = sweep[metric].max()
    return float(sweep.loc[sweep[metric] == best, "alpha"].min())


def is_non_increasing(values: Sequence[float]) -> bool:
    return all(b <= a for a, b in zip(values, values[1:]))


def paper_optimal_alpha() -> dict[str, float]:
    """The paper's optimal alpha for its zephyr less-data models by data label (Table 3; "100%" is
    zephyr-7b-dpo-full), read from the reference tables."""
    from mfnb import reference

    t3 = reference.load("expo_table3")
    t3 = t3[t3["sft_model"] == "zephyr-7b-sft-full"]
    out = {}
    for aligned, alpha in zip(t3["aligned_model"], t3["optimal_alpha"]):
        label = "100%" if aligned == "zephyr-7b-dpo-full" else aligned.removeprefix("DPO(").split(" ")[0]
        out[label] = float(alpha)
    return out


def optimal_alpha_table(sweeps):
    """Per data fraction (``sweeps``: alpha_sweep frames with a ``data`` label column, in fraction order):
    the alpha the reward model picks, the alpha that is best by known quality (where known), the values
    at alpha = 0 (the DPO model) and at both picks, and the paper's optimal alpha where it has one."""
    import pandas as pd

    paper = paper_optimal_alpha()
    rows = []
    for label, sw in sweeps.groupby("data", sort=False):
        def at(alpha, col):
            return float(sw.loc[sw["alpha"] == alpha, col].iloc[0]) if col in sw else math.nan

        chosen = optimal_alpha(sw, "reward")
        row = {"data": label, "alpha_by_reward": chosen,
               "at_grid_edge": chosen == sw["alpha"].max() and len(sw) > 1,
               "reward_at_0": at(0.0, "reward") if (sw["alpha"] == 0).any() else math.nan,
               "reward_at_chosen": at(chosen, "reward")}
        if "quality" in sw:
            best = optimal_alpha(sw, "quality")
            row.update(alpha_by_quality=best,
                       quality_at_0=at(0.0, "quality") if (sw["alpha"] == 0).any() else math.nan,
                       quality_at_chosen=at(chosen, "quality"), quality_at_best=at(best, "quality"))
        row.update(length_at_0=at(0.0, "length_words") if (sw["alpha"] == 0).any() else math.nan,
                   length_at_chosen=at(chosen, "length_words"),
                   paper_optimal_alpha=paper.get(label, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------- length-controlled win rate

_OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "lose": 0.0}


def _outcome_number(item) -> float | None:
    if item is None:
        return None
    if isinstance(item, str):
        return _OUTCOME_VALUE.get(str(item).lower())  # "failed" -> None
    value = float(item)
    return None if math.isnan(value) or value < 0 else value


def length_controlled_win_rate(outcomes: Sequence, candidate_lengths: Sequence[float],
                               baseline_lengths: Sequence[float], *, l2: float = 1e-3,
                               max_iter: int = 100) -> dict:
    """Win rate with the effect of the length difference regressed out, in the spirit of AlpacaEval 2's LC.

    Fits ``P(win) = sigmoid(b0 + b1 * tanh((len_c - len_b) / sd))`` to the outcomes (win 1, tie 1/2, lose 0;
    failed ones dropped; sd = standard deviation of the length differences) by Newton's method on the
    log-likelihood with fractional targets and a tiny ridge ``l2`` (keeps the fit finite when the outcome is
    constant or separable).  The LC win rate is the model's prediction at zero length difference,
    ``sigmoid(b0)``: how often the candidate would win were it as long as the baseline.  With no length
    differences it equals the raw win rate; wins explained only by being longer are removed.  AlpacaEval's
    version also has an instruction-difficulty term fitted across many models; with one candidate and one
    baseline per table row that term is not identifiable, so it is left out.
    """
    rows = [(v, float(c), float(b)) for o, c, b in zip(outcomes, candidate_lengths, baseline_lengths)
            if (v := _outcome_number(o)) is not None]
    if len(candidate_lengths) != len(baseline_lengths) or len(outcomes) != len(candidate_lengths):
        raise ValueError(f"outcomes, candidate_lengths and baseline_lengths differ in length: {len(outcomes)}, "
                         f"{len(candidate_lengths)}, {len(baseline_lengths)}")
    if not rows:
        return {"n": 0, "win_rate": math.nan, "lc_win_rate": math.nan, "length_coef": math.nan}
    y = np.array([r[0] for r in rows])
    diff = np.array([r[1] - r[2] for r in rows])
    sd = float(diff.std())
    x = np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ beta)))
        grad = design.T @ (y - p) - l2 * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return {"n": len(y), "win_rate": float(y.mean()), "lc_win_rate": float(1.0 / (1.0 + math.exp(-beta[0]))),
            "length_coef": float(beta[1]), "mean_length_diff": float(diff.mean())}


def report_row(judge, prompts: Sequence[str], candidate: Sequence[str], baseline: Sequence[str], *,
               reward_fn: Callable | None = None, quality_fn: Callable | None = None, delta: float = 0.05) -> dict:
    """Table 1 columns for one model: reward, known quality, length, win rate against the baseline
    (ties 1/2, with an exact interval) and the length-controlled win rate."""
    from mfnb import stats

    outcomes = judge.compare(list(prompts), list(candidate), list(baseline))
    summary = stats.summarize(outcomes)
    lc = length_controlled_win_rate(outcomes, [len(r.split()) for r in candidate], [len(r.split()) for r in baseline])
    row = response_metrics(prompts, candidate, reward_fn=reward_fn, quality_fn=quality_fn)
    row.update(win_rate=summary.win_freq, wins=summary.wins, ties=summary.ties, losses=summary.losses,
               failed=summary.failed, lc_win_rate=lc["lc_win_rate"], length_coef=lc["length_coef"])
    if summary.n:
        row["exact_low"], row["exact_high"] = summary.interval(delta, "exact_ties")
    return row


def paper_table1() -> dict[str, dict]:
    """The paper's Table 1 by row name, as fractions (win rates in [0, 1]); "full data" is our 100%."""
    from mfnb import reference

    table = reference.load("expo_table1")
    out = {}
    for row in table.itertuples():
        name = row.model.replace("full data", "100% data")
        out[name] = {"paper_reward": row.reward, "paper_win_rate": row.win_rate_pct / 100,
                     "paper_lc_win_rate": row.lc_win_rate_pct / 100}
    return out


def less_data_table(judge, prompts: Sequence[str], baseline: Sequence[str], models: Mapping[str, Sequence[str]], *,
                    alphas: Mapping[str, float] | None = None, reward_fn: Callable | None = None,
                    quality_fn: Callable | None = None, delta: float = 0.05):
    """The paper's Table 1 for our models (name -> responses on ``prompts``), each row beside the paper's
    numbers for the same name where the paper has one (labelled ``paper_*``; NaN elsewhere)."""
    import pandas as pd

    paper = paper_table1()
    empty = {"paper_reward": math.nan, "paper_win_rate": math.nan, "paper_lc_win_rate": math.nan}
    rows = []
    for name, responses in tqdm(models.items(), desc="Table 1", leave=False):
        row = {"model": name, "alpha": (alphas or {}).get(name, math.nan)}
        row.update(report_row(judge, prompts, responses, baseline, reward_fn=reward_fn, quality_fn=quality_fn,
                              delta=delta))
        row.update(paper.get(name, empty))
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- figure


def plot_alpha_curves(sweeps, chosen: Mapping[str, float], oracle_best: Mapping[str, float] | None = None,
                      sft: Mapping[str, float] | None = None, title: str | None = None):
    """Figure 5 of the paper: reward vs alpha (left) and length vs alpha (right), one line per data
    fraction, the reward-chosen alpha as a dashed vertical line; plus the known quality vs alpha (middle)
    with the reward-chosen (dashed) and quality-best (dotted) alphas.  ``sweeps``: a frame with columns
    data, alpha, reward, quality, length_words; ``sft``: the SFT model's value per column (grey line).
    Symlog x axis: the paper's grids span 0.1 to 10."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = [("reward", "reward-model score"), ("quality", "known quality (oracle)"),
              ("length_words", "response length (words)")]
    panels = [p for p in panels if p[0] in sweeps]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    axes = np.atleast_1d(axes)
    labels = list(dict.fromkeys(sweeps["data"]))
    palette = dict(zip(labels, sns.color_palette("colorblind", n_colors=len(labels))))
    low, high = float(sweeps["alpha"].min()), float(sweeps["alpha"].max())
    for ax, (col, ylabel) in zip(axes, panels):
        for label in labels:
            sub = sweeps[sweeps["data"] == label].sort_values("alpha")
            ax.plot(sub["alpha"], sub[col], marker="o", ms=3, color=palette[label], label=label)
            if label in chosen:
                ax.axvline(chosen[label], color=palette[label], ls="--", lw=1)
            if col == "quality" and oracle_best and label in oracle_best:
                ax.axvline(oracle_best[label], color=palette[label], ls=":", lw=1.5)
        if sft and col in sft:
            ax.axhline(sft[col], color="grey", lw=1, label="SFT model")
        ax.set_xscale("symlog", linthresh=1.0)
        span = max(high - low, 1e-3)
        ax.set_xlim(low - 0.02 * min(span, 1.0), high * 1.15 if high > 0 else high + 0.1)  # alpha = 0 stays visible
        ticks = [t for t in (-1, 0, 0.3, 1, 3, 10, 30, 100, 300, 1000) if low <= t <= high]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("alpha (ExPO)")
        ax.set_ylabel(ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, title="DPO data", fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    if "quality" in sweeps and len(axes) > 1:
        axes[1].set_title("dashed: alpha chosen by reward; dotted: best by quality", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ computed verdicts


def _paper_table1() -> dict[str, dict[str, float]]:
    from mfnb import reference

    t1 = reference.load("expo_table1").set_index("model")
    return {model: row.to_dict() for model, row in t1.iterrows()}


def findings(optimal, table1, sweeps, probe, chosen: Mapping[str, float], fractions: Sequence[float],
             alphas: Sequence[float], dpo_lr: float, sft_metrics: Mapping[str, float],
             knows_quality: bool) -> list[str]:
    """Notebook 03's plain statements, computed from our tables, with the paper's numbers (from the
    reference tables) beside them: does the optimal alpha fall with data, does the reward model pick the
    right alpha, does ExPO help each DPO model, how do less-data models + ExPO compare with full-data DPO,
    where is the best model, what happens to length, and why the learning rate departs from the paper's."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    paper_alpha = paper_optimal_alpha()
    paper = _paper_table1()
    lines = []
    a_rm = optimal["alpha_by_reward"].tolist()
    falls = is_non_increasing(a_rm) and a_rm[0] > a_rm[-1]
    lines.append("- **Optimal alpha vs data size** (chosen by the reward model on the validation prompts): "
                 + ", ".join(f"{d}: {a:g}" for d, a in zip(optimal["data"], a_rm))
                 + f". It {'falls as the data grows (never rises)' if falls else 'does NOT fall monotonically as the data grows'}"
                 + f"; the paper's observation ({', '.join(f'{k}: {v:g}' for k, v in paper_alpha.items())} "
                 + f"in its Table 3) {'reproduces' if falls else 'does not reproduce'}.")
    edge = optimal[optimal["at_grid_edge"]]
    if len(edge):
        lines.append(f"  - At the edge of the grid for {', '.join(edge['data'])}: the best alpha may lie beyond "
                     f"{max(alphas):g}.")
    if knows_quality:
        same = int((optimal["alpha_by_reward"] == optimal["alpha_by_quality"]).sum())
        loss = (optimal["quality_at_best"] - optimal["quality_at_chosen"]).max()
        lines.append(f"- **Does the reward model pick the right alpha?** It picks the quality-best alpha for {same} of "
                     f"{len(optimal)} fractions; the most known quality its choice gives up is {loss:.3f} "
                     f"(validation). Alphas by known quality: "
                     + ", ".join(f"{d}: {a:g}" for d, a in zip(optimal["data"], optimal["alpha_by_quality"])) + ".")
    t = table1.set_index("model")
    gains = []
    for fraction in sorted(fractions):
        label = fraction_label(fraction)
        dpo, ex = t.loc[f"DPO({label} data)"], t.loc[f"DPO({label} data)+ExPO"]
        gains.append((label, ex["reward"] - dpo["reward"], ex["win_rate"] - dpo["win_rate"],
                      ex["lc_win_rate"] - dpo["lc_win_rate"], chosen[label]))
    lines.append("- **ExPO on each DPO model** (test prompts; change in reward / win rate / LC win rate): "
                 + "; ".join(f"{l} (alpha {a:g}): {r:+.2f} / {w * 100:+.1f} / {c * 100:+.1f} points"
                             for l, r, w, c, a in gains) + ".")
    helped = [g for g in gains if g[4] > 0]
    if helped:
        ok = all(g[1] > 0 and g[3] > 0 for g in helped)
        lines.append(f"  - Wherever the reward model chose alpha > 0, ExPO {'raised' if ok else 'did NOT always raise'} "
                     f"both the reward and the LC win rate on unseen test prompts "
                     f"({'reproduces' if ok else 'does not fully reproduce'} the paper's Table 1).")
    unhelped = [g[0] for g in gains if g[4] == 0]
    if unhelped:
        full, full_ex = paper["DPO(full data)"], paper["DPO(full data)+ExPO"]
        lines.append(f"  - For {', '.join(unhelped)} the reward model chose alpha = 0: extrapolating this DPO model does "
                     f"not help. The paper's full-data model still gained from ExPO "
                     f"({full_ex['reward'] - full['reward']:+.2f} reward, "
                     f"{full_ex['lc_win_rate_pct'] - full['lc_win_rate_pct']:+.1f} LC points at alpha "
                     f"{paper_alpha.get('100%', math.nan):g}); ours does **not** reproduce that: this DPO model is "
                     f"already at (or past) the best point along its own direction.")
    if "100%" in chosen:
        full = t.loc["DPO(100% data)"]
        for fraction in [f for f in sorted(fractions) if f < 1.0]:
            label = fraction_label(fraction)
            ex = t.loc[f"DPO({label} data)+ExPO"]
            verdict = "matches or beats" if ex["lc_win_rate"] >= full["lc_win_rate"] - 0.01 else "falls short of"
            lines.append(f"- DPO({label})+ExPO {verdict} full-data DPO: LC win rate {pct(ex['lc_win_rate'])} vs "
                         f"{pct(full['lc_win_rate'])}, reward {ex['reward']:.2f} vs {full['reward']:.2f}"
                         + (f", known quality {ex['quality']:.3f} vs {full['quality']:.3f}" if knows_quality else "")
                         + ".")
        less = [m for m in paper if m.endswith("+ExPO") and "full" not in m]
        lines.append("  - The paper: " + ", ".join(
            f"{m.removeprefix('DPO(').replace(' data)+ExPO', '')} + ExPO reaches {paper[m]['lc_win_rate_pct']:g}% LC"
            for m in less) + f" (full-data DPO {paper['DPO(full data)']['lc_win_rate_pct']:g}%).")
    best_data = optimal.loc[optimal["reward_at_chosen"].idxmax(), "data"]
    best_line = (f"- **Best model after ExPO** (validation): by reward, the {best_data} model ("
                 + ", ".join(f"{r.data}: {r.reward_at_chosen:.2f}" for r in optimal.itertuples()) + ")")
    if knows_quality:
        best_q = optimal.loc[optimal["quality_at_chosen"].idxmax(), "data"]
        best_line += (f"; by known quality, the {best_q} model ("
                      + ", ".join(f"{r.data}: {r.quality_at_chosen:.3f}" for r in optimal.itertuples()) + ")")
    medium = best_data not in (optimal["data"].iloc[0], optimal["data"].iloc[-1])
    lines.append(best_line + ". The paper's best is at 20% data, a medium size; ours "
                 + ("is also at a medium size." if medium else "is NOT at a medium size by reward (the values are close)."))
    shifts = {}
    for label, sw in sweeps.groupby("data", sort=False):
        sw = sw.sort_values("alpha")
        base_len = float(sw["length_words"].iloc[0])
        moved = sw[(sw["length_words"] - base_len).abs() > 0.25 * base_len]
        shifts[label] = float(moved["alpha"].iloc[0]) if len(moved) else float("inf")
    earlier = is_non_increasing(list(shifts.values()))
    change = (optimal["length_at_chosen"] - optimal["length_at_0"]).abs().max()
    lengths = ", ".join(f"{r.data}: {r.length_at_0:.2f} -> {r.length_at_chosen:.2f}" for r in optimal.itertuples())
    lines.append(f"- **Length** (words, validation, alpha 0 -> chosen alpha): {lengths}; no chosen alpha changes the "
                 f"mean length by more than {change:.2f} words. The smallest alpha at which the mean length moves by "
                 f"more than 25%: " + ", ".join(f"{k}: {v:g}" for k, v in shifts.items()) + ". "
                 + ("The more data, the earlier the length departs" if earlier else
                    "The length does NOT depart earlier with every increase in data")
                 + ", compare the paper's Figure 5 (right), where the 40% model grows much longer already at small "
                 "alpha. Here a large length change only comes past the optimum, as degeneration (repeated words, or "
                 "empty answers), not as a learned preference for length: our preference pairs carry no overall "
                 "length bias (chosen is longer for *repeat twice*, shorter for *pick*).")
    paper_lr = probe[probe["paper"]] if len(probe) else probe
    if len(paper_lr):
        r = paper_lr.iloc[0]
        used = probe[probe["used"]].iloc[0]
        lines.append(f"- **Learning rate**: with the paper's lr {r['lr']:g} the adapter barely moves (||delta theta|| = "
                     f"{r['delta_norm']:.2g} vs {used['delta_norm']:.2g} at lr {used['lr']:g}), and even alpha "
                     f"{r['alpha_by_reward']:g} leaves the reward at {r['reward_at_chosen']:.2f} (SFT: "
                     f"{sft_metrics['reward']:.2f}); hence our departure to lr {dpo_lr:g}.")
    if len(probe):
        col = "quality" if knows_quality else "reward"
        lines.append(f"  - {'Known quality' if knows_quality else 'Reward'} at alpha 0 -> at the reward-chosen alpha, "
                     "per learning rate (100% data): "
                     + "; ".join(f"lr {r.lr:g}: {getattr(r, col + '_at_alpha_min'):.3f} -> "
                                 f"{getattr(r, col + '_at_chosen'):.3f} (alpha {r.alpha_by_reward:g})"
                                 for r in probe.itertuples()) + ".")
    return lines
