"""story_tokenize: prepared documents -> a tokenizer and two int32 token streams, and a tokens-per-word report.

In:  --prepared/{train,eval}.txt (documents separated by a blank line).
Out: --out/tokenizer/ (PreTrainedTokenizerFast; eos = bos = pad = <|endoftext|>), train.npy and eval.npy
     (1-D int32: each split's documents with the eos id between them): story_train's input, nothing else;
     --report (markdown, one table: the pieces, tokens per word and unknown tokens of this tokenizer, the
     sentiment model's WordPiece and, when story.model.base is set, the base model's own, on
     story.tokenize.compare_sentences and the eval split; textops.tokenizers), kept out of --out so that a
     change to the report alone does not rerun story_train; --report-file (vocabulary, token counts,
     round-trip check, the same comparison). --metrics: the report's headline numbers (dvc metrics show).
Params: story.tokenize.* (kind char, bpe or base), story.model.base (kind base; else compared against),
        sentiment.model.name (the WordPiece compared against). A tokenizer that cannot be loaded offline is
        named in the report and left out.
Run: python -m stages.story_tokenize --prepared ... --out ... --metrics ... --report-file ... --report ...
     (dvc.yaml passes the paths)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from textops import cli
from textops.atomic import atomic_dir, atomic_write_text
from textops.errors import PipelineError
from textops.params import Params
from textops.story.corpus import SEPARATOR
from textops.story.tokenizer import build_tokenizer, encode_stream, roundtrip_failures
from textops.tokenizers import algorithm, compare, render_table, try_load

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


def compared_tokenizers(params: Params, tokenizer) -> tuple[dict[str, str], dict[str, object], list[str]]:
    """The story tokenizer, the sentiment model's (its WordPiece), and story.model.base's own when that is set
    and is not already the story tokenizer. Returns role -> name in the report, name -> tokenizer, and why any
    could not be loaded (the comparison is a report, not a reason to stop the story task)."""
    kind, base = params.story.tokenize.kind, params.story.model.base
    roles = {"story": "story " + ("characters" if kind == "char" else algorithm(tokenizer))}
    if kind == "base":
        roles["story"] += f" (`{base}`)"
    found = {roles["story"]: tokenizer}
    missing = []
    others = [("sentiment", params.sentiment.model.name)]
    if base and kind != "base":
        others.append(("base", base))
    for role, name in others:
        loaded, why = try_load(name)
        if loaded is None:
            missing.append(f"the {role} tokenizer `{name}` could not be loaded ({why})")
        else:
            roles[role] = f"{role} {algorithm(loaded)} (`{name}`)"
            found[roles[role]] = loaded
    return roles, found, missing


def render_report(metrics: dict, rows: list[dict], missing: list[str]) -> str:
    lines = [
        "# Story tokenizer",
        "",
        f"Kind **{metrics['kind']}**, vocabulary {metrics['vocab_size']}; tokens: train {metrics['tokens']['train']}, "
        f"eval {metrics['tokens']['eval']} ({metrics['chars_per_token']} characters per token on eval).",
        "",
        "## This tokenizer against the sentiment model's (and story.model.base's, when set)",
        "",
        "Pieces are joined by ` | `; `␣` is a space inside a piece, `##` continues a WordPiece word. "
        "Words are whitespace-separated; unknown counts the tokenizer's unknown token ([UNK]).",
        "",
    ]
    lines += [f"Not shown: {why}." for why in missing] + ([""] if missing else [])
    lines += render_table(rows)
    return "\n".join(lines) + "\n"


def headline(report: dict) -> dict:
    return {"tokens": {"train": report["tokens"]["train"]}, "chars_per_token": report["chars_per_token"]}


def run(
    params: Params, prepared: Path, out: Path, metrics: Path, report_file: Path, report: Path | None = None
) -> None:
    """report: the markdown report (dvc.yaml always passes it; None skips it, for callers that want only the
    tokenizer and the streams)."""
    docs = {split: read_documents(prepared, split) for split in SPLITS}
    tokenizer = build_tokenizer(params.story, docs["train"])
    streams = {split: encode_stream(tokenizer, docs[split]) for split in SPLITS}
    with atomic_dir(out) as folder:
        tokenizer.save_pretrained(str(folder / "tokenizer"))
        for split, stream in streams.items():
            np.save(folder / f"{split}.npy", stream)
    roles, compared, missing = compared_tokenizers(params, tokenizer)
    result = {
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
    rows = compare(compared, params.story.tokenize.compare_sentences, docs["eval"])
    on_eval = {r["tokenizer"]: r["tokens_per_word"] for r in rows if "pieces" not in r}
    result["tokens_per_word"] = {
        "story_eval": on_eval[roles["story"]],
        "sentiment_eval": on_eval.get(roles.get("sentiment")),
        "sentiment_model": params.sentiment.model.name,
    }
    result["compare"] = rows
    result["compare_missing"] = missing
    if report is not None:
        atomic_write_text(report, render_report(result, rows, missing))
    cli.write_results(report_file, metrics, result, headline(result))
    log.info("%s", {k: v for k, v in result.items() if k != "compare"})


def main(argv=None) -> int:
    return cli.main("story_tokenize", __doc__, ["prepared", "out", "metrics", "report-file", "report"], run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
