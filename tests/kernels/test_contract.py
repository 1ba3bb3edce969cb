"""The kernel contract: every backend provides every op of ``KernelOps``, each one
keyword-only; selection picks one object per device; the backends agree on a small input."""

from __future__ import annotations

import inspect

import pytest
import torch

from membound.kernels.contract import (
    CPU_OPS,
    TORCH_OPS,
    TRITON_OPS,
    CpuOps,
    KernelBackend,
    KernelOps,
    select_kernel_ops,
)

OPS = [n for n, _ in inspect.getmembers(KernelOps, inspect.isfunction) if not n.startswith("_")]


def test_contract_has_one_keyword_only_method_per_op() -> None:
    assert {"store_kv", "decode_attention", "prefill_attention", "varlen_attention", "rms_norm",
            "fused_add_rms_norm", "silu_and_mul", "rotary_embedding", "moe_gemm",
            "plan_decode"} <= set(OPS)  # fmt: skip
    for backend in (TORCH_OPS, CPU_OPS, TRITON_OPS):
        for name in OPS:
            params = list(inspect.signature(getattr(backend, name)).parameters.values())
            want = list(inspect.signature(getattr(KernelOps, name)).parameters.values())[1:]
            assert [p.name for p in params] == [p.name for p in want], (backend, name)
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), name


def test_selection_is_one_object_per_choice() -> None:
    cpu = torch.device("cpu")
    assert isinstance(select_kernel_ops(cpu), CpuOps) and CPU_OPS.backend is KernelBackend.CPU
    assert select_kernel_ops(cpu).backend is KernelBackend.CPU
    assert select_kernel_ops(cpu, "torch") is TORCH_OPS
    with pytest.raises(ValueError, match="not one of"):
        select_kernel_ops(cpu, "cuda")


@pytest.mark.parametrize("ops", [CPU_OPS, TRITON_OPS], ids=["cpu", "triton"])
def test_backends_agree_with_the_references(ops: KernelOps) -> None:
    if ops is TRITON_OPS:
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(0)
    x, r, w = (torch.randn(3, 8, generator=gen) for _ in range(3))
    torch.testing.assert_close(ops.rms_norm(x=x, weight=w[0], eps=1e-6),
                               TORCH_OPS.rms_norm(x=x, weight=w[0], eps=1e-6))  # fmt: skip
    torch.testing.assert_close(ops.silu_and_mul(x=x), TORCH_OPS.silu_and_mul(x=x))
    q, k = torch.randn(3, 2, 8, generator=gen), torch.randn(3, 1, 8, generator=gen)
    cos, sin = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    want = TORCH_OPS.rotary_embedding(query=q.clone(), key=k.clone(), cos=cos, sin=sin)
    got = ops.rotary_embedding(query=q.clone(), key=k.clone(), cos=cos, sin=sin)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
