"""StructuredOutputManager: one grammar matcher per constrained request, on the engine side.

Per step (engine thread, rank 0's process): ``bitmasks(rows)`` fills the allowed-token
bitmask of every constrained request that samples this step (after it accepted every token
sampled so far), and ``accept(req_id, tokens)`` advances its matcher on the tokens the step
produced. Matchers live as long as their request and survive preemption (the tokens they
accepted are the request's output either way).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from membound.sampling_params import StructuredOutputsParams
from membound.structured_output.grammar import GrammarCompiler, import_xgrammar


class StructuredOutputManager:
    def __init__(self, compiler: GrammarCompiler | None) -> None:
        self.compiler = compiler  # None: the model has no tokenizer, so no grammars
        self._matchers: dict[str, Any] = {}

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._matchers

    def check(self, spec: StructuredOutputsParams) -> None:
        """Compile ``spec`` now (cached), so a bad one is refused before it is queued."""
        if self.compiler is None:
            from membound.structured_output.grammar import GrammarError

            raise GrammarError(
                "structured outputs need a tokenizer and this model has none", "structured_outputs"
            )
        self.compiler.compile(spec)

    def add(self, req_id: str, spec: StructuredOutputsParams) -> None:
        assert self.compiler is not None
        self._matchers[req_id] = self.compiler.matcher(spec)

    def remove(self, req_ids: Iterable[str]) -> None:
        for rid in req_ids:
            self._matchers.pop(rid, None)

    def bitmasks(self, req_ids: Iterable[str]) -> dict[str, torch.Tensor]:
        """int32 [ceil(vocab_size / 32)] allowed-token bitmask per constrained request."""
        rows = [rid for rid in req_ids if rid in self._matchers]
        if not rows:
            return {}
        assert self.compiler is not None
        xgr = import_xgrammar()
        packed = xgr.allocate_token_bitmask(len(rows), self.compiler.vocab_size)
        for j, rid in enumerate(rows):
            self._matchers[rid].fill_next_token_bitmask(packed, j)
        return {rid: packed[j] for j, rid in enumerate(rows)}

    def accept(self, req_id: str, token_ids: Iterable[int]) -> None:
        matcher = self._matchers.get(req_id)
        if matcher is None:
            return
        for tok in token_ids:
            if matcher.is_terminated() or not matcher.accept_token(tok):
                # only possible when something outside the mask chose the token (a stop
                # string's tail, EOS after completion); the request ends here anyway
                self._matchers.pop(req_id, None)
                return
