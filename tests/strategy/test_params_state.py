"""Parameter set and signal state: the documents the live services store and hot-reload."""

from __future__ import annotations

import json

import msgspec
import pytest

from aura.strategy.packing import FLOAT_FIELDS, INT_FIELDS, pack_params
from aura.strategy.params import FIELDS, INT_PARAMS, PARAM_RANGES, StrategyParams, params_digest, validate_params
from aura.strategy.state import SignalState


def test_every_field_has_a_range_and_its_default_lies_inside() -> None:
    assert set(PARAM_RANGES) == set(FIELDS)
    defaults = StrategyParams()
    validate_params(defaults)
    for name, (lo, hi) in PARAM_RANGES.items():
        assert lo <= getattr(defaults, name) <= hi, name


def test_every_field_crosses_into_numba_exactly_once() -> None:
    assert sorted(INT_FIELDS + FLOAT_FIELDS) == sorted(FIELDS)
    assert set(INT_FIELDS) == INT_PARAMS
    ints, floats = pack_params(StrategyParams(top_k=7, stop_loss=0.2))
    assert ints[INT_FIELDS.index("top_k")] == 7
    assert floats[FLOAT_FIELDS.index("stop_loss")] == 0.2


def test_hot_reload_from_a_json_document() -> None:
    doc = json.loads(json.dumps({"top_k": 5, "stop_loss": 0.1, "w_trend": 0.0}))
    p = msgspec.convert(doc, StrategyParams)
    assert (p.top_k, p.stop_loss, p.w_trend, p.momentum_lookback) == (5, 0.1, 0.0, 30)
    assert msgspec.json.decode(msgspec.json.encode(p), type=StrategyParams) == p
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"top_k": "three"}, StrategyParams)


def test_validate_refuses_out_of_range_and_inverted_breadth() -> None:
    with pytest.raises(ValueError, match="top_k"):
        validate_params(StrategyParams(top_k=0))
    with pytest.raises(ValueError, match="breadth_bear"):
        validate_params(StrategyParams(breadth_bull=0.5, breadth_bear=0.5 + 1e-9))


def test_params_digest_is_a_content_id() -> None:
    assert params_digest(StrategyParams()) == params_digest(StrategyParams())
    assert params_digest(StrategyParams()) != params_digest(StrategyParams(top_k=4))


def test_params_are_frozen() -> None:
    with pytest.raises(AttributeError):
        StrategyParams().top_k = 4  # type: ignore[misc]


def test_signal_state_round_trips_through_json() -> None:
    s = SignalState(regime="sideways", candidate="bull", candidate_count=1, last_timestamp=1_700_000_000_000)
    assert SignalState.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert SignalState.from_dict({}) == SignalState()
    with pytest.raises(ValueError):
        SignalState(regime="moon")
    with pytest.raises(ValueError):
        SignalState(candidate="up")
