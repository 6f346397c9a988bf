"""The MLflow pyfunc for a packaged story generator: prompts in, completions out (INT8 ONNX, our decoding loop).

predict(DataFrame with a `prompt` column, params={max_new_tokens, seed, do_sample, temperature, top_k, top_p,
repetition_penalty}) -> DataFrame(text, new_tokens, finish_reason, prompt_tokens, prompt_truncated).
The registry gate reaches the loaded generator itself (`unwrap_python_model().generator`) to score perplexity.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from textops.params import GenerationParams

# The params schema MLflow records (every key needs a typed default); seed -1 means a fresh random seed.
DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 64, "seed": -1, **GenerationParams().model_dump()}


def prompts_of(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise ValueError(f"input needs a 'prompt' column, got {list(model_input.columns)}")
        return [str(t) for t in model_input["prompt"]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


def settings_of(params: dict | None) -> tuple[GenerationParams, int, int | None]:
    """Generation setting, max_new_tokens and seed from pyfunc params (validated by GenerationParams)."""
    merged = {**DEFAULT_PARAMS, **(params or {})}
    setting = GenerationParams(**{k: merged[k] for k in GenerationParams.model_fields})
    seed = int(merged["seed"])
    return setting, int(merged["max_new_tokens"]), (None if seed < 0 else seed)


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the package folder (INT8 model.onnx, config, tokenizer) logged as the artifact 'package'."""

    def load_context(self, context) -> None:
        from textops.story.generation import OnnxGenerator

        self.generator = OnnxGenerator(context.artifacts["package"], "model.onnx")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        setting, max_new_tokens, seed = settings_of(params)
        return pd.DataFrame(
            [self.generator.generate(p, max_new_tokens, setting, seed) for p in prompts_of(model_input)]
        )


def example(package_dir) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """An input example, the package's own output for it (greedy, 8 tokens), and the params schema."""
    from textops.story.generation import OnnxGenerator

    frame = pd.DataFrame({"prompt": ["Once upon a time", "The little dog"]})
    setting, _, seed = settings_of({"do_sample": False})
    generator = OnnxGenerator(package_dir, "model.onnx")
    output = pd.DataFrame([generator.generate(p, 8, setting, seed) for p in frame["prompt"]])
    return frame, output, DEFAULT_PARAMS
