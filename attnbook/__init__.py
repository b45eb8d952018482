"""attnbook: a runnable textbook on multi-head attention."""
__version__ = "0.1.0"
