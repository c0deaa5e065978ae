"""Is this file a whole GGUF? Read its header and tensor table, no llama.cpp needed.

A truncated download or a file of random bytes used to pass ``validate`` (which looked at
the magic only) and fail at run time inside llama.cpp without naming the file. This reads
what llama.cpp's loader reads before any tensor data (magic, version, counts, every
key/value, every tensor's name, shape, type and offset) and checks that each tensor's bytes
lie inside the file. Cheap: the tensor data is never read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from harness.errors import QuantgateError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF value types: fixed sizes; 8 is a string, 9 an array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFError(QuantgateError):
    """A file given as a GGUF is not one llama.cpp can load; the message names the file."""


class _Bad(Exception):
    """Why the file is not a valid GGUF (without the path: ``check_gguf`` adds it)."""


class _Reader:
    """Sequential reads that know the file's size and say where a short read happened."""

    def __init__(self, f: BinaryIO, size: int, endian: str = "<"):
        self.f, self.size, self.pos, self.endian = f, size, 0, endian

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Bad(f"truncated: {what} at byte {self.pos} needs {n} bytes, file has {self.size}")

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:  # the file shrank while being read
            raise _Bad(f"truncated: {what} at byte {self.pos}, file has {self.pos + len(data)}")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, 1)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        return struct.unpack(self.endian + fmt, self.read(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        return self.read(n, what).decode("utf-8", errors="replace")


def _skip_value(r: _Reader, vtype: int, what: str, depth: int = 0) -> int | None:
    """Skip one value; returns it when it is an integer scalar (general.alignment)."""
    if vtype in _SCALAR:
        fmt = _SCALAR[vtype]
        v = r.unpack(fmt, what)
        return int(v) if fmt not in "f?d" else None
    if vtype == _STRING:
        r.skip(r.u64(f"{what} length"), what)
        return None
    if vtype == _ARRAY:
        if depth > 8:
            raise _Bad(f"{what}: arrays nested deeper than 8")
        etype = r.u32(f"{what} element type")
        count = r.u64(f"{what} element count")
        if etype in _SCALAR:
            r.skip(count * struct.calcsize(_SCALAR[etype]), f"{what} ({count} elements)")
        elif etype == _STRING:
            r.need(count * 8, f"{what} ({count} strings)")  # each string has at least its length
            for _ in range(count):
                r.skip(r.u64(f"{what} element length"), f"{what} element")
        elif etype == _ARRAY:
            r.need(count * 12, f"{what} ({count} arrays)")
            for _ in range(count):
                _skip_value(r, _ARRAY, what, depth + 1)
        else:
            raise _Bad(f"{what}: unknown array element type {etype} at byte {r.pos - 12}")
        return None
    raise _Bad(f"{what}: unknown value type {vtype} at byte {r.pos - 4}")


def _type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (block size in elements, bytes per block), from the gguf package."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (int(b), int(s)) for t, (b, s) in GGML_QUANT_SIZES.items()}


def _check(f: BinaryIO, size: int) -> None:
    if size == 0:
        raise _Bad("empty file")
    r = _Reader(f, size)
    magic = f.read(4)
    r.pos = len(magic)
    if magic != MAGIC:
        raise _Bad(f"magic {magic!r}, expected {MAGIC!r}")
    raw = r.read(4, "the version")
    version = struct.unpack("<I", raw)[0]
    if version not in SUPPORTED_VERSIONS and struct.unpack(">I", raw)[0] in SUPPORTED_VERSIONS:
        r.endian, version = ">", struct.unpack(">I", raw)[0]  # a big-endian GGUF
    if version not in SUPPORTED_VERSIONS:
        raise _Bad(f"version {version}, this reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}")
    n_tensors = r.u64("the tensor count")
    n_kv = r.u64("the key/value count")
    if n_kv > size or n_tensors > size:  # every entry takes bytes: such counts are noise, not a header
        raise _Bad(f"truncated or corrupt header: it declares {n_tensors} tensors and {n_kv} keys in a file of {size} bytes")
    alignment = DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = r.string(f"key {i}")
        vtype = r.u32(f"the type of key {key!r}")
        value = _skip_value(r, vtype, f"the value of {key!r}")
        if key == "general.alignment":
            if not value or value & (value - 1):
                raise _Bad(f"general.alignment is {value}, not a power of two")
            alignment = value
    sizes = _type_sizes()
    tensors = []
    for i in range(n_tensors):
        name = r.string(f"the name of tensor {i}")
        n_dims = r.u32(f"the dimension count of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Bad(f"tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = [r.u64(f"the shape of tensor {name}") for _ in range(n_dims)]
        ttype = r.u32(f"the type of tensor {name}")
        offset = r.u64(f"the offset of tensor {name}")
        if ttype not in sizes:
            raise _Bad(f"tensor {name}: unknown ggml type {ttype}")
        block, type_size = sizes[ttype]
        if dims[0] % block:
            raise _Bad(f"tensor {name}: first dimension {dims[0]} is not a multiple of its type's block size {block}")
        if offset % alignment:
            raise _Bad(f"tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")
        n = 1
        for d in dims:
            n *= d
        tensors.append((name, offset, n // block * type_size))
    data_start = -(-r.pos // alignment) * alignment
    past = [(name, data_start + off + nbytes) for name, off, nbytes in tensors if data_start + off + nbytes > size]
    if past:
        name, end = past[0]
        more = f" (and {len(past) - 1} more tensors past the end)" if len(past) > 1 else ""
        raise _Bad(f"truncated: tensor {name} ends at byte {end}, file has {size}{more}")


def check_gguf(path: str | Path) -> None:
    """Raise GGUFError ("<path>: not a valid GGUF: <why>") unless ``path`` is a GGUF file whose
    header parses and whose every tensor lies inside the file."""
    p = Path(path).expanduser()
    try:
        if not p.exists():
            raise GGUFError(f"{path}: GGUF file not found")
        if not p.is_file():
            raise GGUFError(f"{path}: not a valid GGUF: not a file")
        size = p.stat().st_size
        with open(p, "rb", buffering=1 << 20) as f:
            _check(f, size)
    except _Bad as why:
        raise GGUFError(f"{path}: not a valid GGUF: {why}") from None
    except OSError as exc:
        from harness.failures import os_error_cause

        raise GGUFError(f"{path}: cannot read the GGUF: {os_error_cause(exc)}") from None
