"""Chained, collision-resistant block hashes for prefix caching.

hash(block i) = blake2b(hash(block i-1) || token ids of block i as int64 LE bytes), with the
root seeded by an optional per-deployment salt, so equal hashes mean equal whole prefixes,
and a tenant cannot probe for another deployment's cached prompts. Python's ``hash()`` is
never used: it is randomised per process and collides easily.
"""

from __future__ import annotations

import hashlib
import struct

BlockHash = bytes

_DIGEST_SIZE = 32


def root_hash(salt: str | None) -> BlockHash:
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"membound-kv")
    if salt:
        h.update(salt.encode("utf-8"))
    return h.digest()


def hash_block(parent: BlockHash, token_ids: list[int]) -> BlockHash:
    h = hashlib.blake2b(parent, digest_size=_DIGEST_SIZE)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


def extend_block_hashes(
    hashes: list[BlockHash], token_ids: list[int], block_size: int, root: BlockHash
) -> None:
    """Append the hashes of every newly full block of ``token_ids`` to ``hashes``."""
    num_full = len(token_ids) // block_size
    for i in range(len(hashes), num_full):
        parent = hashes[i - 1] if i else root
        hashes.append(hash_block(parent, token_ids[i * block_size : (i + 1) * block_size]))
