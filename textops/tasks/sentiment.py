"""The sentiment task: a fine-tuned encoder classifier; its registry gate scores accuracy (higher wins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textops.params import Params
from textops.tasks.base import Task

# The registered pyfunc, as code (models-from-code): MLflow stores and runs this file, never a pickle.
MODEL_CODE = str(Path(__file__).resolve().parents[1] / "mlflow_models" / "sentiment.py")
# Two texts for the registered model's signature and input example.
EXAMPLE = ["a charming , funny film .", "a dull mess ."]


class SentimentTask(Task):
    name = "sentiment"
    source_key = "sentiment.prepare.source"

    def params(self, params: Params) -> Any:
        return params.sentiment

    def source_files(self, source: Path) -> list[Path]:
        from textops.sources import locate

        return list(locate(str(source)).values())

    def flavour(self, package_dir: Path) -> tuple[Any, Any, Any, dict | None]:
        import pandas as pd

        from textops.inference import OnnxClassifier
        from textops.pyfunc import as_frame

        frame = pd.DataFrame({"text": EXAMPLE})
        output = as_frame(OnnxClassifier(package_dir, "model.onnx").classify(list(frame["text"])))
        return MODEL_CODE, frame, output, None

    def score(self, name: str, version: str, eval_path: Path) -> dict[str, float]:
        """Score a version's accuracy on the frozen eval set, on its verified package files as serving loads them."""
        import numpy as np
        import pandas as pd

        from textops import registry
        from textops.inference import OnnxClassifier

        frame = pd.read_parquet(eval_path)
        classifier = OnnxClassifier(registry.fetch_package(name, version), "model.onnx")
        predicted = np.array([row["label"] for row in classifier.classify(list(frame["text"]))])
        return {"accuracy": round(float((predicted == frame["label"].to_numpy()).mean()), 4)}

    def decide(self, challenger: dict, champion: dict | None, p: Any) -> list[str]:
        reasons = []
        if challenger["accuracy"] < p.min_accuracy:
            reasons.append(
                f"accuracy {challenger['accuracy']:.4f} is under the floor sentiment.promote.min_accuracy="
                f"{p.min_accuracy} (short by {p.min_accuracy - challenger['accuracy']:.4f})"
            )
        if champion is not None and challenger["accuracy"] < champion["accuracy"] - p.accuracy_tolerance:
            margin = champion["accuracy"] - challenger["accuracy"]
            reasons.append(
                f"accuracy {challenger['accuracy']:.4f} trails champion v{champion['version']} "
                f"({champion['accuracy']:.4f}) by {margin:.4f}, over sentiment.promote.accuracy_tolerance="
                f"{p.accuracy_tolerance}"
            )
        if challenger.get("int8_gate") != "passed":
            reasons.append(f"the INT8-vs-FP32 checks did not pass (int8_gate={challenger.get('int8_gate')})")
        if float(challenger.get("latency_ms_p50", "inf")) > p.max_latency_ms:
            reasons.append(
                f"INT8 p50 latency {challenger.get('latency_ms_p50')} ms is over sentiment.promote.max_latency_ms="
                f"{p.max_latency_ms}"
            )
        if float(challenger.get("size_mb", "inf")) > p.max_size_mb:
            reasons.append(
                f"INT8 model size {challenger.get('size_mb')} MB is over sentiment.promote.max_size_mb={p.max_size_mb}"
            )
        return reasons

    def headline(self, metrics: dict[str, dict]) -> list[tuple[str, Any]]:
        ev, q = metrics.get("evaluate", {}), metrics.get("quantize", {})
        return [
            ("eval accuracy (FP32)", ev.get("accuracy")),
            ("macro F1", ev.get("macro_f1")),
            ("INT8 accuracy", q.get("int8_accuracy")),
            ("INT8/FP32 agreement", q.get("agreement")),
            ("INT8 p50 latency (ms)", q.get("latency_ms_p50")),
            ("INT8 speed-up over PyTorch FP32", q.get("int8_speedup")),
        ]
