"""LLMEngine: step = schedule -> execute -> update, plus request admission and outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from membound.config import EngineConfig
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.request import Request, RequestStatus
from membound.core.scheduler import RequestRejectedError, Scheduler
from membound.engine.engine_args import EngineArgs, torch_dtype
from membound.engine.output_processor import OutputProcessor
from membound.engine.stats import EngineStats
from membound.engine.tokenizer import Tokenizer
from membound.outputs import RequestOutput
from membound.sampling_params import SamplingParams
from membound.worker.kv_cache_alloc import (
    KVCacheLayout,
    allocate_kv_cache,
    num_swap_blocks,
    plan_kv_cache,
)
from membound.worker.kv_swap import KVSwapSpace
from membound.worker.memory_profiler import (
    MemoryReport,
    profile_peak_activation_bytes,
    weights_bytes,
)
from membound.worker.model_runner import ModelRunner
from membound.worker.offload import WeightOffloader, plan_offload
from membound.worker.weight_loader import load_model

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, config: EngineConfig, *, progress: bool = False) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = torch_dtype(config.dtype)
        mc = config.model_config
        self.tokenizer: Tokenizer | None = (
            Tokenizer.from_pretrained(config.tokenizer) if config.tokenizer else None
        )
        t0 = time.perf_counter()
        self.model = load_model(
            mc, config.model, dtype=self.dtype, device=self.device,
            load_format=config.load_format,
            max_positions=config.scheduler_config.max_model_len, seed=config.seed,
            progress=progress,
        )
        self.offloader, _ = self._offload_weights()
        self.weights_bytes = weights_bytes(self.model)
        self.kv_layout, self.memory_report = self._plan_memory()
        kv_caches = allocate_kv_cache(self.kv_layout, self.device)
        cc, sc = config.cache_config, config.scheduler_config
        num_cpu_blocks = num_swap_blocks(self.kv_layout, cc, sc.preemption_mode)
        self.kv_manager = KVCacheManager(
            self.kv_layout.num_blocks, self.kv_layout.block_size,
            enable_prefix_caching=cc.enable_prefix_caching,
            prefix_cache_salt=cc.prefix_cache_salt, num_cpu_blocks=num_cpu_blocks,
        )
        self.scheduler = Scheduler(sc, self.kv_manager)
        self.runner = ModelRunner(
            self.model, kv_caches, self.kv_layout.block_size, mc.vocab_size, self.device,
            mc.sliding_window, config.seed,
        )
        if num_cpu_blocks:
            self.runner.swap_space = KVSwapSpace(kv_caches, num_cpu_blocks)
        kc = config.kernel_config
        if self.offloader is not None and not kc.enforce_eager:
            # streamed weights change buffers between steps: a captured graph would not see it
            logger.info("cpu_offload_gb is set: decode CUDA graphs disabled")
            kc = replace(kc, enforce_eager=True)
        self.runner.init_data_plane(kc, sc.max_num_seqs, sc.max_model_len)
        self.output_processor = OutputProcessor(self.tokenizer)
        eos = list(mc.eos_token_ids)
        if self.tokenizer is not None:
            eos += [i for i in self.tokenizer.eos_token_ids if i not in eos]
        self.eos_token_ids = tuple(eos)
        self._next_id = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        logger.info("engine ready in %.1fs; %s", time.perf_counter() - t0,
                    self.memory_report.format())

    @classmethod
    def from_engine_args(cls, args: EngineArgs, *, progress: bool = False) -> LLMEngine:
        return cls(args.create_engine_config(), progress=progress)

    def _offload_weights(self) -> tuple[WeightOffloader | None, int]:
        gb = self.config.cpu_offload_gb
        self._offloaded_bytes = 0
        if gb <= 0:
            return None, 0
        if self.device.type != "cuda":
            logger.info("cpu_offload_gb=%s ignored: without a GPU the weights already live in "
                        "CPU memory", gb)
            return None, 0
        layers = self.model.model.layers  # type: ignore[union-attr]
        plan = plan_offload(layers, int(gb * 1024**3))
        if not plan.layer_indices:
            logger.warning("cpu_offload_gb=%s is smaller than one decoder layer; nothing "
                           "offloaded", gb)
            return None, 0
        self._offloaded_bytes = plan.offloaded_bytes
        offloader = WeightOffloader(layers, plan, self.device)
        torch.cuda.empty_cache()
        return offloader, plan.offloaded_bytes

    def _plan_memory(self) -> tuple[KVCacheLayout, MemoryReport]:
        """Size the KV cache: explicit blocks or bytes, else on CUDA
        gpu_memory_utilization x total minus what is in use and the measured activation
        peak of one step, else on CPU a default budget."""
        cc, sc, mc = self.config.cache_config, self.config.scheduler_config, self.config.model_config
        available = activation = total = None
        if self.device.type == "cuda":
            activation = profile_peak_activation_bytes(
                self.model, min(sc.max_num_batched_tokens, sc.max_model_len), sc.max_num_seqs,
                mc.vocab_size, self.device,
            )
            free, total = torch.cuda.mem_get_info(self.device)
            if cc.num_kv_blocks is None and cc.kv_cache_memory_bytes is None:
                available = int(total * cc.gpu_memory_utilization) - (total - free) - activation
        layout = plan_kv_cache(mc, cc, sc, self.dtype, available)
        cpu_blocks = num_swap_blocks(layout, cc, sc.preemption_mode)
        report = MemoryReport(
            device=str(self.device), total_bytes=total, weights_bytes=self.weights_bytes,
            activation_bytes=activation, kv_bytes=layout.total_bytes,
            num_blocks=layout.num_blocks, block_size=layout.block_size,
            max_model_len=sc.max_model_len, swap_bytes=cpu_blocks * layout.bytes_per_block,
            offloaded_bytes=self._offloaded_bytes,
        )
        return layout, report

    # ---- requests --------------------------------------------------------------------
    def new_request_id(self) -> str:
        self._next_id += 1
        return str(self._next_id - 1)

    def tokenize_prompt(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer; pass token ids instead of text")
            return prompt, self.tokenizer.encode(prompt)
        ids = list(prompt)
        vocab = self.config.model_config.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise RequestRejectedError(
                f"prompt token ids must be integers in [0, {vocab}); got {bad[:5]}"
            )
        text = self.tokenizer.decode(ids, skip_special_tokens=False) if self.tokenizer else None
        return text, ids

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
    ) -> None:
        text, ids = self.tokenize_prompt(prompt)
        self.scheduler.check_prompt_len(len(ids))
        if request_id in self.output_processor.parents:
            raise RequestRejectedError(f"request id {request_id!r} is already in use")
        arrival = time.monotonic() if arrival_time is None else arrival_time
        child_ids, child_params = self._children(request_id, params)
        self.output_processor.add_request(
            request_id, text, ids, params, child_ids, child_params, arrival
        )
        for cid, cparams in zip(child_ids, child_params):
            req = Request(cid, ids, cparams, self.eos_token_ids, arrival, priority)
            self.scheduler.add_request(req)
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
        if sched_out.new_requests:
            self.output_processor.mark_scheduled(
                [n.req_id for n in sched_out.new_requests], time.monotonic()
            )
        if sched_out.is_empty:
            self.runner.execute(sched_out)  # still drops finished request state
            return []
        result = self.runner.execute(sched_out)
        core_outputs = self.scheduler.update_from_output(sched_out, result)
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
