"""Great Expectations 1.x suite for prepared text/label splits, and its readable report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from textops.errors import PipelineError


@dataclass(frozen=True)
class Bounds:
    labels: list[str]
    min_chars: int
    max_chars: int
    min_class_fraction: float


class ValidationFailed(PipelineError):
    """A dataset-level expectation failed; the message names the split and expectation."""


def _expectations(bounds: Bounds) -> list[Any]:
    import great_expectations.expectations as gxe

    suite = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["text", "label"], exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"^\s*$"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=bounds.min_chars, max_value=bounds.max_chars),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(bounds.labels)),
    ]
    # Class balance with built-ins: at least min_fraction of rows are class c, and at least
    # min_fraction are not c (so no class takes over the split).
    for label in bounds.labels:
        suite.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="label",
                value_set=[label],
                mostly=bounds.min_class_fraction,
                meta={"check": f"share of '{label}' >= {bounds.min_class_fraction}"},
            )
        )
        suite.append(
            gxe.ExpectColumnValuesToNotBeInSet(
                column="label",
                value_set=[label],
                mostly=bounds.min_class_fraction,
                meta={"check": f"share of '{label}' <= {1 - bounds.min_class_fraction:g}"},
            )
        )
    return suite


def _summarise(result: Any, split: str) -> list[dict[str, Any]]:
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            observed = f"{r.result['unexpected_count']} unexpected ({r.result.get('unexpected_percent', 0):.2f}%)"
        rows.append(
            {
                "split": split,
                "expectation": cfg.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "observed": observed,
                "examples": r.result.get("partial_unexpected_list", [])[:3],
                "check": (cfg.meta or {}).get("check", ""),
            }
        )
    return rows


def validate_splits(splits: dict[str, pd.DataFrame], bounds: Bounds) -> dict[str, Any]:
    """Validate each split, and text uniqueness across all splits (no leakage, no duplicates)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs at INFO on its own
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        ctx.data_sources.add_pandas("prepared")
        .add_dataframe_asset("frame")
        .add_batch_definition_whole_dataframe("whole")
    )

    def run(name: str, frame: pd.DataFrame, expectations: list[Any]) -> list[dict[str, Any]]:
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"prepared_{name}", expectations=expectations))
        return _summarise(batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite), name)

    checks: list[dict[str, Any]] = []
    for name, frame in splits.items():
        checks += run(name, frame[["text", "label"]], _expectations(bounds))
    together = pd.concat([f[["text"]] for f in splits.values()], ignore_index=True)
    checks += run(
        "all",
        together,
        [gxe.ExpectColumnValuesToBeUnique(column="text", meta={"check": "no text in two rows or two splits"})],
    )
    return {"success": all(c["success"] for c in checks), "checks": checks}


def failures(validation: dict[str, Any]) -> list[str]:
    return [
        f"split '{c['split']}': {c['expectation']} {c['check'] or c['kwargs']} failed (observed: {c['observed']})"
        for c in validation["checks"]
        if not c["success"]
    ]


def render_markdown(validation: dict[str, Any], counts: dict[str, Any]) -> str:
    lines = [
        "# Data validation report",
        "",
        f"Result: **{'PASSED' if validation['success'] else 'FAILED'}** "
        f"({sum(c['success'] for c in validation['checks'])}/{len(validation['checks'])} expectations met)",
        "",
        "## Rows",
        "",
        "| split | kept | quarantined |",
        "|---|---|---|",
    ]
    for split, c in counts["splits"].items():
        lines.append(f"| {split} | {c['kept']} | {c['quarantined']} |")
    lines += ["", "## Quarantine reasons", ""]
    reasons = counts.get("quarantine_reasons", {})
    lines += [f"- {reason}: {n}" for reason, n in sorted(reasons.items())] or ["- none"]
    lines += [
        "",
        "## Expectations (Great Expectations)",
        "",
        "| split | expectation | check | ok | observed |",
        "|---|---|---|---|---|",
    ]
    for c in validation["checks"]:
        check = c["check"] or ", ".join(f"{k}={v}" for k, v in c["kwargs"].items() if k != "column") or ""
        column = c["kwargs"].get("column", "")
        lines.append(
            f"| {c['split']} | {c['expectation']}({column}) | {check} | {'yes' if c['success'] else '**NO**'} "
            f"| {str(c['observed']).replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"
