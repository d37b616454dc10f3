"""The methods table (docs/methods.md), generated from the registry: ``kdwb methods-table``."""
from __future__ import annotations

import inspect

from .methods.base import Method
from .registry import METHODS, SCHEMES

SURVEY_ORDER = ("offline", "online", "self", "logit", "feature", "similarity", "attention",
                "adversarial", "multi_teacher", "cross_modal", "graph", "adaptive", "contrastive")


def _defaults(cls: type[Method]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in cls.defaults().items())


def _scheme_defaults(cls: type) -> str:
    params = inspect.signature(cls.__init__).parameters.values()
    return ", ".join(f"{p.name}={p.default!r}" for p in params
                     if p.name != "self" and p.default is not inspect.Parameter.empty)


def _sorted(registry):
    rank = {name: i for i, name in enumerate(SURVEY_ORDER)}
    return sorted(registry, key=lambda e: (rank.get(e.meta.get("category"), len(rank)),
                                           e.meta.get("category", ""), e.name))


def methods_table() -> str:
    """Markdown: one row per registered method, grouped by survey category; then the schemes."""
    import workbench.schemes  # noqa: F401  (registers every scheme)
    entries = _sorted(METHODS)
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
    lines += ["", "## Schemes", "",
              "Who teaches whom and what a step computes (`wb.distill(..., scheme=name, "
              "scheme_args={...})`); a scheme combines with the methods above.", "",
              "| name | survey category | paper | venue | year | link | arguments | notebook |",
              "|---|---|---|---|---|---|---|---|"]
    for entry in _sorted(SCHEMES):
        meta = entry.meta
        lines.append(f"| `{entry.name}` | {meta.get('category', '')} | {meta.get('paper', '')} | "
                     f"{meta.get('venue', '')} | {meta.get('year', '')} | {meta.get('link', '')} | "
                     f"{_scheme_defaults(entry.factory)} | {meta.get('notebook', '')} |")
    return "\n".join(lines) + "\n"
