"""English text every machine has: the docstrings of Python's standard library.

Benchmarks that need text (sentence embeddings, language-model perplexity) calibrate and train
on some modules' docstrings and evaluate on others, held out.
"""

from __future__ import annotations

import importlib
import inspect
import re


def docstrings(modules: tuple[str, ...]) -> list[str]:
    """The docstrings of `modules`, their classes and functions, and the classes' methods, in a
    fixed order (modules that fail to import are left out)."""
    docs: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found = [inspect.getdoc(module)]
        for _, member in inspect.getmembers(module):
            if getattr(member, "__module__", None) == module.__name__:
                found.append(inspect.getdoc(member))
                if inspect.isclass(member):
                    found += [inspect.getdoc(m) for _, m in inspect.getmembers(member)
                              if inspect.isfunction(m) and m.__module__ == module.__name__]
        docs += [d for d in found if d]
    return list(dict.fromkeys(docs))


def sentences(modules: tuple[str, ...], limit: int) -> list[str]:
    """English sentences of 6 to 40 words from the docstrings of `modules`."""
    seen: dict[str, None] = {}
    for doc in docstrings(modules):
        for paragraph in re.split(r"\n\s*\n", doc):
            text = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                letters = sum(ch.isalpha() or ch == " " for ch in sentence)
                if 6 <= len(words) <= 40 and letters > 0.85 * len(sentence):
                    seen.setdefault(sentence)
    return list(seen)[:limit]
