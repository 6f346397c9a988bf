"""The baseline for bench/serving/load_test.py: the endpoint as it is first written by hand.

FastAPI, the FP32 PyTorch model from the train stage, one forward pass per request.
Run: NAIVE_MODEL=outputs/sentiment/model uvicorn bench.serving.naive_service:app --host 127.0.0.1 --port 3200
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoTokenizer

from textops.modeling import load_trained

MODEL = os.environ.get("NAIVE_MODEL", "outputs/sentiment/model")
tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = load_trained(MODEL)  # the train stage's model, whichever head (model.pooling) it has
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
app = FastAPI()


class Request(BaseModel):
    text: str


@app.post("/classify")
def classify(request: Request) -> dict:
    with torch.no_grad():
        encoded = tokenizer(request.text, truncation=True, max_length=64, return_tensors="pt")
        probs = model(**encoded).logits.softmax(-1)[0].tolist()
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": labels[best], "probability": probs[best], "probabilities": dict(zip(labels, probs, strict=True))}
