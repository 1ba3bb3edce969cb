"""GGUF tensors held int8 per row: the quantized token embedding and the tied LM head share
one int8 table (lookup equals the dequantized reference, logits close to it, no second copy),
Q8_0 / Q5_x / Q6_K linears stay int8 through the int8 weight-only path, and bad input is
still refused by name."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_gguf import hf_weights, write_tiny_llama

from membound.gguf.names import gguf_tensor_name

gguf = pytest.importorskip("gguf")

from membound.config import ConfigError, ModelConfig, QuantizationConfig  # noqa: E402
from membound.distributed.context import ParallelContext  # noqa: E402
from membound.gguf.loader import load_gguf_model  # noqa: E402
from membound.gguf.reader import GGUFError  # noqa: E402
from membound.kernels.contract import CPU_OPS, KernelBackend, kernel_ops  # noqa: E402
from membound.kernels.cpu_quant_linear import has_cpu_quant_kernels  # noqa: E402
from membound.layers.quantization import get_linear_method  # noqa: E402
from membound.layers.vocab_embedding import (  # noqa: E402
    LMHead,
    VocabEmbedding,
    int8_logits_ref,
)

VOCAB, HID = 300, 64


def _table(int8: bool, dtype: torch.dtype = torch.float32, parallel=None) -> VocabEmbedding:  # type: ignore[no-untyped-def]
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return VocabEmbedding(VOCAB, HID, parallel, int8=int8)
    finally:
        torch.set_default_dtype(old)


def _float_rows(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(VOCAB, HID, generator=g) * 0.05
    w[7] = 0  # an all-zero row (scale 1, no division by zero)
    return w


def _row_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[rows, 1]: half an int8 step, plus the stored scale's rounding at the row's max
    (values past 127 steps are clamped)."""
    assert w.shape[0] == scale.shape[0]
    return (0.5 + 127 * 2**-8) * scale.float()[:, None] + 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_lookup_equals_dequantized_reference(dtype: torch.dtype) -> None:
    w = _float_rows()
    table = _table(True, dtype)
    table.load_checkpoint_tensor("weight", w, None, "model.embed_tokens.weight")
    assert table.weight.dtype == torch.int8 and table.weight_scale.dtype == dtype
    deq = table.dequantize()
    assert ((deq - w).abs() <= _row_bound(w, table.weight_scale)).all()
    assert torch.equal(deq[7], torch.zeros(HID))
    ids = torch.tensor([0, 5, 7, 299, 5, 123])
    got = table(ids)
    assert got.dtype == dtype
    assert torch.equal(got, torch.nn.functional.embedding(ids, deq).to(dtype))


@pytest.mark.parametrize("rows", [1, 3, 40])  # the CPU kernel, and its dequantize path
def test_tied_int8_head_matches_reference(rows: int) -> None:
    w = _float_rows(1)
    x = torch.randn(rows, HID)
    for dtype, backend in ((torch.float32, "torch"), (torch.float32, "cpu"), (torch.bfloat16, "cpu")):
        table = _table(True, dtype)
        table.load_checkpoint_tensor("weight", w, None, "model.embed_tokens.weight")
        head = LMHead(VOCAB, HID, table, ops=kernel_ops(KernelBackend(backend)))
        head.process_weights_after_loading()
        assert head.packed_weight is None and head.weight is table.weight
        assert head.weight_scale is table.weight_scale
        want = x @ table.dequantize().t()
        got = head(x.to(dtype))
        assert got.dtype == dtype and got.shape == (rows, VOCAB)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
        expect_kernel = dtype == torch.bfloat16 and has_cpu_quant_kernels()
        assert head.int8_cpu_kernel == expect_kernel
    torch.testing.assert_close(  # the chunked reference spans several chunks
        int8_logits_ref(x, table.weight.repeat(30, 1), table.weight_scale.repeat(30)).float(),
        x @ table.dequantize().repeat(30, 1).t(), rtol=3e-2, atol=3e-2,
    )


def test_untied_int8_head_loads_its_own_table() -> None:
    w = _float_rows(2)
    head = LMHead(VOCAB, HID, None, int8=True)
    assert head.checkpoint_specs()["weight"].shapes == ((VOCAB, HID),)
    head.load_checkpoint_tensor("weight", w, None, "lm_head.weight")
    x = torch.randn(2, HID)
    deq = head.weight.float() * head.weight_scale[:, None]
    torch.testing.assert_close(head(x), x @ deq.t(), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError):
        head.load_checkpoint_tensor("bias", w, None, "lm_head.bias")


def test_int8_table_shards_by_vocab_rows() -> None:
    """TP: each rank quantizes only its rows; per-row scales make the shards equal the whole
    table's rows (the last rank's padding rows are zero)."""
    w = _float_rows(3)
    whole = _table(True)
    whole.load_checkpoint_tensor("weight", w, None, "e")
    for rank in range(2):
        shard = _table(True, parallel=ParallelContext(rank, 2))
        shard.load_checkpoint_tensor("weight", w, None, "e")
        rows = slice(shard.vocab_start, shard.vocab_end)
        n = shard.vocab_end - shard.vocab_start
        assert torch.equal(shard.weight[:n], whole.weight[rows])
        assert torch.equal(shard.weight_scale[:n], whole.weight_scale[rows])


def test_bad_table_input_is_refused() -> None:
    table = _table(True)
    with pytest.raises(ValueError, match="shape .*expects"):
        table.load_checkpoint_tensor("weight", torch.zeros(VOCAB, HID + 1), None, "emb")
    with pytest.raises(KeyError):
        table.load_checkpoint_tensor("weight_scale", torch.zeros(VOCAB), None, "emb.scale")
    with pytest.raises(ConfigError, match="int8_modules is set by GGUF files only"):
        QuantizationConfig("int4", "float", 128, "none", int8_modules=("lm_head",))
    quant = QuantizationConfig("gguf", "gguf", 32, "none", int8_modules=("m.q_proj",))
    with pytest.raises(ConfigError, match="only some of them int8"):
        get_linear_method(quant, ["m.q_proj", "m.k_proj"])


# ---- whole files ---------------------------------------------------------------------------


def _load(path: Path, dtype: torch.dtype, **kw):  # type: ignore[no-untyped-def]
    config = ModelConfig.from_gguf(path, **kw)
    return load_gguf_model(config, str(path), dtype=dtype, device=torch.device("cpu"), ops=CPU_OPS)


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_q8_0_embedding_is_one_int8_table(tmp_path: Path) -> None:
    """The Q8_0 token embedding stays int8 and the tied head reads the same table: the model
    holds vocab x hidden bytes of it once (the dense bf16 load holds a float table and, on
    the CPU backend, a prepacked second copy)."""
    path = tmp_path / "m.gguf"
    w = write_tiny_llama(path, "Q4_0", embed_type="Q8_0")
    model = _load(path, torch.bfloat16)
    emb, head = model.model.embed_tokens, model.lm_head
    assert emb.weight.dtype == torch.int8 and head.weight is emb.weight
    assert head.packed_weight is None
    params = {id(p) for p in model.parameters()}
    assert id(emb.weight) in params and len(params) == len(list(model.parameters()))
    vocab, hidden = w["model.embed_tokens.weight"].shape
    table_bytes = vocab * hidden + vocab * 2  # int8 rows + bf16 scales
    table_params = [p for n, p in model.named_parameters() if "embed" in n or "lm_head" in n]
    assert sum(p.numel() * p.element_size() for p in table_params) == table_bytes
    dense = _load(path, torch.bfloat16, dequantize=True)
    dense_tables = [p for n, p in dense.named_parameters() if "embed" in n or "lm_head" in n]
    extra = 2 if dense.lm_head.packed_weight is not None else 1  # oneDNN's second copy
    assert sum(p.numel() * p.element_size() for p in dense_tables) == extra * vocab * hidden * 2
    assert _weight_bytes(model) < _weight_bytes(dense)
    ref = torch.from_numpy(gguf.quants.dequantize(
        gguf.quants.quantize(w["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0),
        gguf.GGMLQuantizationType.Q8_0))  # fmt: skip
    assert ((emb.dequantize() - ref).abs() <= _row_bound(ref, emb.weight_scale)).all()


@pytest.mark.parametrize("kind", ["Q8_0", "Q5_0", "Q5_1", "Q6_K"])
def test_block_linears_stay_int8(tmp_path: Path, kind: str, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{kind}.gguf"
    raw = None
    if kind == "Q6_K":  # no Python quantizer: random blocks with a small fp16 scale
        raw = {}
        for hf, value in hf_weights().items():
            if value.ndim == 2 and "embed" not in hf:
                rows, cols = value.shape
                data = np.random.default_rng(cols).integers(
                    0, 256, (rows, cols // 256 * 210), dtype=np.uint8
                )
                data[:, 208::210], data[:, 209::210] = 0, 0x1C  # d ~ 0.004
                raw[gguf_tensor_name(hf)] = (data, kind)
    write_tiny_llama(path, kind, raw_linear=raw)
    config = ModelConfig.from_gguf(path)
    assert config.quantization is not None and len(config.quantization.int8_modules) == 2 * 7
    with caplog.at_level(logging.INFO, logger="membound.gguf.loader"):
        model = _load(path, torch.float32)
    assert f"14 stay int8, requantized per row: {kind} x14 (blk.0.attn_q.weight" in caplog.text
    assert "compute through 8 linears: int8_weight_only_linear_ref" in caplog.text  # fp32
    reader = gguf.GGUFReader(str(path))
    for layer in model.model.layers:
        for lin in (layer.self_attn.qkv_proj, layer.mlp.down_proj):
            assert lin.quant_method.name == "gguf_int8" and lin.weight.dtype == torch.int8
    lin = model.model.layers[0].self_attn.qkv_proj
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    v = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(128, 256).copy())
    got = lin.quant_method.dequantize(lin)[256 + 128 :]  # rows of q, k, then v
    assert ((got - v).abs() <= _row_bound(v, lin.weight_scale[256 + 128 :])).all()
    x = torch.randn(3, 256)
    torch.testing.assert_close(lin(x), x @ lin.quant_method.dequantize(lin).t())


def test_mixed_int4_int8_group_goes_int8(tmp_path: Path) -> None:
    """Q4_K_M-style files mix types inside a fused layer (attn_v Q6_K beside Q4_K q/k): the
    whole fused layer goes int8; the others stay int4."""
    w = hf_weights()
    v = w["model.layers.0.self_attn.v_proj.weight"]
    raw = {"blk.0.attn_v.weight": (gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0),
                                   "Q8_0")}  # fmt: skip
    path = tmp_path / "mixed.gguf"
    write_tiny_llama(path, "Q4_1", raw_linear=raw)
    model = _load(path, torch.float32)
    layer0, layer1 = model.model.layers
    assert layer0.self_attn.qkv_proj.quant_method.name == "gguf_int8"
    assert layer0.mlp.gate_up_proj.quant_method.name == "gguf"
    assert layer1.self_attn.qkv_proj.quant_method.name == "gguf"


def test_wrong_int8_table_shape_refused_before_allocation(tmp_path: Path) -> None:
    w = hf_weights()
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"][:, :224]
    path = tmp_path / "bad.gguf"
    write_tiny_llama(path, "Q8_0", embed_type="Q8_0", weights=w)
    with pytest.raises(GGUFError, match=rf"{path} does not match.*embed_tokens"):
        _load(path, torch.float32)


def test_q8_0_linears_in_bf16_use_the_cpu_kernel(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "q8.gguf"
    w = write_tiny_llama(path, "Q8_0", embed_type="Q8_0")
    with caplog.at_level(logging.INFO, logger="membound.gguf.loader"):
        model = _load(path, torch.bfloat16)
    lin = model.model.layers[1].mlp.down_proj
    assert lin.weight.dtype == torch.int8 and lin.weight_scale.dtype == (
        torch.bfloat16 if lin.cpu_weight_only else torch.float32
    )
    if has_cpu_quant_kernels():
        assert lin.cpu_weight_only
        assert "lm_head: the packed CPU int8 kernel; 8 linears: the packed CPU int8" in caplog.text
    down = torch.from_numpy(w["model.layers.1.mlp.down_proj.weight"])
    deq = lin.quant_method.dequantize(lin)
    q8 = (down.abs().amax(-1, keepdim=True) / 127) / 2  # Q8_0's own error is below this
    assert ((deq - down).abs() <= _row_bound(down, lin.weight_scale) + q8).all()
    for rows in (1, 24):  # the kernel, and dequantize + bf16 GEMM
        x = torch.randn(rows, 512).bfloat16()
        want = x.float() @ deq.t()
        torch.testing.assert_close(lin(x).float(), want, rtol=3e-2, atol=3e-2)
