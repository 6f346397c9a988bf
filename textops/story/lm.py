"""The story model: building it, the token blocks it trains and is measured on, perplexity, and
the generation settings and text statistics that evaluate reports.

Perplexity everywhere (evaluate in PyTorch, story_quantize in ONNX) is exp of the mean next-token
cross-entropy over every position of every block of `eval_blocks(eval.npy, context)`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from textops.errors import PipelineError
from textops.params import GenerationParams, StoryModelParams


def passive_thread_wait() -> None:
    """Call before torch is imported. OpenMP threads spin while they wait for work: with another busy
    process on one of 2 cores, a 2-thread training step of the Shakespeare model took 2.5 s instead of
    65 ms (1 thread); waiting passively, 75 ms. An OMP_WAIT_POLICY the user set wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def eval_blocks(tokens: np.ndarray, context: int) -> np.ndarray:
    """Non-overlapping windows of `context` tokens, [n, context]; the last partial window is dropped."""
    n = len(tokens) // context
    if n == 0:
        raise PipelineError(
            f"{len(tokens)} eval tokens are fewer than one block of story.model.context={context}; "
            f"raise story.prepare.eval_fraction or lower the context"
        )
    return np.asarray(tokens[: n * context], dtype=np.int64).reshape(n, context)


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed cross-entropy of predicting ids[:, 1:] from logits[:, :-1] (float64 log-softmax)."""
    z = logits[:, :-1].astype(np.float64)
    z -= z.max(-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(-1))
    picked = np.take_along_axis(z, ids[:, 1:, None], -1)[..., 0]
    return float((log_norm - picked).sum())


def mean_loss(logits_of: Callable[[np.ndarray], np.ndarray], blocks: np.ndarray, batch_size: int) -> float:
    """Mean next-token loss over all blocks; `logits_of` maps int64 ids [b, n] to logits [b, n, vocab]."""
    total = sum(
        next_token_nll(logits_of(blocks[i : i + batch_size]), blocks[i : i + batch_size])
        for i in range(0, len(blocks), batch_size)
    )
    return total / (blocks.shape[0] * (blocks.shape[1] - 1))


def perplexity_of(mean_loss: float) -> float:
    return math.exp(mean_loss) if mean_loss < 700 else float("inf")  # exp overflows past ~709


def torch_logits(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def logits_of(ids: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(ids)
        with torch.inference_mode():  # a full mask: eos (= pad) inside a block is text, not padding
            return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()

    return logits_of


def build_model(m: StoryModelParams, vocab_size: int, tokenizer):
    """GPT-2 from scratch (m.base null) or story.model.base, with n_positions = m.context."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if m.base is None:
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=m.context,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            n_head=m.n_head,
            resid_pdrop=m.dropout,
            embd_pdrop=m.dropout,
            attn_pdrop=m.dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)
    return pretrained_model(m, vocab_size)


def pretrained_model(m: StoryModelParams, vocab_size: int):
    from transformers import AutoModelForCausalLM

    from textops.modeling import resolve_model

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(m.base))
    except OSError as error:
        raise PipelineError(
            f"story.model.base '{m.base}': could not load it ({error}). Offline? Use a local "
            f"folder, or null to train from scratch."
        ) from None
    if model.config.model_type != "gpt2":
        raise PipelineError(f"story.model.base '{m.base}' is a {model.config.model_type}, not a GPT-2 model")
    if m.context > model.config.n_positions:
        raise PipelineError(f"story.model.context={m.context} exceeds {m.base}'s {model.config.n_positions} positions")
    # Keep only the positions training uses, so the saved config states the context the model knows.
    wpe = model.transformer.wpe
    wpe.weight.data = wpe.weight.data[: m.context].clone()
    wpe.num_embeddings = model.config.n_positions = m.context
    if vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)
    model.config.pad_token_id = model.config.eos_token_id
    return model


def generation_config(g: GenerationParams, max_new_tokens: int, eos_id: int):
    """A GenerationConfig for one strategy; top_k 0 is set explicitly (transformers' default is 50)."""
    from transformers import GenerationConfig

    common = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "repetition_penalty": g.repetition_penalty,
    }
    if not g.do_sample:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, **common)


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, pooled over texts (Li et al. 2016's distinct-n)."""
    grams = [g for t in texts for g in ngrams(t.split(), n)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def repetition_rate(texts: list[str], n: int = 3) -> float:
    """Share of word n-grams that already occurred earlier in the same text (loops score high)."""
    repeated = total = 0
    for text in texts:
        seen: set[tuple[str, ...]] = set()
        for gram in ngrams(text.split(), n):
            repeated += gram in seen
            total += 1
            seen.add(gram)
    return round(repeated / total, 4) if total else 0.0
