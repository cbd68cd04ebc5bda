import numpy as np
import pytest

from aura.strategy.types import Panel
from shared.candles import decode_panel, digest, encode_panel


def _panel(seed: int = 0) -> Panel:
    rng = np.random.default_rng(seed)
    close = rng.uniform(1, 100, size=(5, 3))
    close[0, 2] = np.nan
    return Panel(("A/USDT", "B/USDT", "C/USDT"), np.arange(5, dtype=np.int64) * 86_400_000, close, close, close,
                 close, close)


def test_roundtrip_is_exact_including_nan() -> None:
    p = _panel()
    back = decode_panel(encode_panel(p))
    assert back.symbols == p.symbols
    np.testing.assert_array_equal(back.timestamps, p.timestamps)
    np.testing.assert_array_equal(back.close, p.close)


def test_digest_is_stable_and_content_sensitive() -> None:
    assert digest(encode_panel(_panel())) == digest(encode_panel(_panel()))
    other = _panel()
    other.close[4, 1] += 1e-9
    assert digest(encode_panel(other)) != digest(encode_panel(_panel()))


def test_truncated_blob_is_refused() -> None:
    blob = encode_panel(_panel())
    with pytest.raises(ValueError, match="expected"):
        decode_panel(blob[:-8])
