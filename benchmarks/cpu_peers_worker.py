"""One engine of ``cpu_peers.py``, kept loaded in its own process (its own Python: vLLM runs
from its venv). Reads JSON commands on stdin, answers one JSON line each on stdout:

    {"op": "batch1", "prompt": [ids], "output_len": n}  -> ttft_ms, tpot_ms (greedy, no EOS)
    {"op": "offline", "requests": [[[ids], n], ...]}     -> elapsed_s, output_tokens
    {"op": "quit"}

``llamacpp-server ARGS`` instead runs ``llama_cpp.server`` with llama.cpp's AMX path off,
``llamacpp-eog GGUF`` prints the GGUF's end-of-generation token ids (``cpu_peers_serve.py``),
``llamacpp-quantize IN OUT TYPE`` re-encodes a GGUF with llama.cpp's own quantizer (TYPE as
in its ``LLAMA_FTYPE_MOSTLY_<TYPE>``, e.g. Q4_1; ``cpu_peers.py --tinyllama``).

Every answer carries the process's peak RSS so far. Standalone on purpose: it imports only
the engine it runs (membound | vllm | llamacpp | transformers), named on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

Request = tuple[list[int], int]


class Membound:
    def __init__(self, a: argparse.Namespace) -> None:
        from membound.engine.engine_args import EngineArgs
        from membound.engine.llm_engine import LLMEngine
        from membound.sampling_params import SamplingParams

        self.params = SamplingParams
        self.engine = LLMEngine.from_engine_args(EngineArgs(
            model=a.model, dtype=a.dtype, quantization=a.quantization, max_model_len=a.max_len,
            kv_cache_dtype=a.kv_cache_dtype, max_num_seqs=64, skip_tokenizer_init=True))  # fmt: skip

    def add(self, prompt: list[int], n: int) -> None:
        p = self.params(temperature=0, max_tokens=n, ignore_eos=True)
        self.engine.add_request(self.engine.new_request_id(), prompt, p)

    def batch1(self, prompt: list[int], n: int) -> tuple[float, list[float]]:
        self.add(prompt, n)
        t0, stamps = time.perf_counter(), []
        while self.engine.has_unfinished_requests():
            self.engine.step()
            stamps.append(time.perf_counter())
        return t0, stamps

    def offline(self, reqs: list[Request]) -> int:
        for p, n in reqs:
            self.add(p, n)
        tokens = 0
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                tokens += len(out.outputs[0].token_ids) if out.finished else 0
        return tokens


class Vllm:
    def __init__(self, a: argparse.Namespace) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # steps in this process
        from vllm import LLM, SamplingParams

        self.params = SamplingParams
        self.llm = LLM(model=a.model, dtype=a.dtype, max_model_len=a.max_len, max_num_seqs=64,
                       skip_tokenizer_init=True, seed=0)  # fmt: skip
        self.engine = self.llm.llm_engine

    def sp(self, n: int) -> Any:
        return self.params(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)

    def batch1(self, prompt: list[int], n: int) -> tuple[float, list[float]]:
        self.engine.add_request(f"b1-{time.monotonic_ns()}",
                                {"prompt_token_ids": prompt}, self.sp(n))  # fmt: skip
        t0, stamps, seen = time.perf_counter(), [], 0
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                got = len(out.outputs[0].token_ids)
                stamps.extend([time.perf_counter()] * (got - seen))
                seen = got
        return t0, stamps

    def offline(self, reqs: list[Request]) -> int:
        prompts = [{"prompt_token_ids": p} for p, _ in reqs]
        outs = self.llm.generate(prompts, [self.sp(n) for _, n in reqs], use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)


def disable_llamacpp_extra_bufts() -> None:
    """Turn off llama.cpp's extra buffer types (its AMX and repacked-weight matmuls) for every
    model loaded after this call: on a CPU whose CPUID reports AMX but whose OS/VM does not
    enable the tile state (this firecracker VM), ggml's AMX matmul faults at ``ldtilecfg`` on
    the first batch of more than one token. The plain CPU backend (AVX-512 / VNNI dot
    products) runs. llama-cpp-python exposes no setting for it, so the default model
    parameters that ``Llama`` starts from are wrapped."""
    import llama_cpp

    defaults = llama_cpp.llama_model_default_params

    def params_without_extra_bufts() -> object:
        p = defaults()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama.llama_cpp.llama_model_default_params = params_without_extra_bufts


def llamacpp_server(argv: list[str]) -> None:
    """``llama_cpp.server`` (its own command line, ``argv``) with the extra buffer types off
    (see ``disable_llamacpp_extra_bufts``): what ``cpu_peers_serve.py`` starts."""
    disable_llamacpp_extra_bufts()
    from llama_cpp.server.__main__ import main as server_main

    sys.argv = ["llama_cpp.server", *argv]
    server_main()


def llamacpp_eog_ids(gguf: str) -> list[int]:
    """The ids llama.cpp ends a generation at (``llama_vocab_is_eog``: EOS, EOT, <|im_end|>
    and the like), from the GGUF's vocabulary alone."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    return [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]


def llamacpp_quantize(src: str, dst: str, kind: str) -> None:
    """``llama-quantize src dst kind`` through the bindings (the wheel ships no binary)."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise SystemExit(f"llama.cpp has no file type MOSTLY_{kind.upper()}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = len(os.sched_getaffinity(0))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}, {kind}) failed with {rc}")


class LlamaCpp:
    def __init__(self, a: argparse.Namespace) -> None:
        from llama_cpp import Llama

        disable_llamacpp_extra_bufts()
        self.llm = Llama(model_path=a.model, n_ctx=a.max_len, n_threads=a.threads,
                         n_threads_batch=a.threads, n_batch=512, verbose=False, seed=0)  # fmt: skip
        self.eos = self.llm.token_eos()

    def batch1(self, prompt: list[int], n: int) -> tuple[float, list[float]]:
        """Greedy, token by token (``generate`` yields each sampled id; streaming completions
        merge tokens into text chunks), EOS suppressed like the other engines' ignore_eos."""
        import numpy as np

        def no_eos(_ids: object, scores: np.ndarray) -> np.ndarray:
            scores[self.eos] = -np.inf
            return scores

        self.llm.reset()
        t0, stamps = time.perf_counter(), []
        for _ in self.llm.generate(prompt, temp=0.0, reset=True, logits_processor=[no_eos]):
            stamps.append(time.perf_counter())
            if len(stamps) == n:
                break
        return t0, stamps

    def offline(self, reqs: list[Request]) -> int:
        raise NotImplementedError("llama-cpp-python's Llama serves one sequence at a time")


class Transformers:
    def __init__(self, a: argparse.Namespace) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = {"auto": torch.float32}.get(a.dtype) or getattr(torch, a.dtype)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()

    def batch1(self, prompt: list[int], n: int) -> tuple[float, list[float]]:
        torch = self.torch
        from transformers import DynamicCache

        ids = torch.tensor([prompt])
        cache, stamps = DynamicCache(), []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(n):
                logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits
                ids = logits[:, -1:].argmax(-1)
                stamps.append(time.perf_counter())
        return t0, stamps

    def offline(self, reqs: list[Request]) -> int:
        raise NotImplementedError("transformers has no continuous batching")


ENGINES = {"membound": Membound, "vllm": Vllm, "llamacpp": LlamaCpp,
           "transformers": Transformers}  # fmt: skip


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM, which belongs to the address space (reset by
    exec). ``ru_maxrss`` is not: Linux carries it over fork and exec, so a worker started by a
    parent that once held more (``cpu_peers.py --tinyllama`` builds the checkpoint in its own
    memory) would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(engine: Any) -> None:
    for line in sys.stdin:
        cmd = json.loads(line)
        ans: dict[str, Any] = {}
        try:
            if cmd["op"] == "quit":
                return
            if cmd["op"] == "batch1":
                t0, stamps = engine.batch1(cmd["prompt"], cmd["output_len"])
                gaps = [b - a for a, b in zip(stamps, stamps[1:])]
                ans = {"ttft_ms": (stamps[0] - t0) * 1e3, "tokens": len(stamps),
                       "tpot_ms": sum(gaps) / max(len(gaps), 1) * 1e3}  # fmt: skip
            elif cmd["op"] == "offline":
                t0 = time.perf_counter()
                tokens = engine.offline([(p, n) for p, n in cmd["requests"]])
                ans = {"elapsed_s": time.perf_counter() - t0, "output_tokens": tokens}
        except NotImplementedError as e:
            ans = {"unsupported": str(e)}
        ans["peak_rss_mib"] = peak_rss_mib()
        print("@@" + json.dumps(ans), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["llamacpp-server"]:  # the server's own options follow
        return llamacpp_server(sys.argv[2:])
    if sys.argv[1:2] == ["llamacpp-eog"]:  # GGUF path follows; prints the ids as JSON
        return print(json.dumps(llamacpp_eog_ids(sys.argv[2])))
    if sys.argv[1:2] == ["llamacpp-quantize"]:  # IN OUT TYPE follow
        return llamacpp_quantize(*sys.argv[2:5])
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--kv-cache-dtype", default="auto")  # membound only
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.engine != "llamacpp":  # its venv has no torch
        import torch

        torch.set_num_threads(a.threads)
    t = time.perf_counter()
    engine = ENGINES[a.engine](a)
    print("@@" + json.dumps({"ready": True, "load_s": time.perf_counter() - t,
                             "peak_rss_mib": peak_rss_mib()}), flush=True)  # fmt: skip
    serve(engine)


if __name__ == "__main__":
    main()
