"""story_quantize: ONNX export with KV cache (Optimum), dynamic INT8, and parity and speed against PyTorch FP32.

In:  --model (story_train's out: GPT-2 + tokenizer), --tokenized/eval.npy (the eval token stream).
Out: --fp32 (model.onnx with past key values + tokenizer), --int8 (model_quantized.onnx + tokenizer),
     --report-file: perplexity of PyTorch FP32, ONNX FP32 and ONNX INT8 on the eval blocks; greedy agreement
     INT8 vs FP32 on the fixed prompts (teacher-forced and free-running); tokens/s and ms/token of PyTorch
     FP32 generate(), Optimum generate() on INT8, and our numpy loop on FP32 and INT8; file sizes.
     --metrics: the report's headline numbers (dvc metrics show).
Params: story.evaluate.prompts, story.quantize.*.
Gate: INT8 perplexity change over story.quantize.max_perplexity_change, or teacher-forced greedy agreement
under story.quantize.min_greedy_agreement.
Run: python -m stages.story_quantize --model M --tokenized T --fp32 F --int8 I --metrics J --report-file J (see dvc.yaml).
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from textops import cli
from textops.atomic import atomic_dir
from textops.errors import GateFailed, PipelineError
from textops.modeling import torch_threads
from textops.onnx_export import INT8_FILE, choose_config, cpu_flags, nodes_matching
from textops.params import GenerationParams, Params
from textops.story import lm
from textops.story.generation import OnnxGenerator
from textops.tasks.story import int8_problems
from textops.tracking import ModelRun, numeric

log = logging.getLogger("textops.story_quantize")
GREEDY = GenerationParams(do_sample=False)
SIDE_FILES = ("config.json", "generation_config.json")
PERPLEXITY_BATCH = 32  # blocks per forward pass; only memory depends on it (not a param: dvc.yaml lists none)


def copy_side_files(model: Path, folder: Path) -> None:
    """Tokenizer and config beside the ONNX file, so the folder loads on its own."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    for name in SIDE_FILES:
        if (model / name).is_file():
            shutil.copy2(model / name, folder / name)


def export(model: Path, fp32: Path) -> None:
    """One model.onnx with past key values in and present key values out (STACK_NOTES: not merged)."""
    from optimum.onnxruntime import ORTModelForCausalLM

    ORTModelForCausalLM.from_pretrained(model, export=True, use_cache=True).save_pretrained(fp32)
    copy_side_files(model, fp32)


def quantize(model: Path, fp32: Path, int8: Path, per_channel: bool, exclude: list[str]) -> tuple[str, list[str]]:
    """Dynamic INT8 of fp32/model.onnx into int8/; returns the preset used and the node names kept in FP32."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config_name = choose_config("auto", cpu_flags(), platform.machine())
    excluded = nodes_matching(fp32 / "model.onnx", exclude)
    config = getattr(AutoQuantizationConfig, config_name)(
        is_static=False, per_channel=per_channel, nodes_to_exclude=excluded
    )
    ORTQuantizer.from_pretrained(fp32, file_name="model.onnx").quantize(save_dir=int8, quantization_config=config)
    produced = [p for p in int8.glob("*.onnx") if p.name != INT8_FILE]
    if produced:
        produced[0].rename(int8 / INT8_FILE)
    copy_side_files(model, int8)
    return config_name, excluded


# ---------------------------------------------------------------- parity


def perplexity(logits_of: Callable[[np.ndarray], np.ndarray], blocks: np.ndarray, batch_size: int) -> float:
    """story_evaluate's figure (textops.story.lm), so every backend is scored by the same arithmetic."""
    return lm.perplexity_of(lm.mean_loss(logits_of, blocks, batch_size))


def torch_greedy(torch_model, prompt_ids: list[int], new_tokens: int, pad: int) -> list[int]:
    """PyTorch FP32 generate(), greedy, exactly new_tokens tokens: eos_token_id=None lets it run past eos
    (min_new_tokens would instead forbid eos, and change the tokens)."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = torch_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad,
        )
    return out[0, len(prompt_ids) :].tolist()


def greedy_agreement(
    torch_model, generators: dict[str, OnnxGenerator], prompts: list[list[int]], new_tokens: int
) -> dict:
    """Share of greedy positions where each ONNX model picks FP32's token.

    teacher_forced: the ONNX model reads FP32's greedy continuation and predicts each next token from the
    same prefix; one early flip does not spoil the rest, so this is the per-position measure the gate uses.
    free_running: each model decodes on its own (our loop); after a first flip the texts part ways.
    """
    eos = next(iter(generators.values())).eos_token_id
    report = {name: {"teacher_forced": 0.0, "free_running": 0.0, "identical_continuations": 0} for name in generators}
    for ids in prompts:
        fp32 = torch_greedy(torch_model, ids, new_tokens, eos)
        for name, gen in generators.items():
            logits = gen.logits(np.array([ids + fp32]))[0, len(ids) - 1 : -1]
            report[name]["teacher_forced"] += float((logits.argmax(-1) == np.array(fp32)).mean()) / len(prompts)
            ours = list(gen.token_ids(ids, new_tokens, GREEDY, ignore_eos=True))
            report[name]["free_running"] += float((np.array(ours) == np.array(fp32)).mean()) / len(prompts)
            report[name]["identical_continuations"] += int(ours == fp32)
    return {name: {k: round(v, 4) for k, v in r.items()} for name, r in report.items()}


# ---------------------------------------------------------------- speed


def speed(backends: dict[str, Callable[[list[int]], int]], prompts: list[list[int]], repeats: int) -> dict:
    """tokens/s per backend; the backends take turns per prompt so they see the same machine state."""
    for run_one in backends.values():  # warm-up: first-call allocations and lazy initialisation
        run_one(prompts[0])
    tokens = dict.fromkeys(backends, 0)
    seconds = dict.fromkeys(backends, 0.0)
    for _ in range(repeats):
        for prompt in prompts:
            for name, run_one in backends.items():
                started = time.perf_counter()
                tokens[name] += run_one(prompt)
                seconds[name] += time.perf_counter() - started
    return {
        name: {
            "tokens_per_s": round(tokens[name] / seconds[name], 1),
            "ms_per_token": round(1000 * seconds[name] / tokens[name], 3),
            "tokens": tokens[name],
        }
        for name in backends
    }


def speed_backends(
    torch_model, int8: Path, gens: dict[str, OnnxGenerator], new_tokens: int, threads: int
) -> dict[str, Callable[[list[int]], int]]:
    """prompt ids -> new tokens made, for each way of generating; every one makes exactly new_tokens."""
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxGenerator
    optimum = ORTModelForCausalLM.from_pretrained(int8, file_name=INT8_FILE, use_cache=True, session_options=options)
    eos = gens["onnx_int8"].eos_token_id

    def hf_generate(m):
        def run_one(prompt: list[int]) -> int:
            ids = torch.tensor([prompt])
            with torch.inference_mode():
                out = m.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=eos,
                )
            return out.shape[1] - ids.shape[1]

        return run_one

    def loop(gen: OnnxGenerator):
        return lambda prompt: len(list(gen.token_ids(prompt, new_tokens, GREEDY, ignore_eos=True)))

    return {
        "pytorch_fp32_generate": hf_generate(torch_model),
        "optimum_int8_generate": hf_generate(optimum),
        "onnx_fp32_loop": loop(gens["onnx_fp32"]),
        "onnx_int8_loop": loop(gens["onnx_int8"]),
    }


# ---------------------------------------------------------------- stage


def load_blocks(tokenized: Path, context: int) -> np.ndarray:
    path = tokenized / "eval.npy"
    if not path.is_file():
        raise PipelineError(f"{path} not found: run story_tokenize first (dvc repro story_tokenize)")
    return lm.eval_blocks(np.load(path), context)


def prompt_ids(gen: OnnxGenerator, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """The fixed prompts as token ids, each cut to leave room for new_tokens in the context."""
    if new_tokens >= gen.context:
        raise PipelineError(
            f"story.quantize.speed_new_tokens={new_tokens} leaves no room for a prompt in the "
            f"model's context of {gen.context} tokens; lower it"
        )
    if not prompts:
        raise PipelineError("story.evaluate.prompts is empty: the greedy and speed checks need prompts")
    return [gen.prompt_ids(p)[-(gen.context - new_tokens) :] for p in prompts]


def measure(params: Params, model: Path, tokenized: Path, fp32: Path, int8: Path) -> dict:
    from transformers import AutoModelForCausalLM

    q = params.story.quantize
    torch_model = AutoModelForCausalLM.from_pretrained(model).eval()
    gens = {
        "onnx_fp32": OnnxGenerator(fp32, "model.onnx", q.onnx_threads),
        "onnx_int8": OnnxGenerator(int8, INT8_FILE, q.onnx_threads),
    }
    prompts = prompt_ids(gens["onnx_fp32"], params.story.evaluate.prompts, q.speed_new_tokens)
    blocks = load_blocks(tokenized, gens["onnx_fp32"].context)
    batch = PERPLEXITY_BATCH
    ppl = {
        "pytorch_fp32": perplexity(lm.torch_logits(torch_model), blocks, batch),
        **{name: perplexity(gen.logits, blocks, batch) for name, gen in gens.items()},
    }
    with torch_threads(q.onnx_threads):  # the same cores for every backend
        agreement = greedy_agreement(torch_model, gens, prompts, q.speed_new_tokens)
        timing = speed(
            speed_backends(torch_model, int8, gens, q.speed_new_tokens, q.onnx_threads), prompts, q.speed_repeats
        )
    return {
        "eval_blocks": len(blocks),
        "context": gens["onnx_fp32"].context,
        "perplexity": {k: round(v, 4) for k, v in ppl.items()},
        "perplexity_change": round(ppl["onnx_int8"] / ppl["pytorch_fp32"] - 1, 5),
        "onnx_fp32_perplexity_change": round(ppl["onnx_fp32"] / ppl["pytorch_fp32"] - 1, 6),
        "greedy_agreement": agreement,
        "speed": timing,
    }


def headline(report: dict) -> dict:
    """The INT8 model against FP32, for `dvc metrics show` (key names shared with quantize's)."""
    return {
        "perplexity_change": report["perplexity_change"],
        "greedy_agreement": report["greedy_agreement"]["onnx_int8"]["teacher_forced"],
        "tokens_per_s": report["speed"]["onnx_int8_loop"]["tokens_per_s"],
        "int8_speedup": report["int8_loop_speedup_vs_pytorch"],
        "size_mb": report["size_mb"]["onnx_int8"],
    }


def run(params: Params, model: Path, tokenized: Path, fp32: Path, int8: Path, metrics: Path, report_file: Path) -> None:
    q = params.story.quantize
    with atomic_dir(fp32) as fp32_tmp, atomic_dir(int8) as int8_tmp:
        export(model, fp32_tmp)
        config_name, excluded = quantize(model, fp32_tmp, int8_tmp, q.per_channel, q.exclude_nodes)
    report = measure(params, model, tokenized, fp32, int8)
    sizes = {
        "pytorch_fp32": (model / "model.safetensors").stat().st_size,
        "onnx_fp32": (fp32 / "model.onnx").stat().st_size,
        "onnx_int8": (int8 / INT8_FILE).stat().st_size,
    }
    s = report["speed"]
    report.update(
        {
            "quantization_config": config_name,
            "per_channel": q.per_channel,
            "excluded_nodes": len(excluded),
            "onnx_threads": q.onnx_threads,
            "speed_new_tokens": q.speed_new_tokens,
            "speed_repeats": q.speed_repeats,
            "size_mb": {k: round(v / 2**20, 3) for k, v in sizes.items()},
            "int8_size_ratio": round(sizes["onnx_int8"] / sizes["onnx_fp32"], 4),
            "int8_loop_speedup_vs_pytorch": round(
                s["onnx_int8_loop"]["tokens_per_s"] / s["pytorch_fp32_generate"]["tokens_per_s"], 2
            ),
            "int8_loop_speedup_vs_optimum": round(
                s["onnx_int8_loop"]["tokens_per_s"] / s["optimum_int8_generate"]["tokens_per_s"], 2
            ),
        }
    )
    cli.write_results(report_file, metrics, report, headline(report))
    log.info("%s", report)
    problems = int8_problems(report, q.max_perplexity_change, q.min_greedy_agreement)
    tracker = ModelRun(params.story.tracking.enabled, params.story.tracking.experiment).reopen(model)
    tracker.log_metrics(numeric("quantize", report))
    tracker.log_artifact(report_file, "reports")
    tracker.set_tags({"int8_gate": "failed" if problems else "passed"})
    if problems:
        raise GateFailed("story quantization gate failed:\n  - " + "\n  - ".join(problems))


def main(argv=None) -> int:
    return cli.main(
        "story_quantize", __doc__, ["model", "tokenized", "fp32", "int8", "metrics", "report-file"], run, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
