"""matplotlib for the studies' PNG plots: loaded on demand, Agg backend.

matplotlib is the optional ``sim`` extra, so a study checks for it before a
run (``load_pyplot``) and users without it get one line, not a traceback.
"""

from pathlib import Path
from typing import Any

from hopchain.errors import ConfigError

__all__ = ["load_pyplot", "save_figure"]


def load_pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed).

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "plots need matplotlib: pip install 'hopchain[sim]' (or use --no-plots)"
        ) from exc
    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Lay out ``fig``, write it to ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    load_pyplot().close(fig)
    return path
