"""Tokenizers side by side, for both tasks' tokenize reports, and a pure-Python reference of byte-level BPE.

`compare` measures each tokenizer on the same sentences (and on an eval split): its pieces, tokens, tokens
per word and unknown tokens; `render_table` writes them as ONE markdown table, a row per sentence and
tokenizer. story_tokenize and sentiment_tokenize both call these, each with the tokenizers it can load from
its own declared inputs (their docstrings say which). `train_byte_level_bpe` trains the byte-level BPE both
use: story_tokenize's model tokenizer (story.tokenize.kind bpe) and, for its report only, sentiment_tokenize's
on the sentiment train split.

`ReferenceBPE` re-implements the encoding of a trained byte-level BPE (GPT-2's algorithm: the GPT-2
pre-tokenization regex, bytes mapped to printable characters, then the classic merge loop by merge rank)
from the tokenizer.json that `tokenizers` saved. It is slow on purpose: bench/training/tokenizer_speed.py
times it against the Rust implementation, and a test checks that both give the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from textops.errors import PipelineError

# How whitespace inside a piece is shown, so that " are" and "are" differ in a report.
VISIBLE = str.maketrans({" ": "␣", "\n": "⏎", "\t": "⇥"})


def words(text: str) -> int:
    return len(text.split())


def is_wordpiece(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordPiece"


def algorithm(tokenizer) -> str:
    """What a fast tokenizer is, for a report: WordPiece, byte-level BPE, BPE, Unigram, WordLevel."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    model = type(backend.model).__name__
    pre = backend.pre_tokenizer
    byte_level = pre is not None and "ByteLevel" in repr(pre)
    return f"byte-level {model}" if byte_level and model == "BPE" else model


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pieces(tokenizer, text: str) -> list[str]:
    """How `text` splits. WordPiece: its tokens (`transform`, `##ing`; lower-cased if the model lower-cases).
    Others (byte-level BPE, char, a base model's): each token decoded alone, whitespace made visible
    (`␣are`); a byte-level token holding part of a character decodes to `�`."""
    return labels(tokenizer, ids_of(tokenizer, text))


def labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token of `ids` as `pieces` shows it (also the tick labels of attention maps)."""
    if is_wordpiece(tokenizer):
        return tokenizer.convert_ids_to_tokens(list(ids))
    return [tokenizer.decode([i]).translate(VISIBLE) for i in ids]


def unknown(tokenizer, ids: Sequence[int]) -> int:
    """Tokens that are the unknown token ([UNK], <|unk|>); a byte-level BPE has none."""
    unk = tokenizer.unk_token_id
    return 0 if unk is None else sum(i == unk for i in ids)


def measure(tokenizer, texts: list[str]) -> dict:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokens = sum(map(len, encoded))
    n_words = sum(map(words, texts))
    return {
        "words": n_words,
        "tokens": tokens,
        "tokens_per_word": round(tokens / max(1, n_words), 3),
        "unknown": sum(unknown(tokenizer, ids) for ids in encoded),
    }


def compare(tokenizers: dict[str, object], sentences: list[str], eval_texts: list[str]) -> list[dict]:
    """One row per (sentence, tokenizer), then one per tokenizer on the whole eval split (no pieces).
    `tokenizers` maps the name shown in the report to a loaded tokenizer."""
    if not tokenizers:
        raise PipelineError("no tokenizer to compare")
    rows = [
        {"text": s, "tokenizer": name, **measure(tok, [s]), "pieces": pieces(tok, s)}
        for s in sentences
        for name, tok in tokenizers.items()
    ]
    if eval_texts:
        rows += [
            {"text": f"(eval split, {len(eval_texts)} texts)", "tokenizer": name, **measure(tok, eval_texts)}
            for name, tok in tokenizers.items()
        ]
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[dict]) -> list[str]:
    """Markdown lines of one table; pieces are joined by ` | ` inside a code span (pipes escaped for the table)."""
    lines = ["| text | tokenizer | words | tokens | tokens/word | unknown | pieces |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        shown = f"`{_cell(' | '.join(r['pieces']))}`" if r.get("pieces") is not None else "-"
        lines.append(
            f"| {_cell(r['text'])} | {r['tokenizer']} | {r['words']} | {r['tokens']} | {r['tokens_per_word']} | "
            f"{r['unknown']} | {shown} |"
        )
    return lines


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, special_tokens: Sequence[str] = ()):
    """A `tokenizers` byte-level BPE (GPT-2's: the ByteLevel pre-tokenizer with its regex, no prefix space, all
    256 bytes in the alphabet, so any text encodes and nothing is unknown) trained on `texts`; returns the
    `tokenizers.Tokenizer`. story.tokenize.kind bpe wraps it as the story model's tokenizer
    (textops.story.tokenizer); sentiment_tokenize trains one on its own train split for its report only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # a prefix space would not decode away
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def fast(backend):
    """A transformers fast tokenizer around a `tokenizers` one, with no special tokens (for a report's
    comparison; `compare` encodes without them). Decodes back exactly (no clean-up of spaces)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def try_load(name: str) -> tuple[object | None, str]:
    """A model's tokenizer (folder, packaged name or Hub id) and '', or None and why it could not be loaded:
    a comparison is a report, not a reason to stop a stage."""
    from textops.modeling import load_tokenizer

    try:
        return load_tokenizer(name), ""
    except (PipelineError, OSError, ValueError) as error:
        return None, str(error)


# ------------------------------------------------------------------ the reference byte-level BPE

# GPT-2's pre-tokenization (openai/gpt-2 encoder.py), as `tokenizers`' ByteLevel pre-tokenizer with use_regex.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (a space becomes `Ġ`)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


class ReferenceBPE:
    """Byte-level BPE encode and decode in plain Python, from a `tokenizers` tokenizer.json (model type BPE,
    ByteLevel pre-tokenizer). Special tokens are not matched in the text: encode plain text only."""

    def __init__(self, tokenizer_json: Path | str):
        import regex

        path = Path(tokenizer_json)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise PipelineError(f"{path}: no tokenizer.json (pass story_tokenize's tokenizer folder)")
        spec = json.loads(path.read_text(encoding="utf-8"))
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
            raise PipelineError(
                f"{path}: not a byte-level BPE (model {model.get('type')}, pre-tokenizer {pre.get('type')}); "
                f"the reference covers story.tokenize.kind bpe only"
            )
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise PipelineError(f"{path}: ByteLevel with add_prefix_space or without the regex is not covered")
        self.vocab: dict[str, int] = model["vocab"]
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: dict[str, list[str]] = {}

    def bpe(self, word: str) -> list[str]:
        """The classic loop: merge the adjacent pair of lowest rank, everywhere it occurs, until none is left."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self.pattern.findall(text):
            mapped = "".join(self.byte_char[b] for b in chunk.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = "".join(self.id_to_token[i] for i in ids)
        return bytes(self.char_byte[c] for c in chars).decode("utf-8", errors="replace")
