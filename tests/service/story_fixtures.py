"""A tiny story package (random 2-layer GPT-2, byte-level BPE, Optimum export, dynamic INT8) and its
registration as `story-generator`, laid out as the story_package stage lays it out."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import fit_tiny_lm

NAME = "story-generator"  # story.package.model_name in params.yaml
CONTEXT = 64
TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "The little dog ran to the park with Tom.",
    'She smiled and said, "Thank you for helping me!"',
    "One day, the sun was warm and the sky was blue.",
]
# Version tags as stages/story_package.py writes them (made-up evidence; /metadata reports them).
TAGS = {
    "task": "story",
    "eval_perplexity": "123.4",
    "int8_perplexity": "125.0",
    "int8_gate": "passed",
    "tokens_per_s": "900.0",
    "size_mb": "0.1",
    "git_commit": "0" * 40,
    "data_hash": "f" * 64,
}


def tokenizer(folder: Path):
    """A byte-level BPE (any text encodes) with GPT-2's eos, saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        TEXTS * 4,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    # Without model_input_names the tokenizer adds token_type_ids, which the ONNX model does not take.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.save_pretrained(folder)
    return tok


def build_package(root: Path, seed: int = 0, steps: int = 60) -> Path:
    """root/package: INT8 model.onnx with past key values, config.json and the tokenizer files."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir, fp32, package = root / "model", root / "fp32", root / "package"
    tok = tokenizer(model_dir)
    config = GPT2Config(
        vocab_size=len(tok),
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=CONTEXT,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    fit_tiny_lm(model, tok, TEXTS, CONTEXT, steps)
    model.eval()
    model.save_pretrained(model_dir)
    ORTModelForCausalLM.from_pretrained(model_dir, export=True, use_cache=True).save_pretrained(fp32)
    package.mkdir()
    quantize_dynamic(fp32 / "model.onnx", package / "model.onnx", weight_type=QuantType.QInt8)
    tok.save_pretrained(package)
    shutil.copy(model_dir / "config.json", package / "config.json")
    return package


def register(root: Path, tags: dict[str, str] = TAGS) -> str:
    """A new registered version of root/package (FP32 beside it in root/fp32), by the package stage's own call."""
    import mlflow
    from textops import registry, tasks
    from textops.tracking import configure

    configure("story-service-tests")  # artifacts beside the test store, not in ./mlruns
    with mlflow.start_run() as run:
        pass
    return registry.register(NAME, run.info.run_id, root / "package", root / "fp32", tags, tasks.get("story").flavour)
