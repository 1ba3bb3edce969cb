"""Train the byte-level BPE tokenizer on the training split and tokenise both splits.

Vocabulary: 8192 entries = 3 special tokens (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2)
+ the 256 byte symbols + 7933 merges, learned on train.txt only (one document at a time, so no
merge spans two documents). GPT-2 pre-tokenisation regex, no prefix space, lossless.

Writes ``tokenizer.json`` plus ``train.bin`` / ``heldout.bin`` (uint16 token ids of
``<split>.txt`` encoded whole; the special tokens in the text map to their ids).

    python tools/default_model/train_tokenizer.py [--workdir build/default_model]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import DEFAULT_WORKDIR, ENDOFTEXT, SPECIAL_TOKENS, VOCAB_SIZE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def train(train_text: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    docs = [d for d in train_text.split(ENDOFTEXT) if d]
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    return tok


def encode_file(tok: Tokenizer, path: str) -> np.ndarray:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    ids = np.asarray(tok.encode(text).ids, dtype=np.uint16)
    assert tok.decode(ids.tolist(), skip_special_tokens=False) == text, (
        f"{path} does not round-trip"
    )
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    with open(os.path.join(args.workdir, "train.txt"), encoding="utf-8", newline="") as f:
        tok = train(f.read())
    tok.save(os.path.join(args.workdir, "tokenizer.json"))
    for split in ("train", "heldout"):
        ids = encode_file(tok, os.path.join(args.workdir, f"{split}.txt"))
        ids.tofile(os.path.join(args.workdir, f"{split}.bin"))
        print(f"{split}: {ids.size:,} tokens")


if __name__ == "__main__":
    main()
