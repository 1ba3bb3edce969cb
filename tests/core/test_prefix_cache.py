"""Prefix caching in the control plane: exact block ids, hits, eviction order, salts."""

from __future__ import annotations

from membound.core.block_hash import hash_block, root_hash
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.request import Request
from membound.sampling_params import SamplingParams

BS = 4


def req(rid: str, tokens: list[int]) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4))


def admit(kv: KVCacheManager, r: Request) -> list[int]:
    """What the scheduler does for a new request: hit, then allocate the rest."""
    hits = kv.get_computed_blocks(r)
    assert kv.allocate_slots(r, r.num_tokens - len(hits) * BS, hits)
    r.num_computed_tokens = r.num_tokens
    kv.record_prefix_lookup(r.num_tokens, len(hits) * BS)
    return hits


def test_hashes_are_chained_and_salted() -> None:
    a = hash_block(root_hash(None), [1, 2, 3, 4])
    assert a == hash_block(root_hash(None), [1, 2, 3, 4]) and len(a) == 32
    assert hash_block(a, [5, 6, 7, 8]) != hash_block(root_hash(None), [5, 6, 7, 8])
    assert hash_block(root_hash("tenant-a"), [1, 2, 3, 4]) != a


def test_shared_prefix_reuses_exact_blocks() -> None:
    kv = KVCacheManager(10, BS, enable_prefix_caching=True)
    a = req("a", list(range(1, 11)))  # 10 tokens: blocks 0,1 full, block 2 partial
    assert admit(kv, a) == []
    assert kv.block_table("a") == [0, 1, 2]
    b = req("b", list(range(1, 9)) + [99, 98, 97])  # shares 8 tokens = 2 blocks
    assert admit(kv, b) == [0, 1]
    assert kv.block_table("b") == [0, 1, 3]
    assert kv.pool.ref_cnt[:4] == [2, 2, 1, 1]
    assert kv.prefix_hits == 8 and kv.prefix_queries == 21
    kv.check_integrity()


def test_full_hit_still_computes_last_token() -> None:
    kv = KVCacheManager(10, BS, enable_prefix_caching=True)
    admit(kv, req("a", list(range(1, 9))))  # exactly 2 full blocks
    b = req("b", list(range(1, 9)))
    assert kv.get_computed_blocks(b) == [0]  # at most num_tokens - 1 tokens are reused


def test_freed_blocks_stay_cached_and_evict_lru_deepest_first() -> None:
    kv = KVCacheManager(6, BS, enable_prefix_caching=True, recent_window=6)
    a = req("a", list(range(1, 13)))  # 3 full blocks: 0,1,2
    admit(kv, a)
    kv.free(a)
    b = req("b", list(range(100, 109)))  # unrelated: 3 blocks from the free queue head
    admit(kv, b)
    assert kv.block_table("b") == [3, 4, 5]  # never-used blocks go first
    kv.free(b)
    assert kv.pool.num_cached_blocks == 5  # a: 3 full blocks, b: 2 full + 1 partial
    c = req("c", list(range(200, 205)))  # needs 2 blocks: evicts a's deepest first
    admit(kv, c)
    assert kv.block_table("c") == [2, 1]
    d = req("d", list(range(1, 13)) + [7])  # a's prefix: block 0 survives, 1 and 2 evicted
    assert kv.get_computed_blocks(d) == [0]
    kv.check_integrity()


def test_eviction_spares_the_recent_window() -> None:
    # a 2-block window: the two most recently freed blocks keep their cached prefix while
    # older free blocks are taken, lowest id first
    kv = KVCacheManager(6, BS, enable_prefix_caching=True, recent_window=2)
    a = req("a", list(range(1, 13)))  # blocks 0, 1, 2
    admit(kv, a)
    kv.free(a)  # deepest first: 2 leaves the window as 0 comes in; 1, 0 recent
    b = req("b", list(range(100, 113)))  # 13 tokens, 4 blocks: the cold 2, 3, 4, 5
    admit(kv, b)
    assert kv.block_table("b") == [2, 3, 4, 5]
    kv.free(b)  # 5, 4, 3, 2: the window ends as b's first two blocks; 0, 1, 4, 5 cold
    c = req("c", list(range(200, 209)))  # 3 blocks: the cold tier's lowest ids
    admit(kv, c)
    assert kv.block_table("c") == [0, 1, 4]
    d = req("d", list(range(100, 113)))  # b's prefix: its first two blocks survived
    assert kv.get_computed_blocks(d) == [2, 3]
    kv.check_integrity()


def test_prefix_caching_off_never_hits() -> None:
    kv = KVCacheManager(10, BS, enable_prefix_caching=False)
    admit(kv, req("a", list(range(1, 11))))
    assert admit(kv, req("b", list(range(1, 11)))) == []
    assert kv.pool.num_cached_blocks == 0


def test_salt_separates_deployments() -> None:
    kv1 = KVCacheManager(10, BS, enable_prefix_caching=True, prefix_cache_salt="one")
    r = req("a", list(range(1, 11)))
    admit(kv1, r)
    other = KVCacheManager(10, BS, enable_prefix_caching=True, prefix_cache_salt="two")
    assert set(r.block_hashes).isdisjoint(other.block_hashes(req("x", list(range(1, 11)))))


def test_swap_out_and_in_round_trip() -> None:
    kv = KVCacheManager(4, BS, num_cpu_blocks=4)
    r = req("a", list(range(1, 10)))
    admit(kv, r)
    assert kv.block_table("a") == [0, 1, 2]
    assert kv.can_swap_out(r)
    out = kv.swap_out(r)
    assert out == [(0, 0), (1, 1), (2, 2)] and kv.pool.num_free_blocks == 4
    kv.check_integrity()
    assert kv.can_swap_in(r, 1)
    back = kv.swap_in(r)
    assert [c for c, _ in back] == [0, 1, 2] and kv.cpu_pool is not None
    assert kv.cpu_pool.num_free_blocks == 4
    kv.check_integrity()
