"""The survey's map as a tree, marked with what the workbench implements.

Chapters and sections follow "A Comprehensive Survey on Knowledge Distillation" (Mansourian et al.,
TMLR 2025, arXiv 2503.12067; see ``TAXONOMY.md``). A registered method belongs to the section named
by its ``category`` metadata, and so does a registered scheme (``dml`` to "online", ``dafl`` to
"adversarial", ``cross_modal`` to "cross-modal").
Categories that are in no section of the survey's map are listed under "Other", so every registered
method shows up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..registry import METHODS, Registry

ROOT = "KD survey"

#: chapter -> (title, {section key: (title, notebook of the chapter)})
CHAPTERS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "sources": ("Distillation sources", {
        "logit": ("Logit-based", "10"), "feature": ("Feature-based", "11"),
        "similarity": ("Similarity-based", "12")}),
    "schemes": ("Distillation schemes", {
        "offline": ("Offline", "20"), "online": ("Online", "20"), "self": ("Self-distillation", "20")}),
    "algorithms": ("Distillation algorithms", {
        "attention": ("Attention", "30"), "adversarial": ("Adversarial", "31"),
        "multi_teacher": ("Multi-teacher", "32"), "cross_modal": ("Cross-modal", "33"),
        "graph": ("Graph-based", "34"), "adaptive": ("Adaptive", "35"),
        "contrastive": ("Contrastive", "36")}),
    "modalities": ("Modalities", {
        "3d": ("3D input", "40"), "multi_view": ("Multi-view", "41"), "text": ("Text", "42"),
        "speech": ("Speech", "43"), "video": ("Video", "44")}),
    "applications": ("Applications", {
        "llm": ("LLMs", "50"), "foundation": ("Foundation models", "51"),
        "ssl": ("Self-supervised learning", "52"), "diffusion": ("Diffusion models", "53"),
        "vision": ("Visual recognition", "54")}),
}


@dataclass
class SurveyNode:
    """One node of the map: the root, a chapter, or a section (a leaf)."""

    id: str                          # unique path, e.g. "sources/logit"
    parent: str                      # "" for the root
    label: str
    key: str                         # the section's category key ("logit"); chapter key for chapters
    implemented: int = 0             # registered methods (or offered schemes) under this node
    sections: int = 0                # leaves under this node (1 for a leaf)
    methods: list[str] = field(default_factory=list)
    schemes: list[str] = field(default_factory=list)  # registered schemes of this section
    papers: list[str] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)

    @property
    def planned(self) -> bool:
        return self.implemented == 0


def normalise_category(category: str) -> str:
    """``"Multi-Teacher"`` -> ``"multi_teacher"``: how categories are matched to sections."""
    return str(category).strip().lower().replace("-", "_").replace(" ", "_")


def survey_tree(methods: Registry = METHODS, schemes: Iterable[str] | None = None) -> list[SurveyNode]:
    """The survey's map, root first, then each chapter followed by its sections.

    ``schemes``: the schemes the trainer offers (default: those registered in
    ``workbench.registry.SCHEMES``).
    """
    from ..schemes import SCHEMES  # importing the package registers every scheme
    if schemes is None:
        schemes = SCHEMES.names()
    registered = set(SCHEMES.names())
    schemes_by_category: dict[str, list[str]] = {}  # a name that is no registered scheme is a category
    for name in schemes:
        category = SCHEMES.get(name).meta.get("category", name) if name in registered else name
        schemes_by_category.setdefault(normalise_category(category), []).append(name)
    by_category: dict[str, list] = {}
    for entry in methods:
        category = normalise_category(entry.meta.get("category", "uncategorised"))
        by_category.setdefault(category, []).append(entry)
    chapters = {key: (title, dict(sections)) for key, (title, sections) in CHAPTERS.items()}
    known = {section for _, sections in chapters.values() for section in sections}
    other = sorted(set(by_category) - known)
    if other:
        chapters["other"] = ("Other", {key: (key.replace("_", " ").capitalize(), "") for key in other})

    root = SurveyNode(ROOT, "", ROOT, "")
    nodes = [root]
    for chapter, (title, sections) in chapters.items():
        head = SurveyNode(chapter, ROOT, title, chapter)
        nodes.append(head)
        for key, (label, notebook) in sections.items():
            entries = by_category.get(key, [])
            offered = sorted(schemes_by_category.get(key, []))
            leaf = SurveyNode(f"{chapter}/{key}", chapter, label, key, sections=1,
                              implemented=len(entries) + len(offered),
                              methods=[e.name for e in entries], schemes=offered,
                              papers=[_cite(e.meta) for e in entries],
                              notebooks=sorted({e.meta.get("notebook") or notebook for e in entries}
                                               or ({notebook} if notebook else set())))
            nodes.append(leaf)
            for parent in (head, root):
                parent.implemented += leaf.implemented
                parent.sections += 1
                parent.methods += leaf.methods
    return nodes


def _cite(meta: dict) -> str:
    parts = [meta.get("paper", "")] + [str(meta[k]) for k in ("venue", "year") if meta.get(k)]
    return ", ".join(p for p in parts if p)
