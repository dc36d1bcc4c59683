"""Character-level text: next-character prediction over windows of a text, the task of Karpathy's char-rnn and of
nanoGPT's shakespeare_char, here for depth-scaling Transformers (one token per character: no tokenizer to fetch).

The default text is the Python standard library's own help topics (`pydoc_data.topics`, what `help("if")` prints,
the topics' texts joined in sorted key order): 464,970 characters and 103 distinct symbols on Python 3.11, on every
machine, without a download. It changes between Python versions, so a run logs the SHA-256 and size of the exact
text it trained on (`Corpus.details`); for a file the SHA-256 is that of its bytes, what `sha256sum FILE` prints.
Any UTF-8 file can be used instead (option `path`).

- The vocabulary is the sorted distinct characters of the whole text, both parts, so every character of the
  held-out part has an id (one that only the held-out part contains is one the net can only learn to find unlikely).
- The text is split by position: the first round(n x (1 - test_fraction)) characters train, the rest is held out.
  The held-out part is reslab's `test` split, the one every run evaluates and reports; there is no third part.
- An example is a window of `seq_len` characters; its targets are the same window shifted by one character. An
  epoch of training is `steps_per_epoch` batches of windows at positions drawn at random (with replacement, from
  the run's seed); an evaluation covers the held-out part once, in non-overlapping windows (its last characters,
  fewer than `seq_len`, are left over).
- Counts (`DATASET_INFO["text"].sizes`): training examples are the distinct training windows (n_train - seq_len),
  test examples the evaluation windows ((n_test - 1) // seq_len); no validation examples.

Everything but `load_text` is torch-free: the catalog reads shapes, counts and problems from here without torch, and
the text is read once per file version (path, modification time, size) and process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reslab.paths import PathError, read_text

if TYPE_CHECKING:
    from reslab.data.tensors import Splits

#: The options and their defaults (the catalog states them; a test holds them equal to `load_text`'s signature).
DEFAULTS: dict[str, Any] = {"path": None, "seq_len": 64, "steps_per_epoch": 100, "test_fraction": 0.1}


class TextError(ValueError):
    """The text or the options cannot make the dataset: the message says which and how to fix it, in one line."""


@dataclass(frozen=True)
class Corpus:
    """A text as read, with what identifies it: where from, its SHA-256 (of its UTF-8 bytes) and its vocabulary."""

    text: str
    source: str
    sha256: str
    vocab: str  # the sorted distinct characters

    def split_point(self, test_fraction: float) -> int:
        """The number of leading characters that train; the rest is held out."""
        return round(len(self.text) * (1.0 - float(test_fraction)))

    def details(self, test_fraction: float) -> dict[str, str | int]:
        """What a run logs about the text (as `data.<key>` params)."""
        cut = self.split_point(test_fraction)
        return {"source": self.source, "sha256": self.sha256, "chars": len(self.text), "vocab_size": len(self.vocab),
                "train_chars": cut, "test_chars": len(self.text) - cut}  # fmt: skip


def read_corpus(path: str | None) -> Corpus:
    """The text of the UTF-8 file `path` (relative to the working directory), or Python's pydoc topics for None.
    TextError if the file is missing, a folder, unreadable, not UTF-8 or empty."""
    if path is None:
        return _pydoc_corpus()
    full = os.path.abspath(os.path.expanduser(path))
    try:
        stat = os.stat(full)
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None  # read_text says what is wrong
    return _file_corpus(full, version, path)


@functools.lru_cache(maxsize=1)
def _pydoc_corpus() -> Corpus:
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    return _corpus(text, f"pydoc_data.topics (Python {platform.python_version()})")


@functools.lru_cache(maxsize=8)
def _file_corpus(full: str, version: tuple[int, int] | None, given: str) -> Corpus:
    try:
        text = read_text(full)
    except PathError as exc:  # a file that is not UTF-8 is told how to fix it already
        fix = "" if "UTF-8" in str(exc) else "; name a readable UTF-8 text file, or leave path unset (pydoc topics)"
        raise TextError(f"path={given}: {exc}{fix}") from None
    if not text:
        raise TextError(f"path={given}: the file is empty; name a UTF-8 text file with at least two windows of text")
    return _corpus(text, full)


def _corpus(text: str, source: str) -> Corpus:
    return Corpus(text, source, hashlib.sha256(text.encode("utf-8")).hexdigest(), "".join(sorted(set(text))))


def _whole(value: object) -> int | None:
    """`value` as a positive whole number, or None (pydantic has checked it is a number already)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        return None
    return int(value) if value > 0 else None


def text_problem(options: dict[str, Any]) -> str | None:
    """Why `options` (every option, defaults filled in) cannot make the dataset, in one line, or None: a length or
    step count that is not a positive whole number, a fraction outside (0, 1), a file that cannot be read as UTF-8
    text, a text of one distinct character, or a part shorter than one window and its targets (seq_len + 1)."""
    seq_len, steps, fraction, path = (options[k] for k in ("seq_len", "steps_per_epoch", "test_fraction", "path"))
    if _whole(seq_len) is None:
        return f"seq_len must be a positive whole number of characters, got {seq_len!r}"
    if _whole(steps) is None:
        return f"steps_per_epoch must be a positive whole number of training steps, got {steps!r}"
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        return f"test_fraction must be a number between 0 and 1 (the held-out share of the text), got {fraction!r}"
    if path is not None and (not isinstance(path, str) or not path.strip()):
        return f"path must name a UTF-8 text file (or be left unset for Python's pydoc topics), got {path!r}"
    try:
        corpus = read_corpus(path)
    except TextError as exc:
        return str(exc)
    where = f"path={path}" if path is not None else corpus.source
    if len(corpus.vocab) < 2:
        return f"{where}: the text has a single distinct character, so there is nothing to predict"
    cut, window = corpus.split_point(fraction), int(seq_len) + 1
    for part, n in (("training part (the first", cut), ("held-out part (the last", len(corpus.text) - cut)):
        if n < window:
            return (f"{where}: its {part} {n} characters) is shorter than one window and its targets (seq_len + 1 = "
                    f"{window} characters): use a longer text, a smaller seq_len or another test_fraction")  # fmt: skip
    return None


def text_meta(options: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """((seq_len,), vocabulary size): the input shape and the number of classes."""
    return (int(options["seq_len"]),), len(read_corpus(options["path"]).vocab)


def text_counts(options: dict[str, Any]) -> tuple[int, int, int]:
    """(distinct training windows, 0, evaluation windows of the held-out part)."""
    corpus, seq_len = read_corpus(options["path"]), int(options["seq_len"])
    cut = corpus.split_point(options["test_fraction"])
    return cut - seq_len, 0, (len(corpus.text) - cut - 1) // seq_len


def load_text(
    path: str | None = None, seq_len: int = 64, steps_per_epoch: int = 100, test_fraction: float = 0.1
) -> Splits:
    """The text as one int64 token sequence per part: training `Windows` of every position, an epoch being
    `steps_per_epoch` random batches of them; test `Windows` that tile the held-out part."""
    import numpy as np
    import torch

    from reslab.data.tensors import Splits, Windows

    options = {"path": path, "seq_len": seq_len, "steps_per_epoch": steps_per_epoch, "test_fraction": test_fraction}
    problem = text_problem(options)
    if problem:
        raise TextError(problem)
    corpus, seq_len = read_corpus(path), int(seq_len)
    # Characters to ids in one vectorised pass: code points, then their ranks in the sorted vocabulary.
    codes = np.frombuffer(corpus.text.encode("utf-32-le"), dtype="<u4")
    vocab = np.frombuffer(corpus.vocab.encode("utf-32-le"), dtype="<u4")
    tokens = torch.from_numpy(np.searchsorted(vocab, codes).astype(np.int64))
    cut = corpus.split_point(test_fraction)
    return Splits(
        name="text",
        train=Windows(tokens[:cut], seq_len),
        test=Windows(tokens[cut:], seq_len, stride=seq_len),
        val=None,
        input_shape=(seq_len,),
        num_classes=len(corpus.vocab),
        train_steps=int(steps_per_epoch),
        details=corpus.details(test_fraction),
    )
