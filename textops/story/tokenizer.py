"""Tokenizers for the story task, all saved as a PreTrainedTokenizerFast that decodes back to the text.

kind char: one token per character seen in train, plus <|endoftext|> and <|unk|> (for eval characters
never seen in train). kind bpe: byte-level BPE trained on train (any text encodes; no unknown token).
kind base: story.model.base's own tokenizer, with pad = eos (GPT-2 has no pad token).
char and bpe tokenizers put <|endoftext|> before a text when asked for special tokens (the default),
as the model saw it at every document start: `tokenizer(prompt)` conditions a generation on "a new
story begins". Token streams for training are encoded without it and joined with it instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from textops.errors import PipelineError
from textops.params import StoryParams

EOS = "<|endoftext|>"
UNK = "<|unk|>"
INPUT_NAMES = ["input_ids", "attention_mask"]  # no token_type_ids: ORT generate refuses them (STACK_NOTES)


def wrap(backend, unk: str | None = None):
    """A transformers fast tokenizer around a `tokenizers` one; eos/bos/pad are <|endoftext|>."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    eos_id = backend.token_to_id(EOS)
    backend.post_processor = TemplateProcessing(
        single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, eos_id)]
    )
    # clean_up_tokenization_spaces would turn "a ." into "a." on decode: text must come back exactly.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=unk,
        model_input_names=INPUT_NAMES,
        clean_up_tokenization_spaces=False,
    )


def char_tokenizer(texts: Iterable[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set().union(*map(set, texts)))
    vocab = {c: i for i, c in enumerate(chars)} | {EOS: len(chars), UNK: len(chars) + 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char, newlines too
    backend.decoder = decoders.Fuse()  # join without spaces
    backend.add_special_tokens([EOS, UNK])
    return wrap(backend, UNK)


def bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int):
    """Byte-level BPE trained on `texts` (textops.tokenizers.train_byte_level_bpe, shared with
    sentiment_tokenize's report), with <|endoftext|> as its one special token."""
    from textops.tokenizers import train_byte_level_bpe

    return wrap(train_byte_level_bpe(texts, vocab_size, min_frequency, special_tokens=[EOS]))


def base_tokenizer(base: str):
    from textops.modeling import load_tokenizer

    tokenizer = load_tokenizer(base)
    if tokenizer.eos_token is None:
        raise PipelineError(
            f"story.model.base '{base}': its tokenizer has no eos token to separate documents; "
            f"use story.tokenize.kind bpe or char"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_input_names = INPUT_NAMES
    return tokenizer


def build_tokenizer(story: StoryParams, train_texts: list[str]):
    t = story.tokenize
    if t.kind == "char":
        return char_tokenizer(train_texts)
    if t.kind == "bpe":
        return bpe_tokenizer(train_texts, t.vocab_size, t.min_frequency)
    return base_tokenizer(story.model.base)


def encode_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """One int32 stream: the documents' tokens with the eos id between documents."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    stream = [tok for i, doc in enumerate(ids) for tok in (eos + doc if i else doc)]
    return np.asarray(stream, dtype=np.int32)


def roundtrip_failures(tokenizer, texts: list[str]) -> int:
    """Texts that do not decode back to themselves (char: those holding characters unseen in train)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sum(tokenizer.decode(i) != t for i, t in zip(ids, texts))
