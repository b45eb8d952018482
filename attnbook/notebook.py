"""Set-up shared by every chapter notebook: seeds, threads and figure resolution."""

from __future__ import annotations

import os

import torch

__all__ = ["setup"]


def setup(seed: int = 0, dpi: int = 100) -> torch.device:
    """Seed torch, pin CPU threads to at most 2 (the book's reference machine), set figures
    to ``dpi``; return the device to use (GPU when present, else CPU)."""
    import matplotlib

    torch.manual_seed(seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    matplotlib.rcParams["figure.dpi"] = dpi
    matplotlib.rcParams["savefig.dpi"] = dpi
    try:  # inline figures as PNG in a live kernel
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # pragma: no cover - outside IPython
        pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
