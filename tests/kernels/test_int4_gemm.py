"""int4_gemm (Triton, dequantize inside the GEMM) against int4_gemm_ref: decode and small
batches, group sizes, act-order permutations, split-K, strided inputs, argument checks."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported (tests/kernels/conftest.py too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from kernel_testing import (  # noqa: E402
    device_for,
    dtype_params,
    generator,
    gpu,
    needs_cuda,
    poisoned,
    randn,
)

from membound.kernels.int4_gemm import (  # noqa: E402
    dequantize_int4_ref,
    int4_dequantize,
    int4_gemm,
    int4_gemm_ref,
    pack_int4,
    unpack_int4,
)

# (M, K, N, group_size, act-order)
CASES = [
    (1, 128, 64, 32, False),
    (1, 256, 96, 128, True),
    (3, 64, 40, 16, False),
    (16, 128, 72, 64, True),
    (17, 192, 64, 64, False),
    (5, 128, 48, 128, False),  # one group: per-channel scales
]
_TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


def make(case: tuple, dtype: torch.dtype, seed: int) -> dict:
    m, k, n, g, act = case
    dev = device_for(dtype)
    gen = generator(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    return {
        "x": randn((m, k), dtype, dev, gen),
        "qweight": pack_int4(q, 0).to(dev),
        "scales": (torch.rand((k // g, n), generator=gen) * 0.05 + 0.01).to(dev, dtype),
        "zeros": torch.randint(0, 17, (k // g, n), generator=gen, dtype=torch.uint8).to(dev),
        "group_size": g,
        "perm": torch.randperm(k, generator=gen).to(dev, torch.int32) if act else None,
    }


def check(got: torch.Tensor, args: dict) -> None:
    x = args["x"]
    ref = int4_gemm_ref(**{**args, "x": x.float(), "scales": args["scales"].float()})
    assert not torch.isnan(got).any(), "NaN left in the output (poison not overwritten)"
    tol = _TOL[x.dtype] * max(1.0, ref.abs().max().item())
    torch.testing.assert_close(got.float(), ref, atol=tol, rtol=_TOL[x.dtype])


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=lambda c: "m{}k{}n{}g{}{}".format(*c[:4], "p" * c[4]))
def test_matches_reference(case: tuple, dtype: torch.dtype) -> None:
    args = make(case, dtype, seed=sum(case[:4]))
    out = poisoned((case[0], case[2]), dtype, args["x"].device)
    got = int4_gemm(**args, out=out)
    assert got is out
    check(got, args)


@pytest.mark.parametrize("split_k", [1, 2, 4])
def test_split_k(split_k: int) -> None:
    args = make((2, 256, 64, 64, True), torch.float32, seed=7)
    check(int4_gemm(**args, split_k=split_k), args)


@pytest.mark.parametrize("fused", [True, False])
def test_both_paths_at_any_batch(fused: bool) -> None:
    """The fused kernel and dequantize + GEMM agree with the reference on both sides of
    FUSED_MAX_ROWS (forced either way), with act-order."""
    for m in (2, 33):
        args = make((m, 256, 64, 64, True), torch.float32, seed=m)
        check(int4_gemm(**args, fused=fused), args)


@pytest.mark.parametrize("dtype", dtype_params())
def test_dequantize_kernel_writes_the_activation_dtype(dtype: torch.dtype) -> None:
    args = make((1, 256, 72, 64, False), dtype, seed=5)
    w = int4_dequantize(args["qweight"], args["scales"], args["zeros"], 64, dtype)
    assert w.dtype == dtype and w.shape == (256, 72)
    ref = dequantize_int4_ref(args["qweight"], args["scales"], args["zeros"], 64)
    torch.testing.assert_close(w, ref.to(dtype))


def test_strided_activations() -> None:
    args = make((4, 128, 64, 32, False), torch.float32, seed=3)
    wide = randn((4, 256), torch.float32, args["x"].device, generator(4))
    args["x"] = wide[:, ::2]  # stride 2 along K
    check(int4_gemm(**args), args)


def test_reference_dequantizes_the_layout() -> None:
    q = torch.randint(0, 16, (64, 8), generator=generator(1))
    assert torch.equal(unpack_int4(pack_int4(q, 0), 0), q.to(torch.uint8))
    scales, zeros = torch.full((2, 8), 0.5), torch.full((2, 8), 3, dtype=torch.uint8)
    w = dequantize_int4_ref(pack_int4(q, 0), scales, zeros, 32)
    torch.testing.assert_close(w, (q.float() - 3) * 0.5)


def test_argument_checks() -> None:
    args = make((1, 128, 64, 32, False), torch.float32, seed=0)
    with pytest.raises(ValueError, match="scales has shape"):
        int4_gemm(**{**args, "scales": args["scales"][:1]})
    with pytest.raises(ValueError, match="zeros dtype"):
        int4_gemm(**{**args, "zeros": args["zeros"].to(torch.int32)})
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        int4_gemm(**{**args, "group_size": 48})


@gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 4, 16])
def test_llama_8b_shapes_bf16(m: int) -> None:
    """Compiled on a GPU, bf16, the shapes the decode benchmark runs."""
    args = make((m, 4096, 14336 // 4, 128, False), torch.bfloat16, seed=m)
    check(int4_gemm(**args), args)


def test_layer_above_16_rows_never_dequantizes_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton path of an INT4 layer at a prefill-sized batch: dequantize into the
    activation dtype (int4_dequantize) + GEMM, never the fp32 reference of the whole weight."""
    from membound.config import QuantizationConfig
    from membound.kernels import int4_gemm as module
    from membound.kernels.contract import TRITON_OPS
    from membound.layers.linear import Linear
    from membound.layers.quantization import get_linear_method

    dev = device_for(torch.float32)
    qm = get_linear_method(QuantizationConfig.for_float_checkpoint("int4"), ["t"])
    with torch.device(dev):
        layer = Linear(128, 64, quant_method=qm, prefix="t", ops=TRITON_OPS)
    layer.quant_method.quantize_rows(
        layer, randn((64, 128), torch.float32, dev, generator(2)), (0, 64)
    )
    layer.process_weights_after_loading()
    x = randn((33, 128), torch.float32, dev, generator(3))
    expected = int4_gemm_ref(x, layer.qweight, layer.scales, layer.zeros, layer.group_size)
    monkeypatch.setattr(module, "dequantize_int4_ref", lambda *a: pytest.fail("fp32 dequant"))
    torch.testing.assert_close(layer(x), expected, atol=2e-4, rtol=2e-4)
