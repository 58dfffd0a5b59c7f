"""Text encodings for the natural federated datasets: Shakespeare characters, hashed bag of words.

- Characters: LEAF's Shakespeare task predicts the next character of an 80-character window
  (Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, §3; the task
  of McMahan et al., AISTATS 2017, §3). Inputs and labels are indices into one vocabulary,
  `SHAKESPEARE_CHARS` (the 80 characters LEAF's preprocessing keeps), plus one reserved index,
  `UNKNOWN_CHAR` = 80, for any other character: an encoded window is int64 in 0..80, and a
  model over it has 81 classes.
- Hashed bag of words (Sent140): each lower-cased token goes to bucket crc32(token) mod D, a
  hash that is the same in every process and on every machine (Python's `hash` of a string is
  salted per process, so it would give every run different features).
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable, Sequence

import numpy as np

# The 80 characters LEAF's Shakespeare preprocessing keeps, in index order: newline, space,
# punctuation, digits, upper case, lower case, and the closing brace. Index = position.
SHAKESPEARE_CHARS = ("\n !\"&'(),-.0123456789:;>?"
                     "ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}")
UNKNOWN_CHAR = len(SHAKESPEARE_CHARS)  # 80: every character outside the vocabulary
NUM_CHAR_CLASSES = UNKNOWN_CHAR + 1  # 81 token ids / output classes

_LOOKUP = np.full(128, UNKNOWN_CHAR, dtype=np.int64)  # ASCII code point -> index (the vocabulary is ASCII)
_LOOKUP[[ord(c) for c in SHAKESPEARE_CHARS]] = np.arange(len(SHAKESPEARE_CHARS))

assert len(SHAKESPEARE_CHARS) == 80 and len(set(SHAKESPEARE_CHARS)) == 80


def encode_chars(texts: Sequence[str], length: int | None = None) -> np.ndarray:
    """Map strings of equal length to their character indices.

    Args:
        texts: the windows (LEAF: 80 characters each).
        length: the length every string must have; None = that of the first.

    Returns:
        int64 array (len(texts), length); characters outside `SHAKESPEARE_CHARS` → `UNKNOWN_CHAR`.

    Raises:
        ValueError: if the strings differ in length (the message gives the first offender's index).
    """
    if not texts:
        return np.zeros((0, length or 0), dtype=np.int64)
    n = len(texts[0]) if length is None else length
    for i, t in enumerate(texts):
        if not isinstance(t, str) or len(t) != n:
            got = f"length {len(t)}" if isinstance(t, str) else type(t).__name__
            raise ValueError(f"example {i}: expected a string of {n} characters, got {got}")
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    out = np.where(codes < 128, _LOOKUP[np.minimum(codes, 127)], UNKNOWN_CHAR)
    return out.reshape(len(texts), n)


def encode_char_labels(labels: Sequence[str]) -> np.ndarray:
    """Map one-character strings (the next character) to their indices.

    Args:
        labels: the targets, one character each.

    Returns:
        int64 array (len(labels),).

    Raises:
        ValueError: if a label is not a single character.
    """
    return encode_chars(labels, 1).reshape(-1)


_TOKEN = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> list[str]:
    """The words of a text: lower-cased runs of letters, digits and apostrophes."""
    return _TOKEN.findall(text.lower())


def bucket(token: str, num_features: int) -> int:
    """The stable hash bucket of a token: crc32 of its UTF-8 bytes mod `num_features`."""
    return zlib.crc32(token.encode("utf-8")) % num_features


def hashed_bag_of_words(texts: Iterable[str], num_features: int) -> np.ndarray:
    """Term frequencies of hashed tokens: x[i, b] = (# tokens of text i in bucket b) / (# tokens of text i).

    Args:
        texts: the documents.
        num_features: D, the number of buckets.

    Returns:
        float32 array (n, D); a text without tokens is all zeros.
    """
    rows = [tokens(t) for t in texts]
    x = np.zeros((len(rows), num_features), dtype=np.float32)
    for i, words in enumerate(rows):
        if words:
            np.add.at(x[i], [bucket(w, num_features) for w in words], 1.0 / len(words))
    return x
