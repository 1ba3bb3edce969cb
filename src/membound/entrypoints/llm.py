"""The offline API: ``LLM(model).generate(prompts, sampling_params)``, as vLLM users know it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, Union

from membound.engine.engine_args import EngineArgs, generation_defaults
from membound.engine.llm_engine import LLMEngine
from membound.engine.tokenizer import Tokenizer
from membound.outputs import RequestOutput
from membound.sampling_params import SamplingParams

PromptType = Union[str, list[int], dict[str, Any]]


class LLM:
    """An engine for offline batches.

    ``model`` is a checkpoint folder or a hub id (None: the bundled default model). Every
    EngineArgs field is accepted as a keyword (dtype, device, max_model_len, block_size,
    max_num_seqs, max_num_batched_tokens, load_format, seed, enable_chunked_prefill,
    gpu_memory_utilization, kv_cache_memory_bytes, num_kv_blocks, tokenizer,
    tensor_parallel_size...). With ``tensor_parallel_size`` > 1 the other ranks run in
    their own processes until ``shutdown()`` (or exit); see docs/parallelism.md.

    Thread safety: calls are serialised. ``generate`` and ``chat`` from several threads at
    once run one after another, each call's batch whole (a lock guards the engine, which
    is not thread-safe); for concurrent requests batched together use ``AsyncLLMEngine``
    or ``membound serve``. A call interrupted (KeyboardInterrupt, an exception) aborts its
    requests and leaves the engine usable.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        known = {f.name for f in fields(EngineArgs)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"LLM() got unknown option(s) {', '.join(unknown)}; known options: "
                f"{', '.join(sorted(known - {'model'}))}"
            )
        self.engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args, progress=True)
        self._generation_defaults = generation_defaults(self.llm_engine.config)
        self._lock = threading.Lock()  # the engine is not thread-safe; calls take turns

    def get_default_sampling_params(self, **overrides: Any) -> SamplingParams:
        """SamplingParams with the checkpoint's generation_config.json defaults (temperature,
        top_p, top_k, min_p, repetition_penalty), then ``overrides`` (None values ignored)."""
        kwargs = dict(self._generation_defaults)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**kwargs)

    def get_tokenizer(self) -> Tokenizer | None:
        return self.llm_engine.tokenizer

    def shutdown(self) -> None:
        """Stop the tensor-parallel ranks this LLM started (a no-op at TP=1)."""
        self.llm_engine.shutdown()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (a str, a list of token ids, or {"prompt": str} /
        {"prompt_token_ids": [...]}); returns one RequestOutput per prompt, in order."""
        items = _normalize_prompts(prompts)
        params = _per_prompt_params(sampling_params or self.get_default_sampling_params(),
                                    len(items))
        return self._run(items, params, use_tqdm, priority)

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        parse_special_in_content: bool = False,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them.
        Special-token text inside message content is encoded as text unless
        ``parse_special_in_content`` (trusted input only)."""
        tok = self.get_tokenizer()
        if tok is None:
            raise ValueError("chat() needs a tokenizer; this model has none")
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        items: list[PromptType] = [
            {"prompt_token_ids": tok.encode_chat(
                conv, add_generation_prompt=add_generation_prompt, chat_template=chat_template,
                parse_special_in_content=parse_special_in_content)}
            for conv in conversations  # type: ignore[arg-type]
        ]
        params = _per_prompt_params(sampling_params or self.get_default_sampling_params(),
                                    len(items))
        return self._run(items, params, use_tqdm, None)

    def _run(
        self,
        items: list[PromptType],
        params: list[SamplingParams],
        use_tqdm: bool,
        priority: Sequence[int] | None,
    ) -> list[RequestOutput]:
        with self._lock:
            return self._run_locked(items, params, use_tqdm, priority)

    def _run_locked(
        self,
        items: list[PromptType],
        params: list[SamplingParams],
        use_tqdm: bool,
        priority: Sequence[int] | None,
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        # Tokenize and validate every prompt before adding any, so a bad one adds nothing.
        prepared = []
        for i, item in enumerate(items):
            prompt = item
            if isinstance(item, dict):
                prompt = item.get("prompt_token_ids") or item["prompt"]
            try:
                prepared.append(engine.process_request(prompt, params[i]))
            except ValueError as e:
                raise type(e)(f"prompt {i}: {e}") from e
        order: dict[str, int] = {}
        for i, req in enumerate(prepared):
            rid = engine.new_request_id()
            order[rid] = i
            engine.add_request(rid, req, priority=priority[i] if priority else 0)
        return self._drain(order, items, use_tqdm)

    def _drain(
        self, order: dict[str, int], items: list[PromptType], use_tqdm: bool
    ) -> list[RequestOutput]:
        from tqdm import tqdm

        engine = self.llm_engine
        results: list[RequestOutput | None] = [None] * len(order)
        bar = tqdm(total=len(order), desc="Processed prompts", disable=not use_tqdm or len(order) < 2)
        n_out = 0
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and out.request_id in order:
                        i = order[out.request_id]
                        item = items[i]
                        if isinstance(item, str):
                            out.prompt = item
                        elif isinstance(item, dict) and "prompt" in item:
                            out.prompt = item["prompt"]
                        results[i] = out
                        n_out += sum(len(c.token_ids) for c in out.outputs)
                        bar.update(1)
                        bar.set_postfix_str(f"{n_out} output tokens")
        except BaseException:
            engine.abort_request(list(order))  # leave no request (or KV block) behind
            raise
        finally:
            bar.close()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


def _normalize_prompts(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompts
    ):
        return [list(prompts)]  # type: ignore[arg-type]
    items = list(prompts)  # type: ignore[arg-type]
    if not items:
        raise ValueError("prompts is empty; pass a string, token ids, or a list of them")
    for i, item in enumerate(items):
        ok = isinstance(item, str) or (isinstance(item, dict) and (
            "prompt" in item or "prompt_token_ids" in item)) or (
            isinstance(item, list) and all(isinstance(t, int) for t in item))
        if not ok:
            raise TypeError(
                f"prompt {i} is a {type(item).__name__}; each prompt must be a str, a list of "
                "token ids, or a dict with 'prompt' or 'prompt_token_ids'"
            )
    return items


def _per_prompt_params(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, n: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * n
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    params = list(sampling_params)
    if len(params) != n:
        raise ValueError(
            f"got {len(params)} SamplingParams for {n} prompts; pass one, or one per prompt"
        )
    return params
