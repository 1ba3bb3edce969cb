"""membound: memory-centric LLM inference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from membound.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

if TYPE_CHECKING:
    from membound.entrypoints.llm import LLM
    from membound.outputs import CompletionOutput, RequestOutput


def __getattr__(name: str) -> Any:
    # Lazy, so `import membound.core` stays free of torch-heavy modules.
    if name == "LLM":
        from membound.entrypoints.llm import LLM

        return LLM
    if name in ("RequestOutput", "CompletionOutput"):
        from membound import outputs

        return getattr(outputs, name)
    raise AttributeError(name)
