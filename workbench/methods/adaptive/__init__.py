"""Adaptive distillation (survey chapter 3.6): what the student learns from changes as it trains.

CTKD (a learned, adversarial temperature) is a per-batch loss and lives here as a method; the
teacher-assistant chain (TAKD), early-stopped teachers and early-stopped distillation (Cho &
Hariharan) are sequences of ordinary runs and live in :mod:`workbench.adaptive`.
"""
