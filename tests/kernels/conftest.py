"""Kernel tests: Triton kernels against their torch references.

Without a GPU the kernels run in Triton's interpreter, which must be switched on before triton
is imported (kernels decorated earlier in the session still run interpreted on CPU tensors:
see membound.kernels.triton_utils.launch). With a GPU the same tests run compiled, plus the
bf16 cases marked ``gpu``.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
