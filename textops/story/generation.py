"""Text generation from an ONNX causal LM exported with past key values (Optimum), with our own numpy loop.

Why our own loop rather than `ORTModelForCausalLM.generate()`: transformers' generate spends per-token
Python time on its stopping criteria, processors and cache objects; for a small model that overhead is
most of the cost (measured in stages/story_quantize.py, metrics `speed`). The loop below feeds one
token and the cache per step, and the sampling processors are small numpy functions that reproduce
transformers' (`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper`; tests/model/test_story_int8.py compares them), applied in generate()'s order.

Context policy (GPT-2 has learned absolute positions, so nothing may pass n_positions):
- a prompt longer than `context - 1` tokens keeps its LAST `context - 1` tokens (the recent text
  matters most for a continuation), so at least one new token always fits;
- prompt + new tokens never exceed `context`: generation then stops with finish_reason "context";
- a prompt starts after the eos token (GPT-2's document separator), where training saw every document
  start (story_tokenize's stream); an empty prompt is that eos alone. story_evaluate encodes the same way
  (`document_ids`), so the service continues a prompt as the evaluation report does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from textops.params import GenerationParams

REPLACEMENT = "\ufffd"  # what a byte-level decoder makes of an incomplete UTF-8 sequence


def document_ids(tokenizer, prompt: str, eos_token_id: int) -> list[int]:
    """A prompt's token ids as the start of a document: the eos separator, then the prompt's tokens."""
    return [eos_token_id] + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])


# ---------------------------------------------------------------- sampling processors (pure, one sequence)


def repetition_penalty(logits: np.ndarray, previous: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL's penalty as transformers applies it: seen tokens' logits divided (positive) or multiplied (negative)."""
    if penalty == 1.0 or len(previous) == 0:
        return logits
    out = logits.copy()
    seen = np.unique(previous)
    score = out[seen]
    out[seen] = np.where(score < 0, score * penalty, score / penalty)
    return out


def temperature(logits: np.ndarray, value: float) -> np.ndarray:
    return logits if value == 1.0 else logits / np.float32(value)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties with the k-th are kept, as in transformers); 0 switches it off."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: drop the least likely tokens whose total probability is at most 1 - p (keeps >= 1)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, kind="stable")  # ascending, as transformers sorts
    cumulative = np.cumsum(softmax(logits[order]))
    remove = cumulative <= (1 - p)
    remove[-1] = False
    out = logits.copy()
    out[order[remove]] = -np.inf
    return out


def next_token(logits: np.ndarray, previous: np.ndarray, setting: GenerationParams, rng: np.random.Generator) -> int:
    """One decoding step: the penalty always; temperature, top-k, top-p and a draw only when sampling."""
    logits = repetition_penalty(logits.astype(np.float32, copy=False), previous, setting.repetition_penalty)
    if not setting.do_sample:
        return int(np.argmax(logits))
    logits = top_p(top_k(temperature(logits, setting.temperature), setting.top_k), setting.top_p)
    probs = softmax(logits.astype(np.float64))
    # Inverse CDF: one uniform draw per token, so a seed fixes the whole sequence.
    return int(min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"), len(probs) - 1))


def text_pieces(decode: Callable[[list[int]], str], ids: Iterable[int]) -> Generator[str, None, tuple]:
    """Decoded text as tokens arrive, holding back a tail that is an incomplete UTF-8 character.

    A byte-level BPE token may end inside a multi-byte character; the decoder renders that as U+FFFD
    until the next token completes it. Only the tokens since the last piece are decoded (linear time):
    right for decoders that do not depend on position (byte-level BPE, and `Fuse` for the char kind).
    Returns (all ids, the id generator's return value).
    """
    seen: list[int] = []
    start = 0  # the first token not yet sent as text
    iterator = iter(ids)
    while True:
        try:
            seen.append(next(iterator))
        except StopIteration as stop:
            result = stop.value
            break
        pending = decode(seen[start:])
        if pending and not pending.endswith(REPLACEMENT):
            yield pending
            start = len(seen)
    tail = decode(seen[start:])
    if tail:  # bytes that never formed a character stay U+FFFD: sent at the end
        yield tail
    return seen, result


# ---------------------------------------------------------------- the ONNX generator


def _config_value(config: dict, *keys: str) -> int:
    for key in keys:
        if key in config:
            return int(config[key])
    raise ValueError(f"config.json has none of {keys}")


class OnnxGenerator:
    """Decoding over an ONNX causal LM exported with past key values (Optimum), with our own numpy loop."""

    def __init__(self, model_dir: Path | str, onnx_file: str = "model.onnx", threads: int = 1):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        path = model_dir / onnx_file
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: export the model first (stage story_quantize)")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.context = _config_value(config, "n_positions", "max_position_embeddings")
        self.eos_token_id = self.tokenizer.eos_token_id
        if self.eos_token_id is None:
            self.eos_token_id = _config_value(config, "eos_token_id")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle ORT threads spin by default and steal cores from the web server or a benchmark beside them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._past_names = [n for n in self._inputs if n.startswith("past_key_values.")]
        self._present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present")]
        if not self._past_names:
            raise ValueError(f"{path} has no past_key_values inputs: export with use_cache=True")
        heads = _config_value(config, "n_head", "num_attention_heads")
        width = _config_value(config, "n_embd", "hidden_size")
        dtype = np.float16 if "float16" in self._inputs[self._past_names[0]].type else np.float32
        self._empty_past = np.zeros((1, heads, 0, width // heads), dtype=dtype)

    # -- model calls

    def _run(self, ids: np.ndarray, start: int, past: list[np.ndarray] | None) -> tuple[np.ndarray, list]:
        """Logits [b, n, vocab] for ids [b, n] at positions start.., and the cache after them."""
        batch, n = ids.shape
        feed = {
            "input_ids": ids.astype(np.int64, copy=False),
            "attention_mask": np.ones((batch, start + n), dtype=np.int64),
        }
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(start, start + n, dtype=np.int64), (batch, n))
        empty = np.repeat(self._empty_past, batch, axis=0) if past is None else None
        for i, name in enumerate(self._past_names):
            feed[name] = empty if past is None else past[i]
        logits, *present = self.session.run(["logits", *self._present_names], feed)
        return logits, present

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Full-sequence logits [b, n, vocab] for token ids [b, n] (no cache): perplexity and parity checks."""
        if ids.shape[1] > self.context:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's context of {self.context}")
        return self._run(np.asarray(ids), 0, None)[0]

    # -- decoding

    def prompt_ids(self, prompt: str) -> list[int]:
        """eos and the prompt's tokens, cut to the last context - 1 (see the module docstring)."""
        return document_ids(self.tokenizer, prompt, self.eos_token_id)[-(self.context - 1) :]

    def _steps(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        setting: GenerationParams,
        seed: int | None,
        ignore_eos: bool,
    ) -> Generator[int, None, str]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        rng = np.random.default_rng(seed)
        sequence = self.prompt_ids(prompt) if isinstance(prompt, str) else list(prompt)[-(self.context - 1) :]
        if not sequence:
            raise ValueError("a prompt given as token ids needs at least one id")
        logits, past = self._run(np.array([sequence]), 0, None)
        for produced in range(1, max_new_tokens + 1):
            token = next_token(logits[0, -1], np.asarray(sequence), setting, rng)
            if token == self.eos_token_id and not ignore_eos:
                return "eos"
            sequence.append(token)
            yield token
            if produced == max_new_tokens:
                return "length"
            if len(sequence) >= self.context:
                return "context"
            logits, past = self._run(np.array([[token]]), len(sequence) - 1, past)
        return "length"

    def token_ids(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int,
        setting: GenerationParams,
        seed: int | None = None,
        ignore_eos: bool = False,
    ) -> Iterator[int]:
        """New token ids as produced (eos ends it and is not yielded). The prompt may also be token ids.
        ignore_eos: fixed-length runs for benchmarks and parity checks."""
        yield from self._steps(prompt, max_new_tokens, setting, seed, ignore_eos)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def stream(
        self, prompt: str, max_new_tokens: int, setting: GenerationParams, seed: int | None = None
    ) -> Iterator[str]:
        """Decoded text pieces as produced, never splitting a UTF-8 character."""
        yield from text_pieces(self._decode, self._steps(prompt, max_new_tokens, setting, seed, False))

    def generate(self, prompt: str, max_new_tokens: int, setting: GenerationParams, seed: int | None = None) -> dict:
        """{"text": the completion only, "new_tokens", "finish_reason": "length" | "eos" | "context",
        "prompt_tokens": tokens the model saw, "prompt_truncated": prompt tokens dropped to fit the context}."""
        ids = document_ids(self.tokenizer, prompt, self.eos_token_id)  # tokenized once; _steps keeps the tail
        pieces, (new, reason) = drain(text_pieces(self._decode, self._steps(ids, max_new_tokens, setting, seed, False)))
        seen = min(len(ids), self.context - 1)
        return {
            "text": "".join(pieces),
            "new_tokens": len(new),
            "finish_reason": reason,
            "prompt_tokens": seen,
            "prompt_truncated": len(ids) - seen,
        }


def drain(generator: Generator) -> tuple[list, object]:
    """Everything a generator yields, and what it returns."""
    items = []
    while True:
        try:
            items.append(next(generator))
        except StopIteration as stop:
            return items, stop.value
