"""The math of each method, layer by layer: reference paths against independent emulations,
the fast paths (torch._scaled_mm, torch._int_mm) against the references, packing codecs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from quant_checkpoints import AWQ_ORDER, E2M1, pack_cols, pack_rows

from membound.config import QuantizationConfig
from membound.kernels.contract import TRITON_OPS
from membound.kernels.int4_gemm import pack_int4, unpack_int4
from membound.layers.linear import Linear, MergedLinear
from membound.layers.quantization import get_linear_method
from membound.layers.quantization.fp4 import encode_e2m1, pack_fp4, unpack_fp4
from membound.layers.quantization.fp8 import fp8_linear_ref, fp8_linear_scaled_mm
from membound.layers.quantization.int8 import int8_linear_int_mm, int8_linear_ref

HAS_CUDA = torch.cuda.is_available()
GEN = torch.Generator().manual_seed(0)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def test_unquantized_linear_is_f_linear() -> None:
    layer = MergedLinear(32, [16, 8], ["a", "b"], bias=True)
    layer.load_checkpoint_tensor("weight", randn(16, 32), "a", "a.weight")
    layer.load_checkpoint_tensor("weight", randn(8, 32), "b", "b.weight")
    layer.load_checkpoint_tensor("bias", randn(8), "b", "b.bias")
    layer.load_checkpoint_tensor("bias", randn(16), "a", "a.bias")
    x = randn(5, 32)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_fp8_reference_is_w8a8() -> None:
    x, w = randn(6, 64), randn(48, 64)
    ws = w.abs().amax(1) / 448
    wq = (w / ws[:, None]).to(torch.float8_e4m3fn)
    xs = x.abs().amax(1, keepdim=True) / 448
    xq = (x / xs).to(torch.float8_e4m3fn)
    expected = (xq.float() * xs) @ (wq.float() * ws[:, None]).t()
    torch.testing.assert_close(fp8_linear_ref(x, wq, ws, None), expected)
    static = torch.tensor([0.01])
    xq = (x / 0.01).clamp(-448, 448).to(torch.float8_e4m3fn)
    torch.testing.assert_close(fp8_linear_ref(x, wq, ws, static),
                               (xq.float() * 0.01) @ (wq.float() * ws[:, None]).t())


def test_fp8_scaled_mm_matches_reference() -> None:
    """torch._scaled_mm (the GPU path) where this torch runs it (CPU builds may)."""
    x, w = randn(7, 64), randn(32, 64)
    ws = w.abs().amax(1) / 448
    wq = (w / ws[:, None]).to(torch.float8_e4m3fn)
    try:
        got = fp8_linear_scaled_mm(x, wq, ws, None, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._scaled_mm not available on CPU here: {e}")
    torch.testing.assert_close(got, fp8_linear_ref(x, wq, ws, None), rtol=1e-4, atol=1e-4)


def test_int8_int_mm_matches_exact_reference() -> None:
    x, w = randn(5, 64), randn(24, 64)
    ws = w.abs().amax(1) / 127
    wq = torch.round(w / ws[:, None]).to(torch.int8)
    ref = int8_linear_ref(x, wq, ws, None)
    xs = x.abs().amax(1, keepdim=True) / 127
    xq = torch.round(x / xs).to(torch.int64)
    torch.testing.assert_close(ref, ((xq @ wq.to(torch.int64).t()).double() * xs * ws).float())
    try:
        got = int8_linear_int_mm(x, wq, ws, None)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"torch._int_mm not available on CPU here: {e}")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_int4_packing_matches_autoawq_and_autogptq_order() -> None:
    q = torch.randint(0, 16, (16, 24), generator=GEN)
    assert torch.equal(pack_int4(q, 1, tuple(AWQ_ORDER)), pack_cols(q, AWQ_ORDER))
    assert torch.equal(pack_int4(q, 0), pack_rows(q))
    assert torch.equal(unpack_int4(pack_cols(q, AWQ_ORDER), 1, tuple(AWQ_ORDER)), q.to(torch.uint8))


def test_e2m1_codec() -> None:
    codes = torch.arange(16, dtype=torch.uint8)
    values = unpack_fp4(pack_fp4(codes[None]))[0]
    assert values.tolist() == E2M1
    back = encode_e2m1(values)
    assert torch.equal(back[[i for i in range(16) if i != 8]], codes[[i for i in range(16) if i != 8]])
    assert encode_e2m1(torch.tensor([0.7, -2.6, 100.0, 0.2])).tolist() == [1, 13, 7, 0]


@pytest.mark.parametrize("method", ["fp8", "int8", "int4", "mxfp4", "nvfp4"])
def test_layer_round_trip_with_bias(method: str) -> None:
    """A quantized MergedLinear: shards quantized independently, float bias added after."""
    cfg = QuantizationConfig.for_float_checkpoint(method)
    layer = MergedLinear(128, [64, 32], [0, 1], bias=True,
                         quant_method=get_linear_method(cfg, ["a", "b"]))
    w0, w1, b = randn(64, 128) * 0.05, randn(32, 128) * 0.05, randn(96)
    layer.load_checkpoint_tensor("weight", w1, 1, "b.weight")
    layer.load_checkpoint_tensor("weight", w0, 0, "a.weight")
    layer.load_checkpoint_tensor("bias", b, None, "ab.bias")
    layer.process_weights_after_loading()
    w = torch.cat([w0, w1])
    wq = layer.quant_method.dequantize(layer)
    assert ((wq - w).norm() / w.norm()).item() < 0.15
    x = randn(4, 128)
    y = layer(x)
    assert y.shape == (4, 96)
    assert ((y - F.linear(x, w, b)).norm() / F.linear(x, w, b).norm()).item() < 0.15


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["fp8", "int8", "int4"])
def test_fast_paths_on_gpu(method: str) -> None:
    """On CUDA: _scaled_mm (cc >= 8.9), _int_mm and the Triton int4 kernel against the
    references, in bf16."""
    dev = torch.device("cuda")
    cfg = QuantizationConfig.for_float_checkpoint(method)
    with torch.device(dev):
        layer = Linear(256, 512, quant_method=get_linear_method(cfg, ["x"]), ops=TRITON_OPS)
    layer.load_checkpoint_tensor("weight", (randn(512, 256) * 0.05).to(dev), None, "x.weight")
    layer.process_weights_after_loading()
    for m in (1, 7, 64):
        x = randn(m, 256).to(dev, torch.bfloat16)
        ref = F.linear(x.float(), layer.quant_method.dequantize(layer))
        got = layer(x).float()
        assert ((got - ref).norm() / ref.norm()).item() < 0.05, (method, m)


@pytest.mark.parametrize("method", ["mxfp4", "nvfp4"])
def test_fp4_layers_keep_their_code_table_as_a_buffer(method: str) -> None:
    """No device tensor is built from a Python list per call (illegal in CUDA-graph capture):
    the E2M1 table is a non-persistent buffer, moved with the layer, and apply uses it."""
    qm = get_linear_method(QuantizationConfig.for_float_checkpoint(method), ["t"])
    layer = Linear(64, 8, quant_method=qm, prefix="t")
    assert "e2m1_table" in dict(layer.named_buffers())
    assert "e2m1_table" not in layer.state_dict()
    w = torch.randn(8, 64) * 0.02
    layer.quant_method.quantize_rows(layer, w, (0, 8))
    layer.process_weights_after_loading()
    x = torch.randn(3, 64)
    expected = x @ layer.quant_method.dequantize(layer).t()
    fp4 = "membound.layers.quantization.fp4"
    with pytest.MonkeyPatch.context() as mp:  # building the table again would now fail
        mp.setattr(f"{fp4}.e2m1_table", lambda *a: pytest.fail("table rebuilt per call"))
        torch.testing.assert_close(layer(x), expected)
