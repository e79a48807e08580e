"""Length-sorted chunking of token id lists under a row and padded-token budget; ORT options."""

from __future__ import annotations

import numpy as np
import pytest

from molret.engine.runtime import length_chunks


def test_chunks_cover_every_row_once_in_length_order() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 257, size=500).tolist()
    chunks = length_chunks(lengths, max_rows=64, max_tokens=4096)
    flat = np.concatenate(chunks)
    assert sorted(flat.tolist()) == list(range(500))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for chunk in chunks:
        assert len(chunk) <= 64
        assert len(chunk) == 1 or len(chunk) * max(lengths[i] for i in chunk) <= 4096


def test_long_row_runs_alone_and_empty_input() -> None:
    assert [c.tolist() for c in length_chunks([5000, 3], 8, 4096)] == [[1], [0]]
    assert length_chunks([], 8, 4096) == []


def test_short_rows_fill_up_to_max_rows() -> None:
    chunks = length_chunks([10] * 100, max_rows=32, max_tokens=4096)
    assert [len(c) for c in chunks] == [32, 32, 32, 4]


@pytest.mark.parametrize(
    ("mode", "text", "molecule"),
    [(None, True, False), ("all", True, True), ("1", True, True), ("none", False, False),
     ("0", False, False)],
)  # fmt: skip
def test_spinning_per_tower(monkeypatch, mode, text, molecule) -> None:  # type: ignore[no-untyped-def]
    from molret.engine.runtime import spinning_allowed

    if mode is None:
        monkeypatch.delenv("MOLRET_ORT_SPINNING", raising=False)
    else:
        monkeypatch.setenv("MOLRET_ORT_SPINNING", mode)
    assert spinning_allowed("text") is text
    assert spinning_allowed("molecule") is molecule


def test_no_spinning_reaches_the_session_options() -> None:
    from molret.engine.runtime import _session_options

    key = "session.intra_op.allow_spinning"
    assert _session_options(2, spinning=False).get_session_config_entry(key) == "0"
    with pytest.raises(Exception, match="does not have configuration"):  # ORT's default: spin
        _session_options(2, spinning=True).get_session_config_entry(key)
