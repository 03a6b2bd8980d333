"""Safetensors files read header-first: validation, shard sets and lazy tensor access.

Nothing here allocates tensor memory until `TensorReader.read` is called, so every
check (corrupt header, truncated data, missing shard, pickle file) runs before any
large allocation.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import CheckpointError

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})

# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

# Dtypes a floating-point weight may be stored in; anything else is a quantised format.
FLOAT_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64"})

# A real header is a few hundred KB even for 6B models; more than this means garbage.
MAX_HEADER_BYTES = 100 * 1024 * 1024

SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; `start`/`end` are byte offsets into the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def reject_pickle_suffix(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"'{path}' is a pickle checkpoint ('{path.suffix}'). Pickle files can run arbitrary "
            "code when opened, so they are never unpickled here. Use the .safetensors release of "
            "the model, or convert the file to safetensors in a trusted environment first."
        )


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate the header of one safetensors file without reading tensor data.

    The checks are the format's own: a JSON object without duplicate keys, entries with a
    known dtype, non-negative integer shapes, and offsets that tile the data section
    exactly, in order and with nothing left over. Raises CheckpointError for a pickle file
    in disguise, a corrupt header, or a file shorter than its header says (an interrupted
    download).
    """
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
        header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
        plausible = len(head) == 9 and head[8:9] == b"{" and 8 + header_len <= file_size
        # A header length whose low byte is 0x80 is valid, so the pickle magic is only a
        # diagnosis for files that are not safetensors.
        if not plausible and head.startswith(_PICKLE_MAGIC):
            raise CheckpointError(
                f"'{path}' is a PyTorch pickle file although its name ends in "
                f"'{path.suffix}'. Pickle files are never unpickled here; use the .safetensors "
                "release of the model."
            )
        if not plausible and head.startswith(b"version "):
            raise CheckpointError(
                f"'{path}' is a Git LFS pointer ({file_size} bytes), not the model: the download "
                "fetched the pointer only. Download the file itself (`git lfs pull`, or the "
                "download button on the model page)."
            )
        if len(head) < 8:
            raise CheckpointError(
                f"'{path}' is {file_size} bytes long, too short to be a safetensors file. "
                "The download or copy is incomplete: download the file again."
            )
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise CheckpointError(
                f"'{path}' has a corrupt or truncated safetensors header: it declares "
                f"{header_len} header bytes but the file is {file_size} bytes long. "
                "Download the file again; if it was never a safetensors file, use the "
                "model's .safetensors release."
            )
        handle.seek(8)
        raw = handle.read(header_len)

    header = _parse_json(path, raw)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise CheckpointError(f"'{path}' has a corrupt safetensors header ('__metadata__' is not a map of strings).")

    entries = {name: _parse_entry(path, name, info) for name, info in header.items()}
    _check_offsets(path, entries, data_size=file_size - 8 - header_len, file_size=file_size)
    return entries


def _parse_json(path: Path, raw: bytes) -> dict:
    def reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise CheckpointError(f"'{path}' has a corrupt safetensors header: key '{duplicates[0]}' appears twice.")
        return dict(pairs)

    try:
        header = json.loads(raw, object_pairs_hook=reject_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"'{path}' has a corrupt safetensors header (invalid JSON: {error}). Download the file again."
        ) from error
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' has a corrupt safetensors header (not a JSON object).")
    return header


def _check_offsets(path: Path, entries: dict[str, TensorEntry], data_size: int, file_size: int) -> None:
    """Require the tensors to tile [0, data_size) in offset order, as the format does."""
    position = 0
    for entry in sorted(entries.values(), key=lambda entry: (entry.start, entry.end)):
        if entry.start != position:
            problem = "overlaps the tensor before it" if entry.start < position else "leaves a gap before it"
            raise CheckpointError(
                f"'{path}' has a corrupt safetensors header: tensor '{entry.name}' at bytes "
                f"[{entry.start}, {entry.end}] {problem}. Download the file again."
            )
        position = entry.end

    if position > data_size:
        raise CheckpointError(
            f"'{path}' is truncated: its header describes {position:,} bytes of tensor data but "
            f"only {data_size:,} are present ({file_size:,} bytes in the file). The download or "
            "copy was interrupted: download the file again."
        )
    if position < data_size:
        raise CheckpointError(
            f"'{path}' has {data_size - position:,} bytes after its last tensor, which a safetensors "
            "file never has. The file is damaged or was appended to: download it again."
        )


def _parse_entry(path: Path, name: str, info: object) -> TensorEntry:
    try:
        dtype = info["dtype"]
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]
    except (TypeError, KeyError, ValueError) as error:
        raise CheckpointError(
            f"'{path}' has a corrupt safetensors header: the entry for '{name}' is malformed "
            f"({error!r}). Download the file again."
        ) from error

    integers = (*shape, start, end)
    if not all(type(value) is int and value >= 0 for value in integers):
        raise CheckpointError(
            f"'{path}' has a corrupt safetensors header: tensor '{name}' has shape {list(shape)} and "
            f"offsets [{start}, {end}], which must be non-negative integers. Download the file again."
        )
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(
            f"'{path}': tensor '{name}' has unknown dtype '{dtype}'. The file is corrupt or "
            "written by an incompatible tool."
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise CheckpointError(
            f"'{path}' has a corrupt safetensors header: tensor '{name}' of shape {list(shape)} "
            f"and dtype {dtype} needs {expected} bytes but its offsets [{start}, {end}] give "
            f"{end - start}. Download the file again."
        )
    return TensorEntry(name, dtype, shape, path, start, end)


def find_shard_files(path: Path) -> list[Path]:
    """Return every file of the checkpoint that `path` belongs to.

    `path` may be a single file, any shard of a `name-0000N-of-0000M.safetensors` set, or
    the set's `*.safetensors.index.json`. An index, when present, names the shards;
    otherwise the shard count in the file name does. A missing shard is an error.
    """
    if path.name.endswith(".index.json"):
        return _shards_from_index(path)

    match = SHARD_NAME.match(path.name)
    if match is None or not 1 <= int(match["index"]) <= int(match["count"]):
        return [path]

    index = path.with_name(f"{match['stem']}.safetensors.index.json")
    if index.is_file():
        return _shards_from_index(index)

    count = int(match["count"])
    width = len(match["index"])
    shards = [
        path.with_name(f"{match['stem']}-{i:0{width}d}-of-{match['count']}.safetensors") for i in range(1, count + 1)
    ]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise CheckpointError(
            f"'{path}' is shard {int(match['index'])} of a {count}-file set, but "
            f"{len(missing)} shard(s) are missing from '{path.parent}': {', '.join(missing)}. "
            "Put every shard of the set in the same folder."
        )
    return shards


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted({str(name) for name in weight_map.values()})
        typed = all(isinstance(name, str) for name in weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"'{index}' is not a valid safetensors index (expected a JSON object with a 'weight_map'): {error!r}."
        ) from error

    # Shards live beside the index; a path elsewhere is never followed.
    invalid = [name for name in names if Path(name).name != name or name in ("", ".", "..")]
    if invalid or not typed:
        shown = invalid[0] if invalid else "a non-string value"
        raise CheckpointError(
            f"'{index}' names shard {shown!r}, which is not a file name in the index's folder. "
            "The index is damaged: download it again."
        )

    shards = [index.with_name(name) for name in names]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise CheckpointError(
            f"The index '{index}' lists {len(shards)} shard(s), but {len(missing)} are missing "
            f"from '{index.parent}': {', '.join(missing)}. Put every shard in that folder."
        )
    return shards


def read_tensor_entries(path: Path) -> dict[str, TensorEntry]:
    """Return the validated header entries of a checkpoint, merged over all its shards."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint '{path}' does not exist. Check the path.")
    if path.is_dir():
        raise CheckpointError(f"'{path}' is a folder. Pass a .safetensors file (for a sharded set, any of its shards).")
    reject_pickle_suffix(path)

    entries: dict[str, TensorEntry] = {}
    for shard in find_shard_files(path):
        reject_pickle_suffix(shard)
        for name, entry in read_header(shard).items():
            if name in entries:
                raise CheckpointError(
                    f"Tensor '{name}' appears in both '{entries[name].file.name}' and "
                    f"'{shard.name}'. The shard set is inconsistent: download it again."
                )
            entries[name] = entry
    return entries


class TensorReader:
    """Memory-mapped access to the tensors of one or more safetensors files.

    Use as a context manager. `read` returns a tensor backed by the file mapping, so
    copying it to the target dtype is the only anonymous allocation.
    """

    def __init__(self) -> None:
        self._handles: dict[Path, object] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handles.clear()

    def read(self, entry: TensorEntry) -> torch.Tensor:
        handle = self._handles.get(entry.file)
        if handle is None:
            handle = safe_open(str(entry.file), framework="pt", device="cpu")
            self._handles[entry.file] = handle
        return handle.get_tensor(entry.name)
