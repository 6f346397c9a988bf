"""story_tokenize: prepared documents -> a tokenizer and two int32 token streams, and a tokens-per-word report.

In:  --prepared/{train,eval}.txt (documents separated by a blank line).
Out: --out/tokenizer/ (PreTrainedTokenizerFast; eos = bos = pad = <|endoftext|>), train.npy and eval.npy
     (1-D int32: each split's documents with the eos id between them), report.md (tokens per word
     against the sentiment model's WordPiece); --report-file (vocabulary, token counts, round-trip check).
     --metrics: the report's headline numbers (dvc metrics show).
Params: story.tokenize.* (kind char, bpe or base), story.model.base (kind base), sentiment.model.name (the
        WordPiece compared against).
Run: python -m stages.story_tokenize --prepared ... --out ... --metrics ... --report-file ... (dvc.yaml passes the paths)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from textops import cli
from textops.errors import PipelineError
from textops.modeling import load_tokenizer
from textops.params import Params
from textops.story.corpus import SEPARATOR
from textops.story.tokenizer import build_tokenizer, encode_stream, roundtrip_failures, tokens_per_word, words

log = logging.getLogger("textops.story_tokenize")
SPLITS = ("train", "eval")


def read_documents(prepared: Path, split: str) -> list[str]:
    path = prepared / f"{split}.txt"
    if not path.is_file():
        raise PipelineError(f"{path} is missing: run story_prepare first")
    docs = [d for d in path.read_text(encoding="utf-8").split(SEPARATOR) if d]
    if not docs:
        raise PipelineError(f"{path} holds no documents: rerun story_prepare")
    return docs


def comparison(tokenizer, wordpiece, name: str, sentences: list[str], eval_docs: list[str]) -> list[dict]:
    """Tokens per word of both tokenizers on each sentence and on the whole eval split."""
    rows = [
        {
            "text": s,
            "words": words(s),
            "story": tokens_per_word(tokenizer, [s]),
            name: tokens_per_word(wordpiece, [s]) if wordpiece else None,
            "pieces": [tokenizer.decode([i]) for i in tokenizer(s, add_special_tokens=False)["input_ids"]],
        }
        for s in sentences
    ]
    rows.append(
        {
            "text": "(eval split)",
            "words": sum(map(words, eval_docs)),
            "story": tokens_per_word(tokenizer, eval_docs),
            name: tokens_per_word(wordpiece, eval_docs) if wordpiece else None,
            "pieces": None,
        }
    )
    return rows


def render_report(metrics: dict, rows: list[dict], name: str, why_missing: str) -> str:
    lines = [
        "# Story tokenizer",
        "",
        f"Kind **{metrics['kind']}**, vocabulary {metrics['vocab_size']}; tokens: train {metrics['tokens']['train']}, "
        f"eval {metrics['tokens']['eval']} ({metrics['chars_per_token']} characters per token on eval).",
        "",
        f"## Tokens per word: this tokenizer against `{name}` (the sentiment model's)",
        "",
    ]
    if why_missing:
        lines += [f"The `{name}` tokenizer could not be loaded ({why_missing}); only this tokenizer is shown.", ""]
    lines += ["| text | words | story | sentiment |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['text'].replace('|', '/')} | {r['words']} | {r['story']} | {r[name] if r[name] is not None else '-'} |"
        )
    lines += ["", "## How the sentences split (pieces joined by ` | `)", ""]
    lines += [f"- `{' | '.join(p.replace(chr(10), '⏎') for p in r['pieces'])}`" for r in rows if r["pieces"]]
    return "\n".join(lines) + "\n"


def headline(report: dict) -> dict:
    return {"tokens": {"train": report["tokens"]["train"]}, "chars_per_token": report["chars_per_token"]}


def run(params: Params, prepared: Path, out: Path, metrics: Path, report_file: Path) -> None:
    docs = {split: read_documents(prepared, split) for split in SPLITS}
    tokenizer = build_tokenizer(params.story, docs["train"])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    streams = {split: encode_stream(tokenizer, docs[split]) for split in SPLITS}
    for split, stream in streams.items():
        np.save(out / f"{split}.npy", stream)
    try:
        wordpiece, why_missing = load_tokenizer(params.sentiment.model.name), ""
    except PipelineError as error:  # the comparison is a report, not a reason to stop the story task
        wordpiece, why_missing = None, str(error)
    report = {
        "kind": params.story.tokenize.kind,
        "vocab_size": len(tokenizer),
        "documents": {s: len(d) for s, d in docs.items()},
        "tokens": {s: int(v.size) for s, v in streams.items()},
        "chars_per_token": round(
            sum(map(len, docs["eval"])) / max(1, int((streams["eval"] != tokenizer.eos_token_id).sum())), 3
        ),
        "eval_unknown_tokens": int((streams["eval"] == tokenizer.unk_token_id).sum())
        if tokenizer.unk_token_id is not None
        else 0,
        "eval_roundtrip_failures": roundtrip_failures(tokenizer, docs["eval"]),
    }
    rows = comparison(
        tokenizer, wordpiece, params.sentiment.model.name, params.story.tokenize.compare_sentences, docs["eval"]
    )
    report["tokens_per_word"] = {
        "story_eval": rows[-1]["story"],
        "sentiment_eval": rows[-1][params.sentiment.model.name],
        "sentiment_model": params.sentiment.model.name,
    }
    (out / "report.md").write_text(
        render_report(report, rows, params.sentiment.model.name, why_missing), encoding="utf-8"
    )
    cli.write_results(report_file, metrics, report, headline(report))
    log.info("%s", report)


def main(argv=None) -> int:
    return cli.main("story_tokenize", __doc__, ["prepared", "out", "metrics", "report-file"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
