"""Synthetic tasks: every data set in the book is generated, seeded, in a few milliseconds."""
from .associative_recall import RecallBatch, associative_recall

__all__ = ["RecallBatch", "associative_recall"]
