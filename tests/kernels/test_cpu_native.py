"""The native CPU kernels (kernels/csrc/cpu_kernels.cpp) against their torch references.

bf16 results must equal the references' exactly where the arithmetic is the same (RMSNorm,
SiLU-and-mul, rotary: the same roundings in the same places); attention accumulates in a
different order, so it is compared within a tolerance. float32 is checked too (the kernels
take it; CpuOps does not route it here)."""

from __future__ import annotations

import pytest
import torch

from membound.kernels import cpu_native
from membound.kernels.activation import silu_and_mul_ref
from membound.kernels.contract import CpuOps, TorchOps, select_kernel_ops
from membound.kernels.paged_attention import paged_decode_attention_ref
from membound.kernels.rms_norm import fused_add_rms_norm_ref, rms_norm_ref
from membound.kernels.rotary import rotate_ref

DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("hidden", [96, 40])  # bf16: the 16-lane row path, and the general one
def test_rms_norm(native, dtype: torch.dtype, rows: int, hidden: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, hidden, generator=g).to(dtype)
    r = torch.randn(rows, hidden, generator=g).to(dtype)
    w = torch.randn(hidden, generator=g).to(dtype)
    out, none = native.rms_norm(x, None, w, 1e-6)
    assert none is None
    ref = rms_norm_ref(x, w, 1e-6)
    out_r, res = native.rms_norm(x, r, w, 1e-6)
    ref_out, ref_res = fused_add_rms_norm_ref(x, r, w, 1e-6)
    if dtype == torch.bfloat16:
        assert torch.equal(res, ref_res)
        # one normalised value may land on the other side of a bf16 rounding boundary
        # (float32 sums in another order): at most one bf16 ulp, rarely
        for a, b in ((out, ref), (out_r, ref_out)):
            close = torch.isclose(a.float(), b.float(), rtol=2**-7, atol=0)
            assert close.all() and (a != b).float().mean() < 0.01
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_r, ref_out, rtol=1e-5, atol=1e-5)
        assert torch.equal(res, ref_res)
    assert torch.equal(r, r.clone())  # inputs untouched (the sum is a new tensor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (5, 3072), (2, 3, 40)])
def test_silu_and_mul(native, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).mul(4).to(dtype)
    out, ref = native.silu_and_mul(x), silu_and_mul_ref(x)
    if dtype == torch.bfloat16:
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 9])
@pytest.mark.parametrize("d", [64, 32, 80, 128])  # bf16: 16 lanes where d / 2 allows (not 80)
def test_rotary_in_place_on_strided_views(native, dtype: torch.dtype, tokens: int, d: int) -> None:
    g = torch.Generator().manual_seed(tokens + d)
    hq, hk = 6, 2
    qkv = torch.randn(tokens, (hq + 2 * hk) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(tokens, hq, d)  # strided views of one qkv row, as in the model
    k = qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    v_before = qkv[:, (hq + hk) * d :].clone()
    cos, sin = torch.rand(tokens, d // 2, generator=g), torch.rand(tokens, d // 2, generator=g)
    ref_q, ref_k = rotate_ref(q, cos, sin), rotate_ref(k, cos, sin)
    native.rotary_embedding(q, k, cos, sin)
    assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    assert torch.equal(qkv[:, (hq + hk) * d :], v_before)  # V untouched


def _paged_case(dtype: torch.dtype, lens: list[int], head_dim: int, block_size: int = 16,
                kvh: int = 2, heads: int = 6):  # fmt: skip
    g = torch.Generator().manual_seed(sum(lens) + head_dim)
    max_blocks = max(-(-n // block_size) for n in lens) + 1
    num_blocks = len(lens) * max_blocks + 3
    cache = torch.randn(2, num_blocks, block_size, kvh, head_dim, generator=g).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks]
    tables = tables.view(len(lens), max_blocks)
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(dtype)
    return q, cache, tables, torch.tensor(lens)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """The decode kernel's task split depends on threads per sequence: with 1 thread the 5
    sequences below go one task each (all KV heads), with 2 one task per (sequence, KV head)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("head_dim", [64, 40, 32, 96, 128, 288])
def test_decode_attention(native, threads, dtype: torch.dtype, window: int | None,
                          head_dim: int) -> None:  # fmt: skip
    """Head dims of each path of the bf16 scores: 64 and 128 unrolled, 32 and 96 in a run-time
    loop over 32-dim slices, 288 with more slices than the query holds in registers, 40 in
    float32."""
    lens = [1, 17, 33, 90, 0]  # a padding row (length 0) gives zeros
    q, cache, tables, seq_lens = _paged_case(dtype, lens, head_dim)
    scale = head_dim**-0.5
    ref = paged_decode_attention_ref(q, cache, tables, seq_lens, scale, window)
    for idx in (torch.int64, torch.int32):
        out = torch.full_like(q, float("nan"))
        native.decode_attention(q, cache, tables.to(idx).contiguous(), seq_lens.to(idx), scale,
                                window or 0, out)  # fmt: skip
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        assert torch.equal(out[4], torch.zeros_like(out[4]))


@pytest.mark.parametrize(("kvh", "heads", "head_dim"), [(1, 8, 64), (1, 14, 32), (2, 8, 128)])
def test_decode_attention_head_groups(native, threads, kvh: int, heads: int,
                                      head_dim: int) -> None:  # fmt: skip
    """Query heads per KV head at the edges of the V kernel's unrolled cases (8 of 64 dims and
    4 of 128, the largest unrolled; 14 of 32, the generic loop), odd lengths and a window."""
    lens = [1, 17, 33, 90, 0, 47]
    q, cache, tables, seq_lens = _paged_case(torch.bfloat16, lens, head_dim, 16, kvh, heads)
    for window in (None, 21):
        ref = paged_decode_attention_ref(q, cache, tables, seq_lens, head_dim**-0.5, window)
        out = torch.full_like(q, float("nan"))
        native.decode_attention(q, cache, tables, seq_lens, head_dim**-0.5, window or 0, out)
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
        assert torch.equal(out[4], torch.zeros_like(out[4]))


@pytest.mark.parametrize("block_size", [8, 32, 128])
def test_decode_attention_block_sizes(native, threads, block_size: int) -> None:
    """Blocks smaller than a matrix-unit tile of 16 keys (all vector code), two tiles per
    block, and blocks longer than a softmax chunk of keys; windows cut blocks mid-way."""
    lens = [3, 40, 129, 300, 64]
    q, cache, tables, seq_lens = _paged_case(torch.bfloat16, lens, 64, block_size)
    for window in (None, 50):
        ref = paged_decode_attention_ref(q, cache, tables, seq_lens, 0.125, window)
        out = torch.full_like(q, float("nan"))
        native.decode_attention(q, cache, tables, seq_lens, 0.125, window or 0, out)
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_decode_attention_refuses_bad_input(native) -> None:
    q, cache, tables, seq_lens = _paged_case(torch.float32, [5], 64)
    with pytest.raises(RuntimeError, match="int32 or both int64"):
        native.decode_attention(q, cache, tables.int(), seq_lens.long(), 0.1, 0,
                                torch.empty_like(q))  # fmt: skip
    with pytest.raises(RuntimeError, match="share a dtype"):
        native.decode_attention(q.bfloat16(), cache, tables, seq_lens, 0.1, 0,
                                torch.empty_like(q.bfloat16()))  # fmt: skip


def test_cpu_ops_route_bf16_to_native_and_float32_to_references(native) -> None:
    ops = CpuOps(native=native)
    x = torch.randn(3, 64)
    w = torch.randn(64)
    # float32: the reference exactly (token-identity with transformers rests on it)
    assert torch.equal(ops.rms_norm(x=x, weight=w, eps=1e-6), rms_norm_ref(x, w, 1e-6))
    xb, wb = x.bfloat16(), w.bfloat16()
    torch.testing.assert_close(ops.rms_norm(x=xb, weight=wb, eps=1e-6),
                               rms_norm_ref(xb, wb, 1e-6), rtol=2**-7, atol=0)  # fmt: skip
    q, cache, tables, seq_lens = _paged_case(torch.bfloat16, [9, 40], 64)
    out = ops.decode_attention(query=q, kv_cache=cache, block_tables=tables, seq_lens=seq_lens,
                               scale=0.125, sliding_window=None, num_splits=None, out=None,
                               plan=None, k_scale=1.0, v_scale=1.0)  # fmt: skip
    ref = paged_decode_attention_ref(q, cache, tables, seq_lens, 0.125)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_switch_off_gives_the_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_CPU_NATIVE", "0")
    ops = select_kernel_ops(torch.device("cpu"))
    assert isinstance(ops, CpuOps) and ops.native is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv(native, dtype: torch.dtype) -> None:
    from membound.kernels.kv_store import store_kv_ref

    g = torch.Generator().manual_seed(3)
    kvh, d, block = 2, 64, 16
    qkv = torch.randn(5, (4 + 2 * kvh) * d, generator=g).to(dtype)  # k/v: strided views
    k = qkv[:, 4 * d : (4 + kvh) * d].view(5, kvh, d)
    v = qkv[:, (4 + kvh) * d :].view(5, kvh, d)
    slots = torch.tensor([3, 40, -1, 17, 63])  # -1: a padding token, skipped
    cache = torch.randn(2, 4, block, kvh, d, generator=g).to(dtype)
    ref = cache.clone()
    store_kv_ref(k, v, ref, slots)
    native.store_kv(k, v, cache, slots)
    assert torch.equal(cache, ref)
    with pytest.raises(RuntimeError, match="past the cache"):
        native.store_kv(k, v, cache, torch.tensor([0, 1, 2, 3, 64]))
    assert torch.equal(cache, ref)  # nothing written


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_prefill_rows_split_over_threads(native, dtype: torch.dtype) -> None:
    # a prefill's 1,000 tokens (several of the threads' shares of 256), scattered over the
    # blocks in a random order with padding tokens among them
    from membound.kernels.kv_store import store_kv_ref

    g = torch.Generator().manual_seed(5)
    kvh, d, block, n = 3, 64, 16, 1000
    k = torch.randn(n, kvh, d, generator=g).to(dtype)
    v = torch.randn(n, kvh, d, generator=g).to(dtype)
    slots = torch.randperm(80 * block, generator=g)[:n]
    slots[::97] = -1
    cache = torch.zeros(2, 80, block, kvh, d, dtype=dtype)
    ref = cache.clone()
    store_kv_ref(k, v, ref, slots)
    native.store_kv(k, v, cache, slots)
    assert torch.equal(cache, ref)


def test_decode_plan_is_built_once_for_the_kernel_that_serves_the_step(native) -> None:
    from membound.kernels.cpu_attention import DecodePlan

    ops = CpuOps(native=native)
    q, cache, tables, seq_lens = _paged_case(torch.bfloat16, [9, 40], 64)
    plan = ops.plan_decode(block_tables=tables, seq_lens=seq_lens, block_size=16,
                           sliding_window=None, kv_cache=cache)  # fmt: skip
    assert isinstance(plan, cpu_native.NativeDecodePlan)
    assert plan.seq_lens.dtype == plan.block_tables.dtype and plan.block_tables.is_contiguous()
    kw = {"query": q, "kv_cache": cache, "block_tables": tables, "seq_lens": seq_lens,
          "scale": 0.125, "sliding_window": None, "num_splits": None, "out": None,
          "k_scale": 1.0, "v_scale": 1.0}  # fmt: skip
    torch.testing.assert_close(ops.decode_attention(plan=plan, **kw),
                               ops.decode_attention(plan=None, **kw))  # fmt: skip
    # a float32 cache keeps the torch path and its length buckets; a native plan handed to it
    # is ignored, not misread
    q32, c32 = q.float(), cache.float()
    plan32 = ops.plan_decode(block_tables=tables, seq_lens=seq_lens, block_size=16,
                             sliding_window=None, kv_cache=c32)  # fmt: skip
    assert isinstance(plan32, DecodePlan)
    ref = paged_decode_attention_ref(q32, c32, tables, seq_lens, 0.125)
    for p in (plan32, plan):
        out = ops.decode_attention(**{**kw, "query": q32, "kv_cache": c32, "plan": p})
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _prefill_case(q_lens: list[int], lens: list[int], heads: int, kv_heads: int, head_dim: int,
                  block_size: int = 16):  # fmt: skip
    g = torch.Generator().manual_seed(sum(lens) + head_dim)
    max_blocks = max(-(-n // block_size) for n in lens)
    num_blocks = len(lens) * max_blocks + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g).bfloat16()
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks]
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()])
    q = torch.randn(int(starts[-1]), heads, head_dim, generator=g).bfloat16()
    return q, cache, tables.view(len(lens), max_blocks), starts, torch.tensor(lens)


@pytest.mark.parametrize(
    ("q_lens", "lens", "heads", "kv_heads", "head_dim", "window"),
    [
        ([5], [5], 9, 3, 64, 0),  # one short prompt
        ([3, 100, 64, 0], [10, 230, 64, 7], 9, 3, 64, 0),  # chunks after cached context; a
        ([200], [500], 9, 3, 64, 37),  # sliding window       decode-only sequence (no rows)
        ([33, 7], [33, 300], 8, 8, 128, 0),  # MHA, two 64-wide head slices
        ([129], [129], 32, 4, 128, 0),  # TinyLlama's heads: 8 queries per KV head
    ],
)
def test_prefill_attention(native, q_lens, lens, heads, kv_heads, head_dim, window) -> None:
    """Against the float32 reference on the same bf16 inputs: within bf16 rounding (the
    kernel keeps float32 scores; P is rounded to bf16 for the second GEMM)."""
    from membound.kernels.prefill_attention import prefill_attention_ref

    if not native.prefill_supported(head_dim):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    q, cache, tables, starts, seq_lens = _prefill_case(q_lens, lens, heads, kv_heads, head_dim)
    scale = head_dim**-0.5
    ref = prefill_attention_ref(q.float(), cache.float(), tables, starts, seq_lens, scale,
                                window or None)  # fmt: skip
    out = torch.full_like(q, float("nan"))
    native.prefill_attention(q, cache, tables, starts, seq_lens, scale, window, out)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_prefill_attention_refuses_bad_input(native) -> None:
    q, cache, tables, starts, seq_lens = _prefill_case([8], [8], 9, 3, 64)
    out = torch.empty_like(q)
    with pytest.raises(RuntimeError, match="bfloat16"):
        native.prefill_attention(q.float(), cache, tables, starts, seq_lens, 0.1, 0, out)
    with pytest.raises(RuntimeError, match="disagree"):  # more keys than the table holds
        native.prefill_attention(q, cache, tables, starts, seq_lens + 64, 0.1, 0, out)
    with pytest.raises(RuntimeError, match="int64"):
        native.prefill_attention(q, cache, tables.int(), starts, seq_lens, 0.1, 0, out)
    assert not native.prefill_supported(40)  # head_dim must be a multiple of 64


def test_cpu_ops_route_bf16_prefill_to_native(native) -> None:
    """CpuOps sends bf16 prefill with a bf16 cache to the kernel (int32 tables converted) and
    float32 to the torch path; both agree with the reference."""
    from membound.kernels.prefill_attention import prefill_attention_ref

    q, cache, tables, starts, seq_lens = _prefill_case([3, 40], [20, 40], 9, 3, 64)
    ops = CpuOps(native=native)
    kw = {"block_tables": tables.int(), "query_start_loc": starts.int(), "seq_lens": seq_lens.int(),
          "scale": 0.125, "sliding_window": None, "max_query_len": 40, "out": None,
          "k_scale": 1.0, "v_scale": 1.0}  # fmt: skip
    ref = prefill_attention_ref(q.float(), cache.float(), tables, starts, seq_lens, 0.125)
    torch.testing.assert_close(ops.prefill_attention(query=q, kv_cache=cache, **kw).float(), ref,
                               rtol=2e-2, atol=2e-2)  # fmt: skip
    torch.testing.assert_close(ops.prefill_attention(query=q.float(), kv_cache=cache.float(), **kw),
                               ref, rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features", "bias"),
    [(1, 192, 64, False), (7, 100, 96, True), (600, 130, 32, False), (3, 64, 2, True),
     (5, 130, 32, True), (64, 576, 64, False)],
)
def test_linear_vnni(native, threads, rows, out_features, in_features, bias) -> None:
    """Against F.linear in float32 on the same bf16 inputs, within bf16 rounding of the
    output: column counts that are not a multiple of 64 (zero-padded block), more rows than
    one ukernel call takes (600 > 512), a bias, an odd number of blocks in one row tile
    (shared by the threads in 32-column halves). The packed weight unpacks to the original."""
    from membound.kernels.cpu_linear import pack_vnni, unpack_vnni

    if not native.linear_supported(in_features):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(out_features, in_features, generator=g).bfloat16()
    x = torch.randn(rows, in_features, generator=g).bfloat16()
    b = torch.randn(out_features, generator=g).bfloat16() if bias else None
    packed = pack_vnni(w)
    assert packed.shape == (-(-out_features // 64), in_features // 2, 64, 2)
    assert torch.equal(unpack_vnni(packed, out_features), w)
    ref = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    got = native.linear_vnni(x, packed, out_features, b)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    torch.testing.assert_close(got.float(), ref, rtol=2**-7, atol=2**-7 * ref.abs().max().item())


@pytest.mark.parametrize(("out_features", "in_features"), [(576, 576), (130, 64), (256, 96), (192, 48)])
def test_linear_vnni_decode_rows_equal_the_ukernels(native, threads, out_features, in_features) -> None:
    """Up to 64 rows (a decode step) run the direct matrix-unit kernel, more rows torch's GEMM
    ukernel: the same products in the same order, so each row of a 65-row product equals the
    same row computed in a batch of 1-64 (rows padded to whole tiles, an odd number of blocks
    shared in halves, a zero-padded last block, in_features not a multiple of 32: the
    ukernel), and likewise for the GEMM fused with SiLU-and-mul."""
    from membound.kernels.cpu_linear import pack_vnni

    if not native.linear_supported(in_features):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    g = torch.Generator().manual_seed(out_features)
    packed = pack_vnni(torch.randn(out_features, in_features, generator=g).bfloat16())
    x = torch.randn(65, in_features, generator=g).bfloat16()
    b = torch.randn(out_features, generator=g).bfloat16()
    full = native.linear_vnni(x, packed, out_features, b)
    for rows in (64, 33, 17, 16, 5, 1):
        assert torch.equal(native.linear_vnni(x[:rows].contiguous(), packed, out_features, b), full[:rows])
    if out_features % 128 == 0:
        fused = native.linear_vnni_silu(x, packed, out_features // 2, None)
        for rows in (64, 20, 1):
            got = native.linear_vnni_silu(x[:rows].contiguous(), packed, out_features // 2, None)
            assert torch.equal(got, fused[:rows])


def test_bf16_gemm_path_names_what_serves(native) -> None:
    """The native bf16 GEMMs and prefill attention serve where the start-up log's path is not
    "none": torch's ukernel with AMX, else membound's AVX512-BF16 kernel wherever the CPU
    has AVX512-BF16 (the module is built for this CPU with -march=native)."""
    from membound.kernels.cpu_features import detect_cpu_features

    path = native.bf16_gemm_path()
    assert path in cpu_native.GEMM_PATHS
    assert native.linear_supported(64) == native.prefill_supported(64) == (path != "none")
    flags = detect_cpu_features().flags
    if "avx512_bf16" in flags:
        assert path != "none"


def test_linear_vnni_refuses_bad_input(native) -> None:
    from membound.kernels.cpu_linear import pack_vnni

    if not native.linear_supported(64):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    packed = pack_vnni(torch.randn(100, 64).bfloat16())
    x = torch.randn(2, 64).bfloat16()
    with pytest.raises(RuntimeError, match="bfloat16"):
        native.linear_vnni(x.float(), packed, 100, None)
    with pytest.raises(RuntimeError, match="features"):
        native.linear_vnni(torch.randn(2, 32).bfloat16(), packed, 100, None)
    with pytest.raises(RuntimeError, match="out_features"):
        native.linear_vnni(x, packed, 200, None)
    with pytest.raises(RuntimeError, match="bias"):
        native.linear_vnni(x, packed, 100, torch.randn(99).bfloat16())
    with pytest.raises(ValueError, match="even number"):
        pack_vnni(torch.randn(8, 7).bfloat16())
    assert not native.linear_supported(7)


@pytest.mark.parametrize(("rows", "inter", "in_features", "bias"),
                         [(1, 64, 32, False), (9, 128, 96, True), (600, 192, 64, False)])
def test_linear_vnni_silu_equals_the_two_ops(native, rows, inter, in_features, bias) -> None:
    """The GEMM with SiLU-and-mul in its epilogue gives the unfused pair's bytes (linear_vnni,
    then silu_and_mul): one row, a bias, more rows than one ukernel call (600 > 512)."""
    from membound.kernels.cpu_linear import pack_vnni

    if not native.linear_silu_supported(in_features, inter):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    g = torch.Generator().manual_seed(rows)
    w = (torch.randn(2 * inter, in_features, generator=g) / in_features**0.5).bfloat16()
    x = torch.randn(rows, in_features, generator=g).bfloat16()
    b = torch.randn(2 * inter, generator=g).bfloat16() if bias else None
    packed = pack_vnni(w)
    got = native.linear_vnni_silu(x, packed, inter, b)
    assert got.shape == (rows, inter) and got.dtype == torch.bfloat16
    assert torch.equal(got, native.silu_and_mul(native.linear_vnni(x, packed, 2 * inter, b)))
    ref = silu_and_mul_ref(torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float()))
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


def test_linear_vnni_silu_refuses_bad_input(native) -> None:
    from membound.kernels.cpu_linear import pack_vnni

    if not native.linear_supported(64):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    x = torch.randn(2, 64).bfloat16()
    assert not native.linear_silu_supported(64, 96)  # not whole 64-column blocks
    with pytest.raises(RuntimeError, match="multiple of 64"):
        native.linear_vnni_silu(x, pack_vnni(torch.randn(192, 64).bfloat16()), 96, None)
    packed = pack_vnni(torch.randn(256, 64).bfloat16())
    with pytest.raises(RuntimeError, match="out_features"):
        native.linear_vnni_silu(x, packed, 64, None)  # a weight of 256 outputs, not 128
    with pytest.raises(RuntimeError, match="bias"):
        native.linear_vnni_silu(x, packed, 128, torch.randn(128).bfloat16())


@pytest.mark.parametrize("inter", [64, 40])
def test_gate_up_layer_fuses_silu_where_the_kernel_serves(native, inter) -> None:
    """A packed gate/up layer's ``forward_silu_and_mul`` equals SiLU-and-mul of its output on
    the CPU backend, fused (whole 64-column blocks) or not (40: the two ops)."""
    from membound.layers.linear import MergedLinear

    if not native.linear_supported(32):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    torch.manual_seed(inter)
    ops = CpuOps(native=native)
    layer = MergedLinear(32, [inter, inter], [0, 1], ops=ops).to(torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.2)
    layer.process_weights_after_loading()
    x = torch.randn(3, 5, 32).bfloat16()
    got = layer.forward_silu_and_mul(x)
    assert got.shape == (3, 5, inter)
    assert torch.equal(got, ops.silu_and_mul(x=layer(x)))
    assert torch.equal(got, TorchOps.packed_linear_silu_and_mul(
        ops, x=x, weight=layer.weight, bias=None, out_features=2 * inter))


def test_cpu_backend_packs_bf16_linears_and_heads_for_native(native) -> None:
    """With the native kernels, the CPU backend VNNI-packs bf16 linears and LM heads (a tied
    head as a second copy: lookups need the plain rows); outputs stay within bf16 rounding of
    the plain layers, and the packed weight dequantizes to the loaded one."""
    from membound.kernels.cpu_linear import is_vnni
    from membound.layers.linear import Linear
    from membound.layers.vocab_embedding import LMHead, VocabEmbedding

    if not native.linear_supported(16):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    torch.manual_seed(0)
    ops = CpuOps(native=native)
    lin = Linear(16, 48, bias=True, ops=ops).to(torch.bfloat16)
    table = VocabEmbedding(64, 16).to(torch.bfloat16)
    tied, untied = LMHead(64, 16, table, ops=ops), LMHead(64, 16, None, None, ops).to(torch.bfloat16)
    for p in (lin.weight, lin.bias, table.weight, untied.weight):
        torch.nn.init.normal_(p)
    plain = lin.weight.detach().clone()
    x = torch.randn(2, 3, 16).bfloat16()  # leading dims kept
    expected = lin(x), tied(x[0]), untied(x[0])
    for layer in (lin, tied, untied):
        layer.process_weights_after_loading()
    assert is_vnni(lin.weight) and is_vnni(untied.weight) and is_vnni(tied.packed_weight)
    assert tied.weight is table.weight and not is_vnni(table.weight)
    assert torch.equal(lin.quant_method.dequantize(lin), plain.float())
    for got, want in zip((lin(x), tied(x[0]), untied(x[0])), expected, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=2e-2)
    # the reference every backend's packed weight answers to
    torch.testing.assert_close(
        ops.packed_linear(x=x, weight=lin.weight, bias=lin.bias, out_features=48),
        TorchOps().packed_linear(x=x, weight=lin.weight, bias=lin.bias, out_features=48),
        rtol=1.6e-2, atol=2e-2,
    )


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path) -> None:
    """A build killed mid-way leaves torch's lock file behind; later starts would wait on it
    forever. One older than STALE_LOCK_S goes (logged); a younger one may be a live build."""
    import os

    stale = tmp_path / "py311_cpu" / cpu_native.EXTENSION_NAME / "lock"
    fresh = tmp_path / cpu_native.EXTENSION_NAME / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir(parents=True)
        lock.touch()
    now = stale.stat().st_mtime + cpu_native.STALE_LOCK_S + 1
    os.utime(fresh, (now - 5, now - 5))
    assert cpu_native.clear_stale_lock(tmp_path, now=now) == [stale]
    assert not stale.exists() and fresh.exists()
    assert cpu_native.clear_stale_lock(tmp_path / "empty", now=now) == []


def test_a_failed_build_names_the_missing_tool_or_the_rejected_source(monkeypatch) -> None:
    """The fix a failed build's message gives: the missing compiler ($CXX, else c++) and/or
    ninja by name, or, with both on the PATH, that the compiler rejected the source."""
    monkeypatch.setenv("CXX", "my-cxx")
    nothing = cpu_native.build_failure_fix(which=lambda name: None)
    assert "missing" in nothing and "my-cxx" in nothing and "ninja" in nothing
    no_ninja = cpu_native.build_failure_fix(
        which=lambda name: None if name == "ninja" else "/bin/x"
    )
    assert no_ninja == "missing ninja (pip install ninja)"
    both = cpu_native.build_failure_fix(which=lambda name: "/usr/bin/" + name)
    assert "missing" not in both and "rejected the source" in both


def test_a_source_the_compiler_rejects_raises_a_build_error_saying_so(
    tmp_path, monkeypatch
) -> None:
    """End to end through torch's builder: a source that does not compile raises
    NativeBuildError carrying the fix (here: the compiler rejected it, where a compiler and
    ninja are installed, as on every machine that runs the native kernels)."""
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(cpu_native, "SOURCE", broken)
    monkeypatch.setattr(cpu_native, "EXTENSION_NAME", "membound_broken_source_test")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with pytest.raises(cpu_native.NativeBuildError) as e:
        cpu_native.build_native_cpu_kernels()
    assert str(broken) in str(e.value) and cpu_native.build_failure_fix() in str(e.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "cols"), [(1, 5), (3, 16), (4, 17), (5, 100), (6, 1000)])
def test_argmax_rows_is_torchs_max_indices(native, threads, dtype, rows, cols) -> None:
    """Greedy sampling's argmax: the first of equal maxima, the first NaN where a row has
    one, an all -inf row, rows strided (a padded vocabulary's view); equal to torch's
    ``max(dim=-1).indices``. CpuOps sends bf16/float32 here and keeps torch's for fp16."""
    g = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(rows, cols + 3, generator=g).to(dtype)[:, :cols]
    x[0, cols // 2] = x[0, cols - 1] = x[0].max() + 1  # a tie: the first wins
    if rows > 2:
        x[1, cols - 1] = float("nan")
        x[1, min(1, cols - 1)] = float("nan")
        x[2] = float("-inf")
    if rows > 4:
        x[4, cols - 1] = float("nan")  # a NaN in the tail past the vectors
    got = native.argmax_rows(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, x.max(dim=-1).indices)
    ops = CpuOps(native=native)
    assert torch.equal(ops.argmax_rows(x=x), TorchOps().argmax_rows(x=x))
    half = x.half()
    assert torch.equal(ops.argmax_rows(x=half), half.max(dim=-1).indices)
    with pytest.raises(RuntimeError, match="rows"):
        native.argmax_rows(x.t())
