"""The MLflow pyfunc for a packaged classifier: texts in, label and probabilities out."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd


def texts_of(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError(f"input needs a 'text' column, got {list(model_input.columns)}")
        return [str(t) for t in model_input["text"]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


def as_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "label": r["label"],
                "probability": r["probability"],
                **{f"prob_{k}": v for k, v in r["probabilities"].items()},
            }
            for r in rows
        ]
    )


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """Loads the package folder (INT8 ONNX, tokenizer, labels) logged as the artifact 'package'."""

    def load_context(self, context) -> None:
        from textops.inference import OnnxClassifier

        self.classifier = OnnxClassifier(context.artifacts["package"], "model.onnx")

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        return as_frame(self.classifier.classify(texts_of(model_input)))
