"""Run by tests/distributed/test_torchrun.py under torchrun: every rank builds the engine;
rank 0 generates and prints the tokens as JSON, the other ranks serve it and exit."""

from __future__ import annotations

import json
import sys

from membound import LLM, SamplingParams


def main() -> None:
    folder = sys.argv[1]
    llm = LLM(folder, block_size=4, max_model_len=128, dtype="float32", kv_cache_memory_bytes=1 << 20,
              tensor_parallel_size=2)  # ranks > 0 never return from this
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([[5, 17, 42, 99, 7], [9, 8, 7, 6]], params, use_tqdm=False)
    print("TOKENS " + json.dumps([o.outputs[0].token_ids for o in outs]), flush=True)
    llm.shutdown()


if __name__ == "__main__":
    main()
