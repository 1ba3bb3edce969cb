from __future__ import annotations

import pytest

from membound.core.block_pool import BlockPool, OutOfBlocksError
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.request import Request
from membound.sampling_params import SamplingParams


def test_allocate_free_lru_order() -> None:
    pool = BlockPool(4, recent_window=4)  # every freed block stays in the LRU tier
    a = pool.allocate(2)
    b = pool.allocate(2)
    assert a == [0, 1] and b == [2, 3] and pool.num_free_blocks == 0
    with pytest.raises(OutOfBlocksError):
        pool.allocate(1)
    pool.free(list(reversed(a)))
    pool.check_integrity()
    assert pool.allocate(1) == [1]  # reused in the order freed
    pool.free([1])
    pool.free(b)
    pool.check_integrity({})
    assert pool.num_free_blocks == 4


def test_cold_blocks_go_lowest_id_first() -> None:
    pool = BlockPool(8, recent_window=2)
    assert pool.allocate(6) == [0, 1, 2, 3, 4, 5]  # never used: lowest ids first
    pool.free([5, 4, 3, 2, 1, 0])  # 5..2 leave the window as 1 and 0 come in
    pool.check_integrity()
    assert pool.num_free_blocks == 8
    # the cold tier (2, 3, 4, 5 and the never-used 6, 7) goes before the two most recently
    # freed blocks, lowest id first: the blocks in use stay packed at the low end
    assert pool.allocate(6) == [2, 3, 4, 5, 6, 7]
    assert pool.allocate(2) == [1, 0]  # then the recent tier, least recently freed first
    with pytest.raises(OutOfBlocksError):
        pool.allocate(1)
    pool.check_integrity({b: 1 for b in range(8)})


def test_touch_takes_a_block_from_either_tier() -> None:
    pool = BlockPool(6, recent_window=1)
    blocks = pool.allocate(3)
    pool.free(blocks)  # 0, 1 cold; 2 recent
    pool.touch([0, 2])  # a prefix hit on a cold and a recent block
    pool.check_integrity({0: 1, 2: 1})
    assert pool.num_free_blocks == 4 and pool.num_touch_from_free([0, 1, 2]) == 1
    assert pool.allocate(4) == [1, 3, 4, 5]  # the stale heap entry of 0 is skipped
    pool.free([0, 2])
    pool.check_integrity({1: 1, 3: 1, 4: 1, 5: 1})
    assert pool.allocate(2) == [0, 2]
    # many touches and frees leave stale heap entries; the heap is rebuilt, not grown
    pool.free([0, 1, 2, 3, 4, 5])
    for _ in range(200):
        pool.touch([0])
        pool.free([0])
    assert len(pool._cold_heap) <= 2 * pool.num_free_blocks + 64
    pool.check_integrity({})


def test_recent_window_must_hold_a_block() -> None:
    with pytest.raises(ValueError, match="recent_window"):
        BlockPool(4, recent_window=0)


def test_double_free_is_caught() -> None:
    pool = BlockPool(2)
    (blk,) = pool.allocate(1)
    pool.free([blk])
    with pytest.raises(RuntimeError, match="double free"):
        pool.free([blk])


def test_integrity_detects_mismatch() -> None:
    pool = BlockPool(3)
    pool.allocate(1)
    with pytest.raises(AssertionError):
        pool.check_integrity({})  # block 0 is held but nobody claims it


def test_kv_manager_allocates_by_block() -> None:
    kv = KVCacheManager(num_blocks=5, block_size=4)
    req = Request("r", list(range(6)), SamplingParams())
    assert kv.allocate_slots(req, 6)
    assert len(kv.block_table("r")) == 2
    req.num_computed_tokens = 6
    assert kv.allocate_slots(req, 2)  # 8 tokens still fit in 2 blocks
    assert len(kv.block_table("r")) == 2
    req.num_computed_tokens = 8
    assert kv.allocate_slots(req, 1)
    assert len(kv.block_table("r")) == 3
    assert not kv.allocate_slots(req, 100)  # nothing changes on failure
    assert len(kv.block_table("r")) == 3
    kv.check_integrity()
    kv.free(req)
    kv.check_integrity()
    assert kv.pool.num_free_blocks == 5
