"""The on-disk teacher cache: one raw file of N x V x C logits, a meta.json beside it, checksums per chunk.

A cache directory holds

    logits.bin   row (image i, view v) = i * V + v, each row C values: float32, or bfloat16 stored as
                 its 16-bit pattern (numpy has no bfloat16; torch views the bits back)
    meta.json    {"format", "key", "shape": [N, V, C], "dtype", "chunk_images", "num_chunks",
                  "chunks": {chunk: sha256 of its bytes}, "complete", optional "teacher_test_acc"}

A chunk is `chunk_images` consecutive images with all their views. meta.json is replaced atomically
(tmp + os.replace) after each chunk is written, so it only ever lists chunks whose bytes are in the
file: a build killed at any point resumes from them. The file is read through np.memmap, so a
1.6 GB cache never has to fit in memory and a lookup reads only the rows it asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Optional

import numpy as np
import torch

from kdlab.errors import ConfigError

FORMAT_VERSION = 1
DATA_FILE, META_FILE = "logits.bin", "meta.json"
# storage dtype -> (numpy dtype of the stored bits, torch dtype they are viewed as)
DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (np.int16, torch.bfloat16)}
PRECISIONS = ("fp32", "bf16", "fp16")
REBUILD = "rerun tools/cache_teacher.py --cfg <the run's config> to rebuild it (finished chunks are kept)"
# Key fields in the order a mismatch is reported, with what a difference in each one means.
FIELDS = {
    "format": "cache format version differs",
    "dataset": "dataset differs",
    "teacher": "teacher model differs",
    "teacher_sha256": "teacher weights differ",
    "num_classes": "number of classes differs",
    "num_images": "number of training images differs",
    "images_sha256": "training images differ",
    "views": "augmentation differs",
    "num_views": "number of views differs",
    "dtype": "storage dtype differs",
    "precision": "compute precision differs",
}


class CacheMismatch(ConfigError):
    """A cache whose key differs from the run's: the message names the first differing field."""


class CacheCorrupt(ConfigError):
    """A truncated, incomplete or corrupted cache file: the message names the chunk and what to do."""


def _show(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return f"sha256 {value[:12]}..."
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def key_difference(cached: dict, expected: dict) -> Optional[str]:
    """The first field in which two keys differ, in words: "storage dtype differs (float32 in the cache, ...)"."""
    for field in [*FIELDS, *sorted(set(cached) | set(expected))]:
        old, new = cached.get(field), expected.get(field)
        if old == new:
            continue
        what = FIELDS.get(field, f"{field} differs")
        if isinstance(old, dict) and isinstance(new, dict):  # name the first differing parameter
            sub = next(k for k in [*new, *old] if old.get(k) != new.get(k))
            what, old, new = f"{what} in {sub}", old.get(sub), new.get(sub)
        return f"{what} ({_show(old)} in the cache, {_show(new)} for this run)"
    return None


def check_key(path: str, cached: dict, expected: dict) -> None:
    difference = key_difference(cached, expected)
    if difference:
        raise CacheMismatch(f"teacher cache {path} does not match this run: {difference}; "
                            f"build one for this run (tools/cache_teacher.py) or delete {path}")


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_dir_for(root: str, key: dict) -> str:
    """root/<dataset>_<teacher_name>_<12 hex of the key's digest>."""
    name = f"{key.get('dataset', 'data')}_{key.get('teacher', 'teacher')}_{key_digest(key)[:12]}"
    return os.path.join(root, re.sub(r"[^A-Za-z0-9._-]", "_", name))


# ---------------------------------------------------------------- meta.json and the layout
def read_meta(path: str) -> dict:
    """meta.json of the cache at path; FileNotFoundError if there is none, CacheCorrupt if unreadable."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no teacher cache at {path} ({META_FILE} is missing)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        _ = meta["key"], meta["shape"], meta["dtype"], meta["chunk_images"], meta["chunks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheCorrupt(f"teacher cache {path}: {META_FILE} is unreadable ({exc}); {REBUILD}, "
                           f"or delete {path}") from None
    return meta


def write_meta(path: str, meta: dict) -> None:
    """Replace meta.json atomically: a reader (or a killed build) sees the old file or the new one."""
    tmp = os.path.join(path, META_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(path, META_FILE))


def new_meta(key: dict, chunk_images: int) -> dict:
    n, v, c = key["num_images"], key["num_views"], key["num_classes"]
    return {"format": FORMAT_VERSION, "key": key, "shape": [n, v, c], "dtype": key["dtype"], "file": DATA_FILE,
            "chunk_images": chunk_images, "num_chunks": -(-n // chunk_images), "chunks": {}, "complete": False}


def row_bytes(meta: dict) -> int:
    return meta["shape"][2] * np.dtype(DTYPES[meta["dtype"]][0]).itemsize


def total_bytes(meta: dict) -> int:
    n, v, _ = meta["shape"]
    return n * v * row_bytes(meta)


def chunk_rows(meta: dict, chunk: int) -> tuple[int, int]:
    """The rows [start, stop) of a chunk: its images with all their views."""
    n, v, _ = meta["shape"]
    first = chunk * meta["chunk_images"]
    return first * v, min(first + meta["chunk_images"], n) * v


def describe_chunk(meta: dict, chunk: int) -> str:
    first = chunk * meta["chunk_images"]
    last = min(first + meta["chunk_images"], meta["shape"][0]) - 1
    return f"chunk {chunk} of {meta['num_chunks']} (images {first}-{last})"


def chunk_sha256(fd: int, meta: dict, chunk: int) -> str:
    """sha256 of the chunk's bytes as they are in the file (short if the file is truncated)."""
    start, stop = (r * row_bytes(meta) for r in chunk_rows(meta, chunk))
    h = hashlib.sha256()
    for offset in range(start, stop, 1 << 24):
        h.update(os.pread(fd, min(1 << 24, stop - offset), offset))
    return h.hexdigest()


def bad_chunks(path: str, meta: dict, first_only: bool = False) -> list[int]:
    """Recorded chunks whose bytes in the file no longer match their checksum."""
    bad = []
    fd = os.open(os.path.join(path, DATA_FILE), os.O_RDONLY)
    try:
        for chunk, digest in sorted(meta["chunks"].items(), key=lambda kv: int(kv[0])):
            if chunk_sha256(fd, meta, int(chunk)) != digest:
                bad.append(int(chunk))
                if first_only:
                    break
    finally:
        os.close(fd)
    return bad


def check_complete(path: str, meta: dict, verify: bool) -> None:
    """CacheCorrupt unless every chunk is recorded, the file has its size and (verify) every checksum holds."""
    data = os.path.join(path, DATA_FILE)
    if not os.path.isfile(data):
        raise CacheCorrupt(f"teacher cache {path}: {DATA_FILE} is missing; {REBUILD}, or delete {path}")
    size, want = os.path.getsize(data), total_bytes(meta)
    if size != want:
        chunk = min(size // max(1, row_bytes(meta) * meta["shape"][1] * meta["chunk_images"]), meta["num_chunks"] - 1)
        raise CacheCorrupt(f"teacher cache {path}: {DATA_FILE} is truncated or padded ({size} bytes, expected {want}: "
                           f"{describe_chunk(meta, chunk)} onward is damaged); {REBUILD}, or delete {path}")
    missing = [k for k in range(meta["num_chunks"]) if str(k) not in meta["chunks"]]
    if missing:
        raise CacheCorrupt(f"teacher cache {path} is incomplete ({meta['num_chunks'] - len(missing)} of "
                           f"{meta['num_chunks']} chunks written; first missing: {describe_chunk(meta, missing[0])}); "
                           f"rerun tools/cache_teacher.py --cfg <the run's config> to finish it, or delete {path}")
    bad = bad_chunks(path, meta, first_only=True) if verify else []
    if bad:
        raise CacheCorrupt(f"teacher cache {path}: {describe_chunk(meta, bad[0])} fails its sha256 checksum "
                           f"(the file was changed or damaged); {REBUILD}, or delete {path}")


class TeacherCache:
    """A finished cache, memory-mapped read-only: lookup(index, views) -> the teacher's logits."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.meta, self.key = path, meta, meta["key"]
        self.num_images, self.num_views, self.num_classes = meta["shape"]
        self.dtype = meta["dtype"]
        np_dtype, self._torch_dtype = DTYPES[self.dtype]
        self._rows = np.memmap(os.path.join(path, DATA_FILE), dtype=np_dtype, mode="r",
                               shape=(self.num_images * self.num_views, self.num_classes))

    @classmethod
    def open(cls, path: str, expected_key: Optional[dict] = None, verify: bool = True) -> TeacherCache:
        """Open a finished cache. Missing: FileNotFoundError; key differs: CacheMismatch;
        incomplete, truncated or (verify) failing a checksum: CacheCorrupt."""
        meta = read_meta(path)
        if expected_key is not None:
            check_key(path, meta["key"], expected_key)
        check_complete(path, meta, verify)
        return cls(path, meta)

    def lookup(self, index: torch.Tensor, views: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """float32 (B, num_classes) logits on device for training indices (B,) and view ids (B,); reads those rows."""
        index, views = index.long().cpu(), views.long().cpu()
        if index.numel() and not (0 <= int(index.min()) and int(index.max()) < self.num_images
                                  and 0 <= int(views.min()) and int(views.max()) < self.num_views):
            raise IndexError(f"teacher cache {self.path}: index in [0, {self.num_images}) and view in "
                             f"[0, {self.num_views}) expected, got index {index.min()}..{index.max()}, "
                             f"view {views.min()}..{views.max()}")
        rows = torch.from_numpy(self._rows[(index * self.num_views + views).numpy()])
        return rows.view(self._torch_dtype).to(device, non_blocking=True).float()

    def update_meta(self, **fields: Any) -> None:
        """Store extra facts (e.g. teacher_test_acc) in meta.json, atomically."""
        self.meta = {**read_meta(self.path), **fields}
        write_meta(self.path, self.meta)

    def __getstate__(self) -> dict:  # no memory map in pickles: reopened on load
        return {"path": self.path, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["meta"])

    def __repr__(self) -> str:
        return (f"TeacherCache({self.path!r}, {self.num_images} images x {self.num_views} views x "
                f"{self.num_classes} classes, {self.dtype})")
