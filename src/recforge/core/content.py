"""What a file holds, as a short hash: the key of caches and resumable work.

A file's name, size and modification time say nothing about its bytes: `cp -p`, `rsync -t` or
`touch -r` give a rewritten file the old ones, and work keyed by them (a resumed preparation, a
cached dataset) would mix the old file's results with the new file's rows. So the key is the
bytes: xxHash's XXH3-128 (a well-kept C library, ~25 GB/s here, so hashing is bound by reading
the file) over the whole file up to `WHOLE_FILE_LIMIT`. A larger file (a Criteo Terabyte day is
~46 GB) is keyed by its size and `SAMPLED_BLOCKS` blocks of `BLOCK_BYTES` spread evenly over it,
the first and the last included: a rewrite that changes none of those blocks and keeps the size
goes unseen, which the documentation states (docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import xxhash

WHOLE_FILE_LIMIT = 4 << 30  # a few seconds of reading on a local disk
SAMPLED_BLOCKS = 256
BLOCK_BYTES = 1 << 20
_READ_BYTES = 8 << 20


def content_hash(path: str | Path) -> str:
    """XXH3-128 of the file's bytes (sampled blocks and the size above WHOLE_FILE_LIMIT), as hex."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= WHOLE_FILE_LIMIT:
            while block := f.read(_READ_BYTES):
                digest.update(block)
        else:
            digest.update(size.to_bytes(8, "little"))
            last = size - BLOCK_BYTES
            for k in range(SAMPLED_BLOCKS):
                f.seek(last * k // (SAMPLED_BLOCKS - 1))
                digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()


def described(path: str | Path) -> list:
    """A file as a key part: its name (a reader may go by it: `.gz`) and the hash of its bytes;
    not its folder, so moving the inputs keeps their cache and their resumable work."""
    return [Path(path).name, content_hash(path)]
