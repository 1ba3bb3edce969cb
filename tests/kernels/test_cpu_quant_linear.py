"""Weight-only INT8 / INT4 CPU kernels (kernels/cpu_quant_linear.py) against their float32
references, the int4 layout reader against the kernel itself, and the layer methods under
the CPU backend (packed once, outputs equal to the float reference up to bf16 rounding)."""

from __future__ import annotations

import pytest
import torch

from membound.kernels.cpu_quant_linear import (
    INT4_KERNEL_MAX_ROWS,
    INT8_KERNEL_MAX_ROWS,
    dequantize_int4_cpu,
    has_cpu_quant_kernels,
    int4_cpu_linear,
    int4_cpu_linear_ref,
    int4_cpu_supports,
    int8_weight_only_linear,
    int8_weight_only_linear_ref,
    pack_int4_cpu,
)
from membound.layers.quantization.int4_rtn import quantize_int4_rtn
from membound.layers.quantization.int8 import quantize_int8

pytestmark = pytest.mark.skipif(not has_cpu_quant_kernels(), reason="torch lacks the CPU kernels")


def close(got: torch.Tensor, ref: torch.Tensor, rel: float = 2e-2) -> None:
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= rel * ref.abs().max().item(), (err, ref.abs().max().item())


@pytest.mark.parametrize("rows", [1, 3, INT8_KERNEL_MAX_ROWS + 5])
@pytest.mark.parametrize("shape", [(64, 96), (192, 128)])
def test_int8_weight_only_matches_reference(rows: int, shape: tuple[int, int]) -> None:
    n, k = shape
    q, s = quantize_int8(torch.randn(n, k))
    scales = s.reshape(-1).bfloat16()
    x = torch.randn(rows, k).bfloat16()
    out = int8_weight_only_linear(x, q, scales)
    assert out.shape == (rows, n) and out.dtype == torch.bfloat16
    close(out, int8_weight_only_linear_ref(x, q, scales))


def int4_case(n: int, k: int, g: int) -> tuple[torch.Tensor, ...]:
    q, s, z = quantize_int4_rtn(torch.randn(n, k), g)  # [N, K], [N, K / G]
    return q.t().contiguous(), s.t().contiguous(), z.t().contiguous()  # membound: [K, N]


@pytest.mark.parametrize("rows", [1, 4, INT4_KERNEL_MAX_ROWS, INT4_KERNEL_MAX_ROWS + 3])
@pytest.mark.parametrize(("n", "k", "g"), [(64, 64, 32), (128, 192, 64), (192, 256, 128)])
def test_int4_cpu_matches_reference(rows: int, n: int, k: int, g: int) -> None:
    q, s, z = int4_case(n, k, g)
    packed, sz = pack_int4_cpu(q, s, z)
    x = torch.randn(rows, k).bfloat16()
    out = int4_cpu_linear(x, packed, sz, g)
    assert out.shape == (rows, n)
    close(out, int4_cpu_linear_ref(x, q, s, z, g))


def test_int4_layout_reader_agrees_with_the_kernel() -> None:
    n, k, g = 128, 128, 32
    packed, sz = pack_int4_cpu(*int4_case(n, k, g))
    w = dequantize_int4_cpu(packed, sz, g)  # [N, K]
    eye = torch.eye(k, dtype=torch.bfloat16)
    kernel_w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, g, sz).t()
    torch.testing.assert_close(w.float(), kernel_w.float(), rtol=1e-2, atol=1e-2)


def test_int4_shape_rule_and_bad_shapes() -> None:
    assert int4_cpu_supports(960, 576, 64) and not int4_cpu_supports(960, 576, 128)
    assert not int4_cpu_supports(96, 128, 32)  # not whole blocks of 64 rows
    with pytest.raises(ValueError, match="N % 64"):
        pack_int4_cpu(*int4_case(96, 64, 32))


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_layer_under_cpu_backend_packs_once_and_keeps_outputs(method: str) -> None:
    from membound.config import QuantizationConfig
    from membound.kernels.contract import CPU_OPS, TORCH_OPS
    from membound.layers.linear import Linear
    from membound.layers.quantization import get_linear_method

    cfg = QuantizationConfig.for_float_checkpoint(method)
    w = torch.randn(128, 192)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # a bf16 model: the CPU kernels serve it
    try:
        ref, layer = (Linear(192, 128, quant_method=get_linear_method(cfg, ["p"]), prefix="p",
                             ops=ops) for ops in (TORCH_OPS, CPU_OPS))  # fmt: skip
    finally:
        torch.set_default_dtype(default)
    for lin in (ref, layer):  # the post-load step packs for the CPU backend only
        lin.load_checkpoint_tensor("weight", w, name="p.weight")
        lin.process_weights_after_loading()
    x = torch.randn(3, 192).bfloat16()
    before_w = ref.quant_method.dequantize(ref)
    if method == "int4":
        assert layer.qweight is None and layer.cpu_qweight.dtype == torch.uint8
        assert layer.group_size == 64  # 128 does not divide 192
    else:
        assert layer.cpu_weight_only and layer.weight_scale.dtype == torch.bfloat16
    after_w = layer.quant_method.dequantize(layer)
    close(after_w, before_w)  # only the scales' bf16 rounding
    close(layer(x), x.float() @ after_w.t())
    assert layer(x).dtype == x.dtype


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_fp32_model_keeps_the_reference_numerics(method: str) -> None:
    from membound.config import QuantizationConfig
    from membound.kernels.contract import CPU_OPS
    from membound.layers.linear import Linear
    from membound.layers.quantization import get_linear_method

    cfg = QuantizationConfig.for_float_checkpoint(method)
    layer = Linear(192, 128, quant_method=get_linear_method(cfg, ["p"]), prefix="p", ops=CPU_OPS)
    layer.load_checkpoint_tensor("weight", torch.randn(128, 192), name="p.weight")
    layer.process_weights_after_loading()
    assert getattr(layer, "cpu_qweight", None) is None
    assert not getattr(layer, "cpu_weight_only", False)
