"""story_package: the deployable story-generator folder, with a model card and a checksum manifest.

In:  --int8 (INT8 ONNX with KV cache + tokenizer), --{prepare,train,evaluate,quantize}-report (earlier reports),
     --model (the FP32 model: its MLflow run id, and an artifact of the registered version).
Out: --out: model.onnx (INT8), config.json, tokenizer files, MODEL_CARD.md, manifest.json (sha256 and size of
     every file, the git commit, the data hash).
Params: the story sections that shape the model (written into the model card; dvc.yaml lists them); the INT8 gate is re-checked from the quantize report.
MLflow: registers the folder as a new version of story.package.model_name (pyfunc over our decoding loop),
aliased `challenger`, with the gate evidence as version tags (python -m textops.promote gate --task story).
Run: python -m stages.story_package --model M --int8 I --prepare-report ... --out ... (dvc.yaml passes the paths)
"""

from __future__ import annotations

from pathlib import Path

from textops import cli
from textops.atomic import atomic_dir
from textops.errors import GateFailed
from textops.packaging import REPORTS, fresh_package, read_reports, register, write_card_and_manifest
from textops.params import Params, flatten
from textops.tasks.story import int8_problems

TASK = "story"
BACKENDS = ("pytorch_fp32_generate", "optimum_int8_generate", "onnx_fp32_loop", "onnx_int8_loop")


def describe_model(params: Params, config: dict) -> str:
    m = params.story.model
    origin = f"fine-tuned from `{m.base}`" if m.base else "trained from scratch"
    return (
        f"GPT-2 ({config.get('n_layer')} layers, {config.get('n_head')} heads, width {config.get('n_embd')}, "
        f"context {config.get('n_positions')} tokens, vocabulary {config.get('vocab_size')}), {origin}"
    )


def quantization_section(q: dict) -> list[str]:
    s, ppl, size = q["speed"], q["perplexity"], q["size_mb"]
    agree = q["greedy_agreement"]["onnx_int8"]
    return [
        "## Quantization (dynamic INT8 ONNX with KV cache vs FP32)",
        "",
        "| | PyTorch FP32 | ONNX FP32 | ONNX INT8 |",
        "|---|---|---|---|",
        f"| eval perplexity | {ppl['pytorch_fp32']} | {ppl['onnx_fp32']} | {ppl['onnx_int8']} |",
        f"| size (MB) | {size['pytorch_fp32']} | {size['onnx_fp32']} | {size['onnx_int8']} |",
        "",
        f"INT8 perplexity change {q['perplexity_change']:+.3%} ({q['eval_blocks']} blocks of {q['context']} tokens); "
        f"greedy agreement with FP32 over {q['speed_new_tokens']} tokens per prompt: {agree['teacher_forced']:.2%} "
        f"of positions teacher-forced, {agree['free_running']:.2%} free-running. Preset `{q['quantization_config']}`, "
        f"per-channel {q['per_channel']}, {q['excluded_nodes']} node(s) kept in FP32.",
        "",
        f"Speed, greedy, {q['speed_new_tokens']} new tokens per prompt, {q['onnx_threads']} thread(s):",
        "",
        "| backend | tokens/s | ms/token |",
        "|---|---|---|",
        *[f"| {name} | {s[name]['tokens_per_s']} | {s[name]['ms_per_token']} |" for name in BACKENDS if name in s],
        "",
        f"Our INT8 loop is {q['int8_loop_speedup_vs_pytorch']}x PyTorch FP32 generate() and "
        f"{q['int8_loop_speedup_vs_optimum']}x Optimum generate() on the same INT8 file.",
        "",
    ]


def model_card(params: Params, reports: dict, config: dict, git: dict, created: str) -> str:
    prep, train, ev, q = (reports[k] for k in REPORTS)
    strategies = ev.get("strategies", {})
    reasons = ", ".join(f"{k}: {v}" for k, v in prep.get("quarantine_reasons", {}).items()) or "none"
    return "\n".join(
        [
            f"# {params.story.package.model_name}",
            "",
            f"Story generator: {describe_model(params, config)}. Exported to ONNX with past key values and quantized "
            f"to INT8 (dynamic); served by our numpy decoding loop (`textops.story.generation.OnnxGenerator`).",
            f"Created {created} from git commit `{git['commit']}`{' (uncommitted changes)' if git['dirty'] else ''}.",
            "",
            "## Data",
            "",
            f"- Source: `{prep['source']}` (sha256 `{prep['data_hash']}`)",
            f"- Documents: train {prep['documents']['train']}, eval {prep['documents']['eval']}; quarantined "
            f"{prep['quarantined']} ({reasons})",
            f"- Validation (Great Expectations): {'passed' if prep.get('validation_success') else 'FAILED'}",
            "",
            "## Training",
            "",
            f"- Method {train.get('method')}, {train.get('global_step')} steps over {train.get('train_tokens')} tokens, "
            f"lr {params.story.train.learning_rate}, batch {params.story.train.batch_size}, precision "
            f"{train.get('precision')} on {train.get('device')}",
            f"- Train loss {train.get('train_loss')}, eval loss {train.get('eval_loss')}; "
            f"{train.get('tokens_per_second')} tokens/s, {train.get('wall_time_s')} s, peak RSS {train.get('peak_rss_mb')} MB",
            "",
            "## Evaluation (eval split, PyTorch FP32)",
            "",
            f"- Perplexity {ev['perplexity']} (loss {ev.get('eval_loss')}) over {ev.get('eval_blocks')} blocks",
            "",
            "| strategy | repetition rate | distinct-1 | distinct-2 | mean new tokens |",
            "|---|---|---|---|---|",
            *[
                f"| {name} | {s.get('repetition_rate')} | {s.get('distinct_1')} | {s.get('distinct_2')} | "
                f"{s.get('mean_new_tokens')} |"
                for name, s in strategies.items()
            ],
            "",
            *quantization_section(q),
            "## Generation",
            "",
            f"- A prompt longer than {config.get('n_positions', 0) - 1} tokens keeps its last tokens; prompt plus new "
            "tokens never exceed the context (finish_reason `context`); an empty prompt starts from the eos token.",
            f"- Service defaults: {params.story.serve.defaults.model_dump()}",
            "",
            "## Params",
            "",
            "| key | value |",
            "|---|---|",
            *[f"| {k} | {str(v).replace('|', '/')} |" for k, v in flatten(params).items() if k.startswith("story.")],
            "",
            "## Limits",
            "",
            "A small model trained on the text above only: it writes simple English stories in that style, makes "
            "factual and grammatical mistakes, and has no safety filtering. Perplexity on the bundled sample says "
            "little about quality on other text.",
            "",
        ]
    )


def evidence(reports: dict, git: dict, int8_gate: str) -> dict:
    """What the story promotion gate and a reviewer need, as registry tags on the version."""
    q = reports["quantize"]
    return {
        "task": TASK,
        "eval_perplexity": reports["evaluate"]["perplexity"],
        "fp32_perplexity": q["perplexity"]["pytorch_fp32"],
        "int8_perplexity": q["perplexity"]["onnx_int8"],
        "int8_perplexity_change": q["perplexity_change"],
        "int8_greedy_agreement": q["greedy_agreement"]["onnx_int8"]["teacher_forced"],
        "int8_gate": int8_gate,
        "tokens_per_s": q["speed"]["onnx_int8_loop"]["tokens_per_s"],
        "speedup_vs_pytorch": q["int8_loop_speedup_vs_pytorch"],
        "size_mb": q["size_mb"]["onnx_int8"],
        "data_hash": reports["prepare"]["data_hash"],
        "git_commit": git["commit"],
    }


def run(
    params: Params,
    model: Path,
    int8: Path,
    prepare_report: Path,
    train_report: Path,
    evaluate_report: Path,
    quantize_report: Path,
    out: Path,
) -> None:
    data = read_reports("story_package", int8, (prepare_report, train_report, evaluate_report, quantize_report))
    q = params.story.quantize
    problems = int8_problems(data["quantize"], q.max_perplexity_change, q.min_greedy_agreement)
    if problems:  # the report predates a params change, or was edited: never ship a model that fails it
        raise GateFailed(f"{quantize_report} fails the INT8 gate:\n  - " + "\n  - ".join(problems))
    with atomic_dir(out) as package:
        made = fresh_package(int8, package)
        git = made["git"]
        config = cli.read_json(package / "config.json")
        fields = {
            "name": params.story.package.model_name,
            "task": TASK,
            "context": config.get("n_positions"),
            "data_hash": data["prepare"]["data_hash"],
        }
        write_card_and_manifest(package, model_card(params, data, config, git, made["created"]), fields, made)
    register(params.story.tracking, params.story.package.model_name, model, out, evidence(data, git, "passed"), TASK)


def main(argv=None) -> int:
    paths = ["model", "int8", "prepare-report", "train-report", "evaluate-report", "quantize-report", "out"]
    return cli.main("story_package", __doc__, paths, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
