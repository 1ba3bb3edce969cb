"""LLMEngine: step = schedule -> execute -> update, plus request admission and outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from membound.config import EngineConfig
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.request import Request, RequestStatus
from membound.core.scheduler import RequestRejectedError, Scheduler
from membound.engine.engine_args import EngineArgs
from membound.engine.engine_info import EngineInfo
from membound.engine.intake import IntakeLimits, ValidatedRequest, process_request
from membound.engine.output_processor import OutputProcessor
from membound.engine.stats import EngineStats
from membound.engine.tokenizer import Tokenizer
from membound.outputs import RequestOutput
from membound.sampling_params import SamplingParams
from membound.structured_output.grammar import GrammarCompiler
from membound.structured_output.manager import StructuredOutputManager
from membound.worker.executor import Executor

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig, *, progress: bool = False) -> None:
        self.config = config
        mc = config.model_config
        t0 = time.perf_counter()
        # every tensor-parallel rank loads its shard and allocates its KV cache; from here
        # on this process is rank 0 (under torchrun, other ranks never return from this)
        self.executor = Executor(config, progress=progress)
        self.info = EngineInfo.from_ready(config, self.executor.ready)
        self.tokenizer: Tokenizer | None = (
            Tokenizer.from_pretrained(config.tokenizer) if config.tokenizer else None
        )
        cc, sc = config.cache_config, config.scheduler_config
        ready = self.executor.ready
        self.kv_manager = KVCacheManager(
            ready.num_blocks, ready.block_size,
            enable_prefix_caching=cc.enable_prefix_caching,
            prefix_cache_salt=cc.prefix_cache_salt,
            num_cpu_blocks=ready.num_cpu_blocks,
        )
        self.scheduler = Scheduler(sc, self.kv_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        eos = list(mc.eos_token_ids)
        if self.tokenizer is not None:
            eos += [i for i in self.tokenizer.eos_token_ids if i not in eos]
        self.eos_token_ids = tuple(eos)
        self.intake_limits = IntakeLimits(mc.vocab_size, sc.max_model_len,
                                          self.kv_manager.capacity_tokens)
        self.structured_outputs = StructuredOutputManager(
            GrammarCompiler(self.tokenizer.to_json(), mc.vocab_size, self.eos_token_ids)
            if self.tokenizer is not None else None
        )
        self._next_id = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        tp = config.parallel_config.tensor_parallel_size
        logger.info("engine ready in %.1fs; %s%s", time.perf_counter() - t0,
                    self.info.memory_report.format(), f" (per rank, TP={tp})" if tp > 1 else "")

    @classmethod
    def from_engine_args(cls, args: EngineArgs, *, progress: bool = False) -> LLMEngine:
        return cls(args.create_engine_config(), progress=progress)

    def shutdown(self) -> None:
        """Stop the other tensor-parallel ranks (nothing to do at TP=1). Idempotent; also
        runs when the engine is garbage-collected or the interpreter exits."""
        self.executor.shutdown()

    # ---- requests --------------------------------------------------------------------
    def new_request_id(self) -> str:
        self._next_id += 1
        return str(self._next_id - 1)

    def process_request(self, prompt: str | list[int], params: SamplingParams) -> ValidatedRequest:
        """Validate (prompt, params) without adding it (thread-safe: reads only). Raises
        InvalidRequestError naming the problem."""
        return process_request(prompt, params, limits=self.intake_limits,
                               tokenizer=self.tokenizer, grammars=self.structured_outputs)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | ValidatedRequest,
        params: SamplingParams | None = None,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        """Add a request: a prompt with its params, or a ValidatedRequest from
        ``process_request`` (then ``params`` is left out)."""
        if isinstance(prompt, ValidatedRequest):
            if params is not None and params is not prompt.params:
                raise ValueError("pass params inside the ValidatedRequest, not beside it")
            req = prompt
        else:
            if params is None:
                raise ValueError("add_request needs SamplingParams with a raw prompt")
            req = self.process_request(prompt, params)
        if request_id in self.output_processor.parents:
            raise RequestRejectedError(f"request id {request_id!r} is already in use")
        ids, params = req.prompt_token_ids, req.params
        arrival = time.monotonic() if arrival_time is None else arrival_time
        child_ids, child_params = self._children(request_id, params)
        self.output_processor.add_request(
            request_id, req.prompt, ids, params, child_ids, child_params, arrival
        )
        for cid, cparams in zip(child_ids, child_params):
            self.scheduler.add_request(Request(cid, ids, cparams, self.eos_token_ids, arrival,
                                               priority))
            if cparams.structured_outputs is not None:  # compiled by the intake (cached)
                self.structured_outputs.add(cid, cparams.structured_outputs)
            self._prompt_tokens_total += len(ids)

    @staticmethod
    def _children(request_id: str, params: SamplingParams) -> tuple[list[str], list[SamplingParams]]:
        if params.n == 1:
            return [request_id], [params]
        ids, plist = [], []
        for i in range(params.n):
            seed = params.seed + i if params.seed is not None else None
            ids.append(f"{request_id}#{i}")
            plist.append(replace(params, n=1, seed=seed))
        return ids, plist

    def abort_request(self, request_ids: list[str]) -> list[RequestOutput]:
        outs = []
        for rid in request_ids:
            children = self.output_processor.child_ids(rid)
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)
            out = self.output_processor.abort(rid)
            if out is not None:
                outs.append(out)
        return outs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the loop --------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched_out = self.scheduler.schedule()
        self.structured_outputs.remove(sched_out.finished_req_ids)
        if sched_out.new_requests:
            self.output_processor.mark_scheduled(
                [n.req_id for n in sched_out.new_requests], time.monotonic()
            )
        if sched_out.is_empty:
            self.executor.execute(sched_out)  # still drops finished request state
            return []
        bitmasks = self.structured_outputs.bitmasks(c.req_id for c in sched_out.chunks if c.sample)
        result = self.executor.execute(sched_out, bitmasks)
        core_outputs = self.scheduler.update_from_output(sched_out, result)
        for o in core_outputs:
            self.structured_outputs.accept(o.req_id, o.new_token_ids)
        self._generation_tokens_total += sum(len(o.new_token_ids) for o in core_outputs)
        outputs, stopped = self.output_processor.process(core_outputs)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return outputs

    # ---- stats -----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        pool = self.kv_manager.pool
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_num_blocks=pool.num_blocks,
            kv_num_free_blocks=pool.num_free_blocks,
            kv_block_size=self.kv_manager.block_size,
            kv_num_cached_blocks=pool.num_cached_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            num_swaps_out=self.scheduler.num_swaps_out,
            num_swaps_in=self.scheduler.num_swaps_in,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            prefix_cache_queries_total=self.kv_manager.prefix_queries,
            prefix_cache_hits_total=self.kv_manager.prefix_hits,
        )
