"""The native INT8 W8A8 GEMM (csrc ``linear_int8``, kernels/cpu_quant_linear.py) against
``int8_grouped_linear_ref``: the same activation quantization (groups of 64 inputs, of 128,
or one per token), exact integer sums, one rounding to bf16; its fused SiLU-and-mul
bit-equal to the two ops; the int8 layer method under the CPU backend packing for it once
(groups for membound's own int8, per token for a checkpoint's); and bad input refused by
name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from membound.kernels.contract import CpuOps, TorchOps
from membound.kernels.cpu_quant_linear import (
    INT8_ACT_GROUP,
    INT8_VNNI_OFFSET,
    int8_grouped_linear_ref,
    int8_linear_ref,
    is_int8_vnni,
    pack_int8_vnni,
    quantize_int8,
    unpack_int8_vnni,
)


@pytest.fixture(scope="module")
def native(native):
    """The session's native kernels (conftest.py), where the CPU has AVX512-VNNI."""
    if not native.int8_linear_supported(64):
        pytest.skip("no native int8 GEMM on this CPU (no AVX512-VNNI)")
    return native


def _case(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, s = quantize_int8(torch.randn(n, k, generator=g))
    return q, s.reshape(-1)


def _within_one_rounding(
    got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor
) -> None:
    """got (bf16) is want (float32) rounded to bf16, up to one ulp (a tie, or float32 sums
    over the groups), plus float32's error on the groups' magnitudes where they cancel."""
    magnitude = x.float().abs() @ (q.float().abs() * s[:, None]).t()
    diff = (got.float() - want).abs()
    assert (diff <= want.abs() * 2.0**-7 + magnitude * 2.0**-18).all()


def _bf16_linear(cfg, in_features: int, out_features: int, ops, bias: bool = False):
    """A Linear of a bf16 model under ``cfg`` (its parameters made in bf16)."""
    from membound.layers.linear import Linear
    from membound.layers.quantization import get_linear_method

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return Linear(in_features, out_features, bias=bias, prefix="p", ops=ops,
                      quant_method=get_linear_method(cfg, ["p"]))  # fmt: skip
    finally:
        torch.set_default_dtype(default)


def test_pack_round_trips_with_the_offset() -> None:
    q, _ = _case(100, 36)
    packed = pack_int8_vnni(q)
    assert packed.shape == (2, 9, 64, 4) and is_int8_vnni(packed)
    assert torch.equal(unpack_int8_vnni(packed, 100), q)
    assert torch.equal(
        packed[0, 0, 0], (q[0, :4].to(torch.int16) + INT8_VNNI_OFFSET).to(torch.uint8)
    )
    assert (packed[1, :, 36:] == INT8_VNNI_OFFSET).all()  # zero padding
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_int8_vnni(torch.zeros(8, 6, dtype=torch.int8))
    with pytest.raises(ValueError, match="int8 weight"):
        pack_int8_vnni(torch.zeros(8, 8))


def test_grouped_reference_is_per_token_for_one_group() -> None:
    """With one group per row the grouped reference is the per-token one; with several each
    group's scale follows its own values (an outlier in one group leaves the others fine)."""
    q, s = _case(32, 64)
    x = torch.randn(5, 64)
    torch.testing.assert_close(int8_grouped_linear_ref(x, q, s, None),
                               int8_linear_ref(x, q, s, None), rtol=1e-6, atol=1e-6)  # fmt: skip
    q2, s2 = _case(32, 128)
    x2 = torch.randn(3, 128)
    x2[:, 0] = 1000.0  # an outlier in the first group
    exact = x2 @ (q2.float() * s2[:, None]).t()
    grouped = int8_grouped_linear_ref(x2, q2, s2, None)
    per_token = int8_linear_ref(x2, q2, s2, None)
    rest = x2[:, 64:] @ (q2[:, 64:].float() * s2[:, None]).t()  # the second group's share
    assert (grouped - exact).abs().max() < (per_token - exact).abs().max()
    assert rest.abs().max() > 0


# rows: one (a decode step), tiles of 6 and their rests, past one task's 512 rows;
# columns: whole blocks, an odd block count (halves of 32 per thread), a ragged last block
# activation groups: membound's 64 inputs, 128, one per token (the whole row: 0 stands for k)
@pytest.mark.parametrize("rows", [1, 5, 7, 13, 64, 600])
@pytest.mark.parametrize(("n", "k"), [(128, 64), (576, 192), (100, 128), (64, 768)])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("group", [INT8_ACT_GROUP, 128, 0])
def test_linear_int8_matches_the_reference(native, rows, n, k, static, group) -> None:
    group = group or k
    if k % group:
        pytest.skip(f"groups of {group} do not divide {k} inputs")
    q, s = _case(n, k)
    packed = pack_int8_vnni(q)
    x = (torch.randn(rows, k) * 3).bfloat16()
    x[0, :] = 0  # an all-zero row: scale 1e-12, every value 0
    x[-1, 0] = 200.0  # an outlier: its group's scale (and a per-token row's) follows it
    bias = torch.randn(n).bfloat16()
    input_scale = float(x.float().abs().max() / 127 * 0.8) if static else 0.0  # some saturate
    got = native.linear_int8(x, packed, s, n, input_scale, bias, group)
    ref_scale = torch.tensor([input_scale]) if static else None
    want = int8_grouped_linear_ref(x, q, s, ref_scale, group) + bias.float()
    assert got.shape == (rows, n) and got.dtype == torch.bfloat16
    _within_one_rounding(got, want, x, q, s)
    no_bias = native.linear_int8(x, packed, s, n, input_scale, None, group)
    _within_one_rounding(no_bias, int8_grouped_linear_ref(x, q, s, ref_scale, group), x, q, s)
    if group == k and not static:  # one group per row is the per-token numerics
        _within_one_rounding(no_bias, int8_linear_ref(x, q, s, None), x, q, s)


def test_linear_int8_saturates_large_values_and_agrees_with_the_torch_reference(native) -> None:
    q, s = _case(64, 64, seed=1)
    packed = pack_int8_vnni(q)
    x = torch.randn(3, 64).bfloat16()
    x[0, 0] = 3e38  # its quotient is past int32's range: saturates at 127, as the reference
    got = native.linear_int8(x, packed, s, 64, 0.01, None, 64)  # most values clamp to 127
    want = int8_grouped_linear_ref(x, q, s, torch.tensor([0.01]))
    _within_one_rounding(got, want, x, q, s)
    torch.testing.assert_close(got[0].float(), want[0], rtol=2**-7, atol=1e-3)  # (its bound
    ops = CpuOps(native=native)  # above is loose: |x| enters it)
    args = dict(x=x[1:].reshape(1, 2, 64), weight=packed, scale=s, input_scale=0.0,
                bias=None, out_features=64, act_group=INT8_ACT_GROUP)  # fmt: skip
    torch.testing.assert_close(ops.int8_linear(**args), TorchOps().int8_linear(**args),
                               rtol=1e-2, atol=1e-2)  # fmt: skip
    assert ops.int8_linear(**args).shape == (1, 2, 64)


@pytest.mark.parametrize("rows", [1, 9, 530])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("group", [INT8_ACT_GROUP, 192])
def test_linear_int8_silu_equals_the_two_ops(native, rows, with_bias, group) -> None:
    inter, k = 128, 192
    q, s = _case(2 * inter, k, seed=2)
    packed = pack_int8_vnni(q)
    x = torch.randn(rows, k).bfloat16()
    bias = torch.randn(2 * inter).bfloat16() if with_bias else None
    fused = native.linear_int8_silu(x, packed, s, inter, 0.0, bias, group)
    two = native.silu_and_mul(native.linear_int8(x, packed, s, 2 * inter, 0.0, bias, group))
    assert torch.equal(fused, two)
    ops = CpuOps(native=native)
    args = dict(x=x, weight=packed, scale=s, input_scale=0.0, bias=bias,
                out_features=2 * inter, act_group=group)  # fmt: skip
    assert torch.equal(ops.int8_linear_silu_and_mul(**args), fused)


def test_linear_int8_refuses_bad_input(native) -> None:
    q, s = _case(64, 64)
    packed = pack_int8_vnni(q)
    x = torch.randn(2, 64).bfloat16()
    with pytest.raises(RuntimeError, match="x has 128 features"):
        native.linear_int8(torch.randn(2, 128).bfloat16(), packed, s, 64, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="bfloat16"):
        native.linear_int8(x.float(), packed, s, 64, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="scales must be"):
        native.linear_int8(x, packed, s[:10], 64, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="scales must be"):
        native.linear_int8(x, packed, s.bfloat16(), 64, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="out_features 65"):
        native.linear_int8(x, packed, s, 65, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="input_scale"):
        native.linear_int8(x, packed, s, 64, -1.0, None, 64)
    with pytest.raises(RuntimeError, match="pack_int8_vnni"):
        native.linear_int8(x, q, s, 64, 0.0, None, 64)  # the plain weight
    with pytest.raises(RuntimeError, match="a multiple of 64"):
        native.linear_int8_silu(x, packed, s, 32, 0.0, None, 64)
    with pytest.raises(RuntimeError, match="a multiple of 64"):
        native.linear_int8(torch.randn(2, 32).bfloat16(), pack_int8_vnni(q[:, :32]), s, 64, 0.0,
                           None, 32)  # fmt: skip
    for bad in (0, 32, 96, 128):  # not a multiple of 64 dividing the 64 inputs
        with pytest.raises(RuntimeError, match="act_group"):
            native.linear_int8(x, packed, s, 64, 0.0, None, bad)
    assert not native.int8_linear_supported(96) and native.int8_linear_supported(INT8_ACT_GROUP)


def test_int8_layer_packs_for_the_native_gemm_once(native) -> None:
    """A bf16 model's int8 layer under the CPU backend: packed at load, W8A8 numerics (the
    reference's within one rounding), its dequantized weight the loaded one; gguf_int8 stays
    weight-only (that format never quantized activations)."""
    from membound.config import QuantizationConfig
    from membound.kernels.cpu_decode_stack import LinearKind

    cfg = QuantizationConfig.for_float_checkpoint("int8")
    ref, layer = (_bf16_linear(cfg, 192, 128, o, bias=True)
                  for o in (TorchOps(), CpuOps(native=native)))  # fmt: skip
    w, b = torch.randn(128, 192), torch.randn(128)
    for lin in (ref, layer):
        lin.load_checkpoint_tensor("weight", w, name="p.weight")
        lin.load_checkpoint_tensor("bias", b, name="p.bias")
        lin.process_weights_after_loading()
    assert layer.cpu_w8a8 and not layer.cpu_weight_only and is_int8_vnni(layer.weight)
    assert not ref.cpu_w8a8
    assert torch.equal(layer.quant_method.dequantize(layer), ref.quant_method.dequantize(ref))
    x = torch.randn(2, 5, 192).bfloat16()
    got = layer(x)
    plain = unpack_int8_vnni(layer.weight, 128)
    want = int8_grouped_linear_ref(x.view(10, 192), plain, layer.weight_scale, None)
    want = want + layer.bias.float()
    assert got.shape == (2, 5, 128)
    _within_one_rounding(got.view(10, 128), want, x.view(10, 192), plain, layer.weight_scale)
    stack = layer.quant_method.stack_linear(layer)
    assert stack.kind == LinearKind.INT8_W8A8 and stack.max_rows is None
    assert stack.weight is layer.weight and stack.input_scale == 0.0
    assert stack.group_size == INT8_ACT_GROUP


def test_checkpoint_int8_layer_keeps_its_per_token_scales(native) -> None:
    """A compressed-tensors W8A8 checkpoint declares per-token activation scales: the native
    GEMM computes those (one group of all the inputs), as vLLM and the CUDA path do."""
    from membound.config import QuantizationConfig
    from membound.kernels.cpu_decode_stack import LinearKind

    layer = _bf16_linear(QuantizationConfig("int8", "compressed-tensors"), 192, 128,
                         CpuOps(native=native))  # fmt: skip
    q, s = _case(128, 192, seed=3)
    layer.load_checkpoint_tensor("weight", q, name="p.weight")
    layer.load_checkpoint_tensor("weight_scale", s[:, None], name="p.weight_scale")
    layer.process_weights_after_loading()
    assert layer.cpu_w8a8
    x = torch.randn(6, 192).bfloat16()
    x[2, 5] = 300.0  # an outlier: per token, its whole row's scale follows it
    _within_one_rounding(layer(x), int8_linear_ref(x, q, s, None), x, q, s)
    stack = layer.quant_method.stack_linear(layer)
    assert stack.kind == LinearKind.INT8_W8A8 and stack.group_size == 192


def test_static_int8_layer_needs_a_positive_input_scale(native) -> None:
    from membound.config import QuantizationConfig

    cfg = QuantizationConfig.for_float_checkpoint("int8")
    cfg = dataclasses.replace(cfg, activation_scheme="static")
    layer = _bf16_linear(cfg, 64, 64, CpuOps(native=native))
    layer.load_checkpoint_tensor("weight", torch.randn(64, 64), name="p.weight")
    with pytest.raises(ValueError, match="input_scale is 0.0; it must be positive"):
        layer.process_weights_after_loading()
    with torch.no_grad():
        layer.input_scale.fill_(0.05)
    layer.process_weights_after_loading()
    x = torch.randn(4, 64).bfloat16()
    want = int8_grouped_linear_ref(x, unpack_int8_vnni(layer.weight, 64), layer.weight_scale,
                           torch.tensor([0.05]))  # fmt: skip
    _within_one_rounding(layer(x), want, x, unpack_int8_vnni(layer.weight, 64), layer.weight_scale)
