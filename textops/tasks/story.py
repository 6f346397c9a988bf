"""The story task: a GPT-style generator; its registry gate scores perplexity (lower wins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textops.params import Params
from textops.tasks.base import Task

# The registered pyfunc, as code (models-from-code): MLflow stores and runs this file, never a pickle.
MODEL_CODE = str(Path(__file__).resolve().parents[1] / "mlflow_models" / "story.py")


class StoryTask(Task):
    name = "story"
    source_key = "story.prepare.source"

    def params(self, params: Params) -> Any:
        return params.story

    def source_files(self, source: Path) -> list[Path]:
        return sorted(source.rglob("*.txt")) if source.is_dir() else [source]  # a text file, or a folder of them

    def flavour(self, package_dir: Path) -> tuple[Any, Any, Any, dict | None]:
        from textops.story.pyfunc import example

        return (MODEL_CODE, *example(package_dir))

    def score(self, name: str, version: str, eval_path: Path, batch_size: int = 32) -> dict[str, float]:
        """Score a version's INT8 ONNX on the frozen eval blocks, from its verified package files as serving loads them."""
        import numpy as np

        from textops import registry
        from textops.story import lm
        from textops.story.generation import OnnxGenerator

        generator = OnnxGenerator(registry.fetch_package(name, version), "model.onnx")
        blocks = lm.eval_blocks(np.load(eval_path), generator.context)
        return {"perplexity": round(lm.perplexity_of(lm.mean_loss(generator.logits, blocks, batch_size)), 4)}

    def decide(self, challenger: dict, champion: dict | None, p: Any) -> list[str]:
        reasons, ppl = [], challenger["perplexity"]
        if ppl > p.max_perplexity:
            reasons.append(f"perplexity {ppl:.4f} is over the ceiling story.promote.max_perplexity={p.max_perplexity}")
        if champion is not None and ppl > champion["perplexity"] * (1 + p.perplexity_tolerance):
            excess = ppl / champion["perplexity"] - 1
            reasons.append(
                f"perplexity {ppl:.4f} exceeds champion v{champion['version']} "
                f"({champion['perplexity']:.4f}) by {excess:.2%}, over story.promote.perplexity_tolerance="
                f"{p.perplexity_tolerance}"
            )
        if challenger.get("int8_gate") != "passed":
            reasons.append(f"the INT8-vs-FP32 checks did not pass (int8_gate={challenger.get('int8_gate')})")
        if float(challenger.get("size_mb", "inf")) > p.max_size_mb:
            reasons.append(
                f"INT8 model size {challenger.get('size_mb')} MB is over story.promote.max_size_mb={p.max_size_mb}"
            )
        return reasons

    def headline(self, metrics: dict[str, dict]) -> list[tuple[str, Any]]:
        ev, q = metrics.get("evaluate", {}), metrics.get("quantize", {})
        return [
            ("eval perplexity (FP32)", ev.get("perplexity")),
            ("INT8 perplexity change", q.get("perplexity_change")),
            ("INT8 greedy agreement (teacher-forced)", q.get("greedy_agreement")),
            ("INT8 tokens/s", q.get("tokens_per_s")),
            ("INT8 speed-up over PyTorch FP32", q.get("int8_speedup")),
        ]


def int8_problems(report: dict, max_change: float, min_agreement: float) -> list[str]:
    """The story INT8 gate (story_quantize fails on it, story_package re-checks it): perplexity change and
    teacher-forced greedy agreement against FP32."""
    problems = []
    ppl = report["perplexity"]
    if report["perplexity_change"] > max_change:
        problems.append(
            f"INT8 perplexity {ppl['onnx_int8']} is {report['perplexity_change']:.2%} above FP32 "
            f"{ppl['pytorch_fp32']}, over story.quantize.max_perplexity_change={max_change}"
        )
    # Teacher-forced, not free-running: after one near-tie flip a free-running text follows another path,
    # and every later position would count as a disagreement although the model is as good.
    agreement = report["greedy_agreement"]["onnx_int8"]["teacher_forced"]
    if agreement < min_agreement:
        problems.append(
            f"INT8 picks FP32's greedy token at {agreement:.2%} of positions (teacher-forced), under "
            f"story.quantize.min_greedy_agreement={min_agreement}"
        )
    return problems
