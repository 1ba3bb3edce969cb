"""The native decode stack (kernels/cpu_decode_stack.py) against the model's module path.

The stack runs the same kernels in the same order on the same tensors, so a decode step
through it must equal the module path bit for bit: hidden states and what it writes into
the KV cache. A step it does not take (prefill, float32, a model it was not built for) must
go through the modules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from membound.config import ModelConfig, QuantizationConfig
from membound.kernels.contract import CpuOps
from membound.kernels.kv_quant import FP8_KV_DTYPE, quantize_kv_ref
from membound.layers.attention.metadata import build_attention_metadata
from membound.worker.weight_loader import load_model
from tiny_models import make_checkpoint

BLOCK = 4


@pytest.fixture(scope="module")
def native(native):
    """The session's native kernels (conftest.py), where they multiply VNNI weights."""
    if not native.linear_supported(64):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16): no VNNI weights")
    return native


def _model(folder: Path, ops: CpuOps, dtype: torch.dtype = torch.bfloat16,
           quantization: str | None = None):  # fmt: skip
    config = ModelConfig.from_hf(folder)
    if quantization is not None:
        config = dataclasses.replace(
            config, quantization=QuantizationConfig.for_float_checkpoint(quantization)
        )
    return load_model(config, str(folder), dtype=dtype, device=torch.device("cpu"), ops=ops)


def _caches(model, num_blocks: int = 24, fp8: bool = False) -> list[torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(5)
    shape = (2, num_blocks, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    if fp8:
        return [quantize_kv_ref(torch.randn(shape, generator=g), 1.0, FP8_KV_DTYPE)
                for _ in range(cfg.num_hidden_layers)]  # fmt: skip
    return [torch.randn(shape, generator=g).to(model.model.embed_tokens.weight.dtype)
            for _ in range(cfg.num_hidden_layers)]  # fmt: skip


def _decode_step(model, ops: CpuOps, caches, seq_lens: list[int], planned: bool):
    """One decode step of len(seq_lens) sequences (block tables disjoint); ``planned``: with
    the backend's decode plan (what the runner builds, and what the stack needs)."""
    n = len(seq_lens)
    per_seq = 24 // n
    tables = [list(range(s * per_seq, (s + 1) * per_seq)) for s in range(n)]
    md = build_attention_metadata([1] * n, seq_lens, tables, BLOCK, torch.device("cpu"),
                                  model.config.sliding_window)  # fmt: skip
    if planned:
        md.backend_decode = ops.plan_decode(
            block_tables=md.decode.block_tables, seq_lens=md.decode.seq_lens, block_size=BLOCK,
            sliding_window=model.config.sliding_window, kv_cache=caches[0],
        )  # fmt: skip
    ids = torch.tensor([(7 * i + 3) % model.config.vocab_size for i in range(n)])
    positions = torch.tensor([length - 1 for length in seq_lens])
    return model(ids, positions, caches, md)


@pytest.mark.parametrize(
    ("family", "quantization"),
    [("mistral", None), ("qwen2_bias", None), ("llama3_tied", None), ("mistral_window", None),
     ("mistral", "int4"), ("qwen2_bias", "int8")],
)  # fmt: skip
@pytest.mark.parametrize("seq_lens", [[9], [3, 17, 1]])
def test_decode_stack_equals_module_path(native, tmp_path, family, quantization, seq_lens) -> None:
    """bf16 VNNI weights (with biases, tied head, sliding window), int4 weight-only and int8
    (the native W8A8 GEMM where the CPU has AVX512-VNNI, else weight-only)."""
    # int4's CPU kernel takes whole blocks of 64 outputs and groups dividing the inputs
    sizes = {"intermediate_size": 128} if quantization else {}
    folder = make_checkpoint(tmp_path / family, family, seed=3, **sizes)
    ops = CpuOps(native=native)
    model = _model(folder, ops, quantization=quantization)
    assert model.model.decode_stack is not None
    if quantization == "int8" and native.int8_linear_supported(64):  # the native W8A8 GEMM
        assert all(layer.mlp.down_proj.cpu_w8a8 for layer in model.model.layers)
    caches_a, caches_b = _caches(model), _caches(model)
    with torch.no_grad():
        via_stack = _decode_step(model, ops, caches_a, seq_lens, planned=True)
        via_modules = _decode_step(model, ops, caches_b, seq_lens, planned=False)
    assert torch.equal(via_stack, via_modules)
    for a, b in zip(caches_a, caches_b, strict=True):
        assert torch.equal(a, b)


def test_decode_stack_int8_checkpoint_equals_module_path(native, tmp_path) -> None:
    """A compressed-tensors W8A8 checkpoint: the stack multiplies with the per-token
    activation scales the checkpoint declares, as its modules do."""
    from quantization.quant_checkpoints import write_quantized

    if not native.int8_linear_supported(64):
        pytest.skip("no native int8 GEMM on this CPU (no AVX512-VNNI)")
    folder = make_checkpoint(tmp_path / "f", "qwen2_bias", seed=3, intermediate_size=128)
    write_quantized(folder, tmp_path / "q", "compressed-tensors-int8")
    ops = CpuOps(native=native)
    model = _model(tmp_path / "q", ops)
    assert model.model.decode_stack is not None
    down = model.model.layers[0].mlp.down_proj
    assert down.cpu_w8a8 and down.quant_method.stack_linear(down).group_size == down.input_size
    caches_a, caches_b = _caches(model), _caches(model)
    with torch.no_grad():
        via_stack = _decode_step(model, ops, caches_a, [3, 17, 1], planned=True)
        via_modules = _decode_step(model, ops, caches_b, [3, 17, 1], planned=False)
    assert torch.equal(via_stack, via_modules)


@pytest.mark.parametrize("seq_lens", [[9], [3, 17, 1]])
def test_decode_stack_fp8_cache_equals_module_path(native, tmp_path, seq_lens) -> None:
    """An FP8 cache with the checkpoint's per-layer K/V scales (different per layer): the
    stack quantizes and reads with each layer's scales, as the attention layers do."""
    folder = make_checkpoint(tmp_path / "m", "mistral", seed=3)
    weights = load_file(folder / "model.safetensors")
    layers = ModelConfig.from_hf(folder).num_hidden_layers
    for i in range(layers):
        weights[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor(0.25 * (i + 1))
        weights[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(0.5 / (i + 1))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    ops = CpuOps(native=native)
    model = _model(folder, ops)
    assert model.model.decode_stack is not None
    caches_a, caches_b = _caches(model, fp8=True), _caches(model, fp8=True)
    with torch.no_grad():
        via_stack = _decode_step(model, ops, caches_a, seq_lens, planned=True)
        via_modules = _decode_step(model, ops, caches_b, seq_lens, planned=False)
    assert torch.equal(via_stack, via_modules)
    for a, b in zip(caches_a, caches_b, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_decode_stack_is_not_built_where_it_does_not_serve(native, tmp_path) -> None:
    """float32 weights (not VNNI-packed), QK norm (Qwen3), and a backend without native
    kernels build no stack; those models run their modules."""
    mistral = make_checkpoint(tmp_path / "m", "mistral", seed=3)
    qwen3 = make_checkpoint(tmp_path / "q", "qwen3_qknorm", seed=3)
    assert _model(mistral, CpuOps(native=native), torch.float32).model.decode_stack is None
    assert _model(qwen3, CpuOps(native=native)).model.decode_stack is None
    assert _model(mistral, CpuOps(native=None)).model.decode_stack is None


def test_decode_stack_refuses_bad_input(native, tmp_path) -> None:
    folder = make_checkpoint(tmp_path / "m", "mistral", seed=3)
    model = _model(folder, CpuOps(native=native))
    stack = model.model.decode_stack
    caches = _caches(model)
    hidden = torch.randn(1, model.config.hidden_size).bfloat16()
    cos = sin = torch.zeros(1, model.config.head_dim // 2)
    slots, tables, lens = torch.tensor([5]), torch.zeros(1, 4, dtype=torch.long), torch.tensor([6])
    with pytest.raises(RuntimeError, match="a KV cache per layer"):
        stack.forward(hidden, cos, sin, caches[:1], slots, tables, lens, None)
    with pytest.raises(RuntimeError, match="past the cache"):
        stack.forward(hidden, cos, sin, caches, torch.tensor([10**6]), tables, lens, None)
    with pytest.raises(RuntimeError, match="hidden"):
        stack.forward(hidden.float(), cos, sin, caches, slots, tables, lens, None)
