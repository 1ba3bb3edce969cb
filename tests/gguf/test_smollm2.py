"""SmolLM2-135M-Instruct (a real Q4_1 GGUF) against transformers' GGUF loader, the oracle:
the same token ids on a text corpus, and, loaded dense in fp32, the same greedy tokens and
logprobs over chat-formatted, non-ASCII and long prompts. The quantized-in-memory path (Q4_1
int4, the Q8_0 embedding int8 and shared by the tied head) is checked for memory (whole-model
weights within 1.3x of the file's tensor bytes) and for still answering; its agreement and
perplexity figures come from benchmarks/gguf_quality.py, its memory from gguf_memory.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from membound import LLM, SamplingParams
from membound.engine.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

NEW_TOKENS = 6
ROOT = Path(__file__).resolve().parents[2]


def _corpus() -> list[str]:
    docs = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))[:6]]
    return docs + [
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "Grüße aus Köln — 東京は日本の首都です。 🚀🔥 naïve café, ½ €5 ™",
        "  leading spaces\n\n\ttabs  and   runs   \r\n",
        "don't I'll we've THEY'RE 1234567890",
        "<repo_name>x<file_sep>y<|endoftext|><jupyter_code>",
        "",
    ]


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_gguf: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name
    )


@pytest.fixture(scope="module")
def ours(smollm2_gguf: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(smollm2_gguf)


def test_tokenizer_matches_transformers(ours: Tokenizer, hf_tokenizer: Any) -> None:
    for text in _corpus():
        ids = ours.encode(text)
        assert ids == hf_tokenizer.encode(text), text[:60]
        assert ours.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids)
        assert ours.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert ours.bos_token_id == hf_tokenizer.bos_token_id == 1
    assert ours.eos_token_ids == (hf_tokenizer.eos_token_id,) == (2,)  # <|im_end|>


def test_chat_template_matches_transformers(ours: Tokenizer, hf_tokenizer: Any) -> None:
    conv = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "¿Qué tal?"},
    ]
    text = hf_tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(conv) == text
    assert ours.encode_chat(conv) == hf_tokenizer.encode(text)


def _prompts(tok: Tokenizer) -> list[list[int]]:
    chat = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    long = tok.encode((ROOT / "README.md").read_text(encoding="utf-8"))[:300]
    return [chat, tok.encode("Grüße aus Köln! 東京は"), long]


def test_dense_fp32_matches_transformers(smollm2_gguf: Path, ours: Tokenizer) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    llm = LLM(
        str(smollm2_gguf),
        load_format="gguf_dequantized",
        dtype="float32",
        max_model_len=1024,
        num_kv_blocks=128,
    )
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=3)
    prompts = _prompts(ours)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                pad_token_id=2,
                eos_token_id=None,
            )
        got = out.outputs[0]
        assert got.token_ids == ref.sequences[0, len(prompt) :].tolist()
        for step, logits in zip(got.logprobs, ref.logits):
            lp = torch.log_softmax(logits[0].float(), -1)
            for token, value in step.items():
                assert abs(value - float(lp[token])) < 2e-3, (token, value, float(lp[token]))


def test_quantized_in_memory_answers_within_memory_budget(smollm2_gguf: Path) -> None:
    """Q4_1 linears stay int4, the Q8_0 token embedding stays int8 and the tied head reads
    it (no second copy): the engine's whole-model weight bytes stay within 1.3x of the
    file's tensor bytes (benchmarks/gguf_memory.py records the figures)."""
    from membound.gguf.reader import GGUFFile

    llm = LLM(str(smollm2_gguf), dtype="float32", max_model_len=256, num_kv_blocks=32)
    model = llm.llm_engine.executor.driver.model
    linears = [
        m for m in model.modules() if hasattr(m, "quant_method") and m.quant_method.name == "gguf"
    ]
    assert len(linears) == 30 * 4  # qkv, o, gate_up, down of every layer stay int4
    held = sum(p.numel() * p.element_size() for m in linears for p in m.parameters())
    q4_1 = sum(t.n_bytes for t in GGUFFile(smollm2_gguf).tensors.values() if t.ggml_type == "Q4_1")
    assert held <= 1.3 * q4_1, (held, q4_1)
    emb = model.model.embed_tokens
    assert emb.weight.dtype == torch.int8 and model.lm_head.weight is emb.weight
    assert model.lm_head.packed_weight is None
    whole = llm.llm_engine.info.weights_bytes
    assert whole <= 1.3 * GGUFFile(smollm2_gguf).tensor_bytes(), whole
    tok = llm.get_tokenizer()
    assert tok is not None
    prompt = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    prompt += tok.encode("The capital of France is")  # one step: the int4 CPU path is slow
    out = llm.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False
    )[0].outputs[0]
    assert out.text == " Paris"
