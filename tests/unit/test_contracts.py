import msgspec
import pytest

from shared.contracts import (
    ABORT_STAGES,
    SCHEMA_VERSION,
    STREAMS,
    ApprovedPlan,
    ContractError,
    CycleAborted,
    DataReady,
    PlanBody,
    PlanLeg,
    canonical_bytes,
    decode,
    encode,
    plan_id_for,
    stream_of,
    subject_of,
)


def _body(**over: object) -> PlanBody:
    fields: dict[str, object] = {
        "cycle_id": "1d-20240101T0000", "as_of_ms": 1, "data_digest": "d", "target_id": "t", "params_version": 3,
        "params_digest": "pd", "basis_snapshot_id": "s-1", "gate": "pass", "halted": False,
        "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.1, 40000.0, "enter")], "reasons": [],
        "prices": {"ETH/USDT": 2000.0, "BTC/USDT": 40000.0},
    }
    fields.update(over)
    return PlanBody(plan_id=plan_id_for(fields), **fields)  # type: ignore[arg-type]


def test_roundtrip_keeps_every_field() -> None:
    ready = DataReady(cycle_id="c", timeframe="1d", as_of_ms=5, digest="ab", symbols=["BTC/USDT"], bars=3, markets=[])
    assert decode(encode(ready), DataReady) == ready


def test_wrong_version_is_refused_with_reason() -> None:
    raw = msgspec.json.decode(encode(DataReady(cycle_id="c", timeframe="1d", as_of_ms=5, digest="ab", symbols=[],
                                               bars=0, markets=[])))
    raw["v"] = SCHEMA_VERSION + 1
    with pytest.raises(ContractError, match="unsupported schema version"):
        decode(msgspec.json.encode(raw), DataReady)


@pytest.mark.parametrize("payload", [b"not json", b"{}", b'{"v":1,"cycle_id":5}', b"[1,2]"])
def test_malformed_is_refused(payload: bytes) -> None:
    with pytest.raises(ContractError):
        decode(payload, DataReady)


def test_plan_id_is_a_content_hash_independent_of_dict_order() -> None:
    a = _body(prices={"ETH/USDT": 2000.0, "BTC/USDT": 40000.0})
    b = _body(prices={"BTC/USDT": 40000.0, "ETH/USDT": 2000.0})
    assert a.plan_id == b.plan_id
    assert canonical_bytes(a) == canonical_bytes(b)
    assert _body(params_version=4).plan_id != a.plan_id


def test_every_subject_belongs_to_exactly_one_stream() -> None:
    subjects = [s for spec in STREAMS for s in spec.subjects]
    assert len(subjects) == len(set(subjects))
    for kind in (DataReady, ApprovedPlan):
        assert stream_of(kind.SUBJECT)
    # Each stage's abort notices go on its own subject, which the plans stream stores.
    for stage in ABORT_STAGES:
        subject = subject_of(CycleAborted(cycle_id="c", stage=stage, reason="r"))
        assert subject == f"aura.plans.aborted.{stage}" and stream_of(subject) == "AURA_PLANS"
    with pytest.raises(KeyError):
        stream_of("aura.plans.aborted")  # the bare prefix is no subject any stage publishes on
    with pytest.raises(KeyError):
        stream_of("aura.nowhere")
