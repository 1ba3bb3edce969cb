"""OutputProcessor: turns per-step EngineCoreOutputs into RequestOutputs.

Owns detokenization (incremental, stop strings), logprob accumulation, timing metrics, and
the fan-in of ``n > 1`` child sequences into one RequestOutput.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from membound.core.outputs import EngineCoreOutput
from membound.engine.detokenizer import IncrementalDetokenizer
from membound.engine.tokenizer import Tokenizer
from membound.outputs import CompletionOutput, RequestMetrics, RequestOutput
from membound.sampling_params import SamplingParams


@dataclass
class ChildState:
    """One generated sequence (``index`` of its parent's n)."""

    index: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    children: dict[str, ChildState]
    metrics: RequestMetrics
    prompt_logprobs: list[dict[int, float] | None] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.children.values())


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.child_to_parent: dict[str, str] = {}

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
        child_params: list[SamplingParams],
        arrival_time: float,
    ) -> None:
        children = {}
        for i, (cid, cparams) in enumerate(zip(child_ids, child_params)):
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, cparams)
            children[cid] = ChildState(i, cparams, detok)
            self.child_to_parent[cid] = request_id
        self.parents[request_id] = ParentState(
            request_id, prompt, prompt_token_ids, params, children, RequestMetrics(arrival_time)
        )

    def process(self, outputs: list[EngineCoreOutput]) -> tuple[list[RequestOutput], list[str]]:
        """Apply one step's outputs. Returns the updated RequestOutputs and the child ids that
        a stop string finished (the engine must stop them in the scheduler)."""
        now = time.monotonic()
        touched: dict[str, ParentState] = {}
        stopped_by_string: list[str] = []
        for out in outputs:
            parent_id = self.child_to_parent.get(out.req_id)
            if parent_id is None:
                continue
            parent = self.parents[parent_id]
            child = parent.children[out.req_id]
            if out.prompt_logprobs and child.index == 0:
                parent.prompt_logprobs.extend(out.prompt_logprobs)
            if out.new_token_ids:
                if parent.metrics.first_token_time is None:
                    parent.metrics.first_token_time = now
                parent.metrics.last_token_time = now
            if self._apply(child, out):
                stopped_by_string.append(out.req_id)
            touched[parent_id] = parent
        results = []
        for parent in touched.values():
            results.append(self._make_output(parent, now))
        return results, stopped_by_string

    def _apply(self, child: ChildState, out: EngineCoreOutput) -> bool:
        """Fold one output into a child; True if a stop string just finished it."""
        child.token_ids.extend(out.new_token_ids)
        for lp, tok in zip(out.logprobs, out.new_token_ids):
            child.logprobs.append(lp)
            child.cumulative_logprob += lp.get(tok, 0.0)
        detok = child.detokenizer
        if detok is not None and out.new_token_ids:
            detok.update(out.new_token_ids, stop_terminated=out.finish_reason == "stop")
            if detok.finished and out.finish_reason is None:
                child.finish_reason, child.stop_reason = "stop", detok.stop_reason
                return True
        if out.finish_reason is not None and child.finish_reason is None:
            child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            if detok is not None and not detok.finished:
                detok.flush()
        return False

    def abort(self, parent_id: str) -> RequestOutput | None:
        parent = self.parents.get(parent_id)
        if parent is None:
            return None
        for child in parent.children.values():
            if child.finish_reason is None:
                child.finish_reason = "abort"
        return self._make_output(parent, time.monotonic())

    def child_ids(self, parent_id: str) -> list[str]:
        parent = self.parents.get(parent_id)
        return list(parent.children) if parent else []

    def _make_output(self, parent: ParentState, now: float) -> RequestOutput:
        finished = parent.finished
        if finished:
            parent.metrics.finished_time = now
            self.parents.pop(parent.request_id, None)
            for cid in parent.children:
                self.child_to_parent.pop(cid, None)
        outputs = [self._completion(c) for c in parent.children.values()]
        want_prompt_lp = parent.params.prompt_logprobs is not None
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=list(parent.prompt_logprobs) if want_prompt_lp else None,
            outputs=outputs,
            finished=finished,
            metrics=parent.metrics,
        )

    def mark_scheduled(self, child_ids: list[str], now: float) -> None:
        """Record when requests were first scheduled (queue time ends there)."""
        for cid in child_ids:
            parent = self.parents.get(self.child_to_parent.get(cid, ""))
            if parent is not None and parent.metrics.first_scheduled_time is None:
                parent.metrics.first_scheduled_time = now

    @staticmethod
    def _completion(child: ChildState) -> CompletionOutput:
        want_lp = child.params.logprobs is not None
        detok = child.detokenizer
        text = ""
        if detok is not None:
            # while running, only text no stop string can still cut (safe to stream)
            text = detok.output_text if child.finish_reason is not None else detok.returned_text
        return CompletionOutput(
            index=child.index,
            text=text,
            token_ids=list(child.token_ids),
            cumulative_logprob=child.cumulative_logprob if want_lp else None,
            logprobs=list(child.logprobs) if want_lp else None,
            finish_reason=child.finish_reason,
            stop_reason=child.stop_reason,
        )
