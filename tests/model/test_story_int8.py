"""The story generator: ONNX export with KV cache and INT8 against PyTorch, our decoding loop and its sampling
processors against transformers', streaming, seeds and the context policy, on a tiny random GPT-2."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import ROOT, fit_tiny_lm
from textops.params import GenerationParams, for_stage, parse_params
from textops.story import generation as G
from textops.tasks.story import int8_problems

CONTEXT = 32
CORPUS = [
    "Once upon a time there was a little dog named Max.",
    "Lily went to the park. She saw a big tree!",
    "café, naïve — “quoted” 日本語 🙂",
]
GREEDY = GenerationParams()
PROMPTS = ["Once upon a time", "Lily went", "日本語 🙂 café"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """model/ (PyTorch, tokenizer), fp32/ and int8/ (ONNX with past key values) of a 2-layer GPT-2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from stages.story_quantize import export, quantize

    root = tmp_path_factory.mktemp("story-int8")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS * 4,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.save_pretrained(root / "model")
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=CONTEXT,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    fit_tiny_lm(model, tok, CORPUS, CONTEXT, steps=40, stride=8)
    model.save_pretrained(root / "model")
    export(root / "model", root / "fp32")
    config_name, _ = quantize(root / "model", root / "fp32", root / "int8", per_channel=True, exclude=[])
    return {
        "root": root,
        "model": root / "model",
        "fp32": root / "fp32",
        "int8": root / "int8",
        "config_name": config_name,
    }


@pytest.fixture(scope="module")
def torch_model(built):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(built["model"]).eval()


@pytest.fixture(scope="module")
def fp32(built):
    return G.OnnxGenerator(built["fp32"])


@pytest.fixture(scope="module")
def int8(built):
    return G.OnnxGenerator(built["int8"], "model_quantized.onnx")


def torch_generate(model, ids: list[int], n: int, **kw) -> list[int]:
    import torch

    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, pad_token_id=0, **kw)
    return out[0, len(ids) :].tolist()


# ---------------------------------------------------------------- export and parity


def test_export_has_a_kv_cache_and_int8_is_smaller(built, fp32):
    names = {i.name for i in fp32.session.get_inputs()}
    assert "past_key_values.0.key" in names and "past_key_values.1.value" in names
    assert fp32.context == CONTEXT and fp32.eos_token_id == fp32.tokenizer.eos_token_id
    fp32_size = (built["fp32"] / "model.onnx").stat().st_size
    assert (
        built["int8"] / "model_quantized.onnx"
    ).stat().st_size < 0.8 * fp32_size  # graph overhead dominates a model this small
    assert (built["int8"] / "tokenizer.json").is_file() and (built["int8"] / "config.json").is_file()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_onnx_fp32_greedy_equals_pytorch_generate(torch_model, fp32, penalty):
    setting = GenerationParams(repetition_penalty=penalty)
    for prompt in PROMPTS:
        ids = fp32.prompt_ids(prompt)
        n = CONTEXT - len(ids)  # up to the context: PyTorch would index past its position table
        # past eos (eos_token_id=None): the full length, so parity is checked on every position
        expected = torch_generate(torch_model, ids, n, do_sample=False, eos_token_id=None, repetition_penalty=penalty)
        ours = list(fp32.token_ids(prompt, n, setting, ignore_eos=True))
        assert ours == expected, prompt
        assert len(set(ours)) > 3  # a real continuation, not one token repeated
        # stopping at eos, as both do by default (transformers keeps the eos token, we do not)
        stopped = torch_generate(torch_model, ids, n, do_sample=False, repetition_penalty=penalty)
        assert list(fp32.token_ids(prompt, n, setting)) == [t for t in stopped if t != fp32.eos_token_id]


def test_full_sequence_logits_match_pytorch(torch_model, fp32):
    import torch

    ids = np.random.default_rng(0).integers(0, len(fp32.tokenizer), (3, CONTEXT))
    expected = torch_model(torch.from_numpy(ids)).logits.detach().numpy()
    assert np.abs(fp32.logits(ids) - expected).max() < 1e-4
    with pytest.raises(ValueError, match="exceed the model's context"):
        fp32.logits(np.zeros((1, CONTEXT + 1), dtype=np.int64))


def test_int8_stays_close_to_fp32(fp32, int8):
    from textops.story import lm

    blocks = np.random.default_rng(1).integers(0, len(fp32.tokenizer), (8, CONTEXT))
    ppl = {name: lm.perplexity_of(lm.mean_loss(g.logits, blocks, 4)) for name, g in (("fp32", fp32), ("int8", int8))}
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.03, ppl
    # teacher-forced: INT8's argmax along FP32's own greedy continuation
    ids = fp32.prompt_ids(PROMPTS[0])
    cont = list(fp32.token_ids(ids, 16, GREEDY, ignore_eos=True))
    picks = int8.logits(np.array([ids + cont]))[0, len(ids) - 1 : -1].argmax(-1)
    assert (picks == np.array(cont)).mean() >= 0.8


# ---------------------------------------------------------------- sampling processors against transformers'


def test_processors_equal_transformers_logits_processors():
    import torch
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = (rng.standard_normal(400) * 3).astype(np.float32)
        previous = rng.integers(0, 400, 25)
        scores, ids = torch.tensor(logits)[None], torch.tensor(previous)[None]
        pairs = [
            (G.repetition_penalty(logits, previous, 1.3), RepetitionPenaltyLogitsProcessor(1.3)),
            (G.temperature(logits, 0.7), TemperatureLogitsWarper(0.7)),
            (G.top_k(logits, 40), TopKLogitsWarper(40)),
            (G.top_p(logits, 0.9), TopPLogitsWarper(0.9)),
            (G.top_p(logits, 0.05), TopPLogitsWarper(0.05)),
            (G.top_p(G.top_k(logits, 10), 0.5), None),
        ]
        for ours, theirs in pairs[:-1]:
            assert np.array_equal(ours, theirs(ids, scores.clone())[0].numpy()), theirs
        chained = TopPLogitsWarper(0.5)(ids, TopKLogitsWarper(10)(ids, scores.clone()))
        assert np.array_equal(pairs[-1][0], chained[0].numpy())


def test_switched_off_filters_change_nothing():
    logits = np.random.default_rng(2).standard_normal(50).astype(np.float32)
    assert np.array_equal(G.top_k(logits, 0), logits) and np.array_equal(G.top_p(logits, 1.0), logits)
    assert np.array_equal(G.repetition_penalty(logits, np.array([1, 2]), 1.0), logits)


def test_sampling_draws_follow_the_distribution():
    """A sampled token's frequency matches its softmax probability (inverse-CDF draw is unbiased)."""
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9], dtype=np.float32))
    rng = np.random.default_rng(0)
    setting = GenerationParams(do_sample=True)
    draws = (
        np.bincount([G.next_token(logits, np.array([], dtype=int), setting, rng) for _ in range(4000)], minlength=4)
        / 4000
    )
    assert np.abs(draws - [0.5, 0.3, 0.2, 0.0]).max() < 0.03
    top1 = GenerationParams(do_sample=True, top_k=1)
    assert all(G.next_token(logits, np.array([0]), top1, rng) == 0 for _ in range(20))


# ---------------------------------------------------------------- decoding loop behaviour


def test_seed_makes_sampling_reproducible(fp32):
    setting = GenerationParams(do_sample=True, temperature=1.5, top_p=0.95)
    first = list(fp32.token_ids("Once", 15, setting, seed=7))
    assert first == list(fp32.token_ids("Once", 15, setting, seed=7))
    others = {tuple(fp32.token_ids("Once", 15, setting, seed=s)) for s in range(1, 6)}
    assert len(others | {tuple(first)}) > 1


def test_text_pieces_never_split_a_character(fp32):
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    text = "naïve 日本語 🙂 “done”"
    byte_char = bytes_to_unicode()
    ids = [fp32.tokenizer.convert_tokens_to_ids(byte_char[b]) for b in text.encode("utf-8")]  # one byte a token
    pieces, (seen, _) = G.drain(G.text_pieces(fp32._decode, iter(ids)))
    assert "".join(pieces) == text and seen == ids
    assert all(G.REPLACEMENT not in p for p in pieces)
    assert "🙂" in pieces or any(p.endswith("🙂") for p in pieces)  # four bytes held back, then sent whole


def test_stream_joins_to_generate_and_the_decoded_tokens(fp32):
    setting = GenerationParams(do_sample=True, top_k=50)
    for seed in range(3):
        pieces = list(fp32.stream("Lily", 20, setting, seed=seed))
        ids = list(fp32.token_ids("Lily", 20, setting, seed=seed))
        result = fp32.generate("Lily", 20, setting, seed=seed)
        assert "".join(pieces) == result["text"] == fp32._decode(ids)
        assert result["new_tokens"] == len(ids)
        # never a piece ending inside a character (only the final flush may end in an invalid byte)
        assert not any(p.endswith(G.REPLACEMENT) for p in pieces[:-1])


def test_context_policy(built):
    fp32 = G.OnnxGenerator(built["fp32"])
    fp32.eos_token_id = -1  # no token ends the text here: the limits under test do
    short = fp32.generate("Once upon a time", 5, GREEDY)
    assert short["finish_reason"] == "length" and short["new_tokens"] == 5 and short["prompt_truncated"] == 0
    room = CONTEXT - short["prompt_tokens"]
    capped = fp32.generate("Once upon a time", 100, GREEDY)
    assert capped["finish_reason"] == "context" and capped["new_tokens"] == room
    long_prompt = " ".join(["Lily went to the park."] * 20)
    full = 1 + len(fp32.tokenizer(long_prompt, add_special_tokens=False)["input_ids"])  # eos starts it
    over = fp32.generate(long_prompt, 10, GREEDY)
    assert over["prompt_tokens"] == CONTEXT - 1 and over["prompt_truncated"] == full - (CONTEXT - 1)
    assert over["new_tokens"] == 1 and over["finish_reason"] == "context"
    # the kept tail decides the continuation: the same as prompting with those tokens alone
    tail = fp32.prompt_ids(long_prompt)
    assert list(fp32.token_ids(long_prompt, 1, GREEDY)) == list(fp32.token_ids(tail, 1, GREEDY))


def test_a_prompt_starts_a_document_here_and_in_story_evaluate(torch_model, fp32):
    """Training saw each document after an eos; the service and the evaluation report prompt the same way."""
    from stages.story_evaluate import generate

    prompt = "Lily went"
    assert (
        fp32.prompt_ids(prompt) == [fp32.eos_token_id] + fp32.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    ours = list(fp32.token_ids(prompt, 8, GREEDY, ignore_eos=True))
    expected = torch_generate(torch_model, fp32.prompt_ids(prompt), 8, do_sample=False, eos_token_id=None)
    assert ours == expected
    report = generate(torch_model, fp32.tokenizer, prompt, 0, GREEDY, 8)
    served = fp32.generate(prompt, 8, GREEDY)
    assert report["new_tokens"] == served["new_tokens"] + (served["finish_reason"] == "eos")
    assert report["continuation"] == served["text"]


def test_empty_prompt_starts_from_eos(fp32):
    eos = fp32.eos_token_id
    assert fp32.prompt_ids("") == [eos]
    assert list(fp32.token_ids("", 6, GREEDY, ignore_eos=True)) == list(
        fp32.token_ids([eos], 6, GREEDY, ignore_eos=True)
    )
    assert fp32.generate("", 3, GREEDY)["prompt_tokens"] == 1


def test_eos_ends_generation_and_is_not_returned(built):
    gen = G.OnnxGenerator(built["fp32"])
    first = next(gen.token_ids("Once", 1, GREEDY))
    gen.eos_token_id = first  # the greedy next token now counts as eos
    assert gen.generate("Once", 10, GREEDY) == {
        "text": "",
        "new_tokens": 0,
        "finish_reason": "eos",
        "prompt_tokens": len(gen.prompt_ids("Once")),
        "prompt_truncated": 0,
    }
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(gen.token_ids("Once", 0, GREEDY))


# ---------------------------------------------------------------- the story_quantize stage


def test_quantize_stage_measures_parity_and_speed(built, repo_params_raw):
    from stages import story_quantize

    raw = copy.deepcopy(repo_params_raw)
    raw["story"]["tracking"]["enabled"] = False
    raw["story"]["evaluate"]["prompts"] = PROMPTS[:2]
    raw["story"]["quantize"].update(
        speed_new_tokens=8, speed_repeats=1, min_greedy_agreement=0.5, max_perplexity_change=0.05
    )
    params = parse_params(raw)
    root = built["root"]
    (root / "tokenized").mkdir(exist_ok=True)
    np.save(
        root / "tokenized" / "eval.npy", np.random.default_rng(3).integers(0, 300, 6 * CONTEXT + 5).astype(np.int32)
    )
    story_quantize.run(
        for_stage(params, "story_quantize", ROOT / "dvc.yaml"),
        built["model"],
        root / "tokenized",
        root / "q_fp32",
        root / "q_int8",
        root / "q.metrics.json",
        root / "q.json",
    )
    import json

    report = json.loads((root / "q.json").read_text())
    ppl = report["perplexity"]
    assert report["eval_blocks"] == 6 and abs(ppl["onnx_fp32"] / ppl["pytorch_fp32"] - 1) < 1e-4
    assert report["greedy_agreement"]["onnx_fp32"] == {
        "teacher_forced": 1.0,
        "free_running": 1.0,
        "identical_continuations": 2,
    }
    speeds = report["speed"]
    assert set(speeds) == {"pytorch_fp32_generate", "optimum_int8_generate", "onnx_fp32_loop", "onnx_int8_loop"}
    assert all(s["tokens"] == 2 * 8 and s["tokens_per_s"] > 0 for s in speeds.values())
    failing = {**report, "perplexity_change": 0.2}
    problems = int8_problems(failing, 0.03, 0.95)
    assert any("story.quantize.max_perplexity_change" in p for p in problems)
