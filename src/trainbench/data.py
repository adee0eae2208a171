"""Token batches: the same batch for the same (seed, step) on every backend.

Synthetic data is a seeded first-order Markov chain over the vocabulary (each token has a few
likely successors), so the loss has something to learn and falls, unlike uniform noise. Real data
is a flat token file: a ``.npy`` array, or a raw ``.bin`` memmap of uint16/uint32 as nanoGPT
writes; each batch takes sequences at seeded random offsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainbench.errors import ConfigError

_SUCCESSORS = 4  # likely next tokens per token in the synthetic chain


class SyntheticTokens:
    """Deterministic batches from a seeded sparse Markov chain."""

    def __init__(self, vocab: int, batch_size: int, seq_len: int, seed: int) -> None:
        self.vocab, self.batch_size, self.seq_len, self.seed = vocab, batch_size, seq_len, seed
        rng = np.random.default_rng([seed, 0x5EED])
        self.successors = rng.integers(0, vocab, size=(vocab, _SUCCESSORS))  # [V, S]

    def batch(self, step: int) -> np.ndarray:
        """Tokens [batch_size, seq_len], int32."""
        rng = np.random.default_rng([self.seed, step])
        B, T = self.batch_size, self.seq_len
        tokens = np.empty((B, T), dtype=np.int32)
        tokens[:, 0] = rng.integers(0, self.vocab, size=B)
        choice = rng.integers(0, _SUCCESSORS, size=(B, T))
        noise = rng.random((B, T)) < 0.1  # 10% uniform tokens keep every id reachable
        uniform = rng.integers(0, self.vocab, size=(B, T))
        for t in range(1, T):
            nxt = self.successors[tokens[:, t - 1], choice[:, t]]
            tokens[:, t] = np.where(noise[:, t], uniform[:, t], nxt)
        return tokens


def open_token_file(path: str | Path, dtype: str = "uint16") -> np.ndarray:
    """Open a token file read-only (memory-mapped), checking it exists and has a token dtype."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.path={str(path)!r} does not exist or is not a file")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise ConfigError(f"data.path={str(path)!r} is not a readable .npy file: {err}") from err
        if tokens.dtype.kind not in "iu":
            raise ConfigError(f"data.path={str(path)!r} holds {tokens.dtype} values; "
                              "expected integer token ids (uint16, uint32, int32 or int64)")
        return tokens.reshape(-1)
    if dtype not in ("uint16", "uint32"):
        raise ConfigError(f"data.dtype={dtype!r} must be one of: uint16, uint32")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise ConfigError(f"data.path={str(path)!r} has {size} bytes, not a whole number of "
                          f"{dtype} tokens; is data.dtype right?")
    if size == 0:
        raise ConfigError(f"data.path={str(path)!r} is empty")
    return np.memmap(path, dtype=dtype, mode="r")


class TokenFile:
    """Batches of contiguous sequences at seeded random offsets into a token file."""

    def __init__(self, path: str | Path, dtype: str, vocab: int, batch_size: int, seq_len: int,
                 seed: int) -> None:
        self.tokens = open_token_file(path, dtype)
        self.path, self.batch_size, self.seq_len, self.seed = str(path), batch_size, seq_len, seed
        n = len(self.tokens)
        if n < seq_len:
            raise ConfigError(f"data.path={self.path!r} has {n} tokens, fewer than one sequence "
                              f"of train.seq_len={seq_len}")
        # Checking every id is O(file); a chunked max keeps memory flat on a large memmap.
        chunk = 1 << 24
        top = max(int(self.tokens[i:i + chunk].max()) for i in range(0, n, chunk))
        low = min(int(self.tokens[i:i + chunk].min()) for i in range(0, n, chunk))
        if top >= vocab or low < 0:
            raise ConfigError(f"data.path={self.path!r} has token ids in [{low}, {top}]; they "
                              f"must lie in [0, model.vocab={vocab})")

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len + 1, size=self.batch_size)
        return np.stack([np.asarray(self.tokens[s:s + self.seq_len], dtype=np.int32)
                         for s in starts])


def make_source(path: str | None, dtype: str, vocab: int, batch_size: int, seq_len: int,
                seed: int) -> SyntheticTokens | TokenFile:
    """The batch source a run's data config asks for (validates a token file up front)."""
    if path is None:
        return SyntheticTokens(vocab, batch_size, seq_len, seed)
    return TokenFile(path, dtype, vocab, batch_size, seq_len, seed)
