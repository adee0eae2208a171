import numpy as np
import pytest

from trainbench import data
from trainbench.errors import ConfigError


def test_synthetic_is_deterministic_and_in_range():
    a = data.SyntheticTokens(vocab=50, batch_size=3, seq_len=17, seed=1)
    b = data.SyntheticTokens(vocab=50, batch_size=3, seq_len=17, seed=1)
    x = a.batch(5)
    assert x.shape == (3, 17) and x.dtype == np.int32
    np.testing.assert_array_equal(x, b.batch(5))
    assert not np.array_equal(x, a.batch(6))
    assert x.min() >= 0 and x.max() < 50


def test_synthetic_has_structure_to_learn():
    # Most transitions follow the chain's successor table, so the data is far from uniform.
    src = data.SyntheticTokens(vocab=64, batch_size=16, seq_len=64, seed=0)
    x = src.batch(0)
    follows = (src.successors[x[:, :-1]] == x[:, 1:, None]).any(-1)
    assert follows.mean() > 0.85


@pytest.mark.parametrize("suffix, dtype", [(".bin", "uint16"), (".bin", "uint32"), (".npy", None)])
def test_token_file_batches(tmp_path, suffix, dtype):
    tokens = (np.arange(1000) % 97).astype(dtype or "int32")
    path = tmp_path / f"tok{suffix}"
    if suffix == ".npy":
        np.save(path, tokens)
    else:
        tokens.tofile(path)
    src = data.TokenFile(path, dtype or "uint16", vocab=97, batch_size=4, seq_len=10, seed=0)
    x = src.batch(3)
    assert x.shape == (4, 10)
    for seq in x:  # contiguous slices of the file
        start = int(np.where(tokens == seq[0])[0][0])
        assert np.array_equal((np.arange(10) + start) % 97, seq)
    np.testing.assert_array_equal(x, src.batch(3))


def test_token_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        data.TokenFile(tmp_path / "missing.bin", "uint16", 10, 1, 4, 0)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ConfigError, match="not a whole number of uint16 tokens"):
        data.TokenFile(odd, "uint16", 10, 1, 1, 0)
    floats = tmp_path / "f.npy"
    np.save(floats, np.zeros(10, dtype=np.float32))
    with pytest.raises(ConfigError, match="holds float32 values"):
        data.TokenFile(floats, "uint16", 10, 1, 4, 0)
    short = tmp_path / "short.bin"
    np.arange(5, dtype=np.uint16).tofile(short)
    with pytest.raises(ConfigError, match="has 5 tokens, fewer than one sequence of train.seq_len=8"):
        data.TokenFile(short, "uint16", 10, 1, 8, 0)
    big = tmp_path / "big.bin"
    np.array([1, 2, 300], dtype=np.uint16).tofile(big)
    with pytest.raises(ConfigError, match=r"token ids in \[1, 300\]; they must lie in \[0, model.vocab=256\)"):
        data.TokenFile(big, "uint16", 256, 1, 2, 0)
    with pytest.raises(ConfigError, match="data.dtype='int8'"):
        data.TokenFile(big, "int8", 256, 1, 2, 0)
