"""Triton, when it is installed, and what every kernel launcher shares.

``import membound.kernels.<x>`` works without triton: the references (the CPU path) need only
torch. Kernels are still written as triton-jitted functions at module level; without triton
the decorator is a no-op and the launchers refuse to run with a clear error.

On CPU tensors a launcher runs its kernel in Triton's interpreter (numpy), whatever
``TRITON_INTERPRET`` said when the kernel module was imported: that is how the kernels are
tested in CI. The interpreter handles fp16 and fp32; bf16 tile arithmetic is wrong there, so
bf16 is checked on a GPU only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

try:  # guarded: CPU users without triton still run the torch references
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent

    class _NoTriton:
        """Stands in for the triton module so kernel definitions still parse."""

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

    triton = _NoTriton()  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
_interpreted: dict[int, Any] = {}


def require_triton() -> None:
    if not HAS_TRITON:
        raise RuntimeError(
            "the Triton kernels need the 'triton' package (pip install triton); without it "
            "use the torch references (kernel backend 'torch', the default on CPU)"
        )


def launch(kernel: Any, grid: tuple[int, ...], device: torch.device, *args: Any, **kw: Any) -> None:
    """``kernel[grid](*args, **kw)``; on CPU tensors through Triton's interpreter."""
    require_triton()
    if device.type != "cpu":
        kernel[grid](*args, **kw)
        return
    with _device_calls_interpreted():
        _interpreter_version(kernel)[grid](*args, **kw)


@contextmanager
def _device_calls_interpreted() -> Iterator[None]:
    """While a kernel runs in the interpreter, calls to compiled-mode ``@jit`` functions
    (triton's own ``tl.cdiv``, ``tl.max``... when triton was imported without
    TRITON_INTERPRET=1) run interpreted too. Such calls only happen inside kernels, so the
    swap cannot affect GPU compilation."""
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _interpreter_version(self)(*args, **kwargs)

    JITFunction.__call__ = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        JITFunction.__call__ = original  # type: ignore[method-assign]


def _interpreter_version(kernel: Any) -> Any:
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    if id(kernel) not in _interpreted:
        _interpreted[id(kernel)] = InterpretedFunction(kernel.fn)
    return _interpreted[id(kernel)]


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs are multiplied in full precision, not TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: no parallelism to fill)."""
    if device.type != "cuda":
        return 1
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


# ---- argument checks (ValueError naming the argument) --------------------------------------


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_tensor(
    name: str,
    t: torch.Tensor,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    last_dim_contiguous: bool = False,
) -> None:
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        check(t.dim() == ndim, f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        check(t.dtype in dtypes, f"{name} dtype {t.dtype} is not supported; use one of {allowed}")
    if device is not None:
        check(t.device == device, f"{name} is on {t.device} but the other tensors are on {device}")
    if last_dim_contiguous and t.numel() > 0:
        check(t.stride(-1) == 1, f"{name} needs a contiguous last dim, got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    check(
        tuple(t.shape) == tuple(shape),
        f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}",
    )
