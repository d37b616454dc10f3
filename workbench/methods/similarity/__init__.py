"""Similarity-based distillation (survey chapter 1.3): the student matches relations (between
samples, channels or layers) of the teacher's features rather than the features themselves."""
