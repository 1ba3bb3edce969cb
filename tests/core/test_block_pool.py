from __future__ import annotations

import pytest

from membound.core.block_pool import BlockPool, OutOfBlocksError
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.request import Request
from membound.sampling_params import SamplingParams


def test_allocate_free_lru_order() -> None:
    pool = BlockPool(4)
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
