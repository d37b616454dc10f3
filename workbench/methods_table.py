"""The methods table (docs/methods.md), generated from the registry: ``kdwb methods-table``."""
from __future__ import annotations

from .methods.base import Method
from .registry import METHODS

SURVEY_ORDER = ("logit", "feature", "similarity", "attention", "adversarial", "multi_teacher",
                "cross_modal", "graph", "adaptive", "contrastive")


def _defaults(cls: type[Method]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in cls.defaults().items())


def methods_table() -> str:
    """Markdown: one row per registered method, grouped by survey category."""
    rank = {name: i for i, name in enumerate(SURVEY_ORDER)}
    entries = sorted(METHODS, key=lambda e: (rank.get(e.meta.get("category"), len(rank)),
                                             e.meta.get("category", ""), e.name))
    lines = ["# Methods", "",
             "Generated from the registry by `kdwb methods-table`; do not edit by hand "
             "(a test checks that it is current).", "",
             "| name | survey category | paper | venue | year | link | defaults | notebook |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in entries:
        meta = entry.meta
        lines.append(f"| `{entry.name}` | {meta.get('category', '')} | {meta.get('paper', '')} | "
                     f"{meta.get('venue', '')} | {meta.get('year', '')} | {meta.get('link', '')} | "
                     f"{_defaults(entry.factory)} | {meta.get('notebook', '')} |")
    return "\n".join(lines) + "\n"
