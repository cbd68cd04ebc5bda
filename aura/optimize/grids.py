"""The four staged grids of the walk-forward optimizer, read from one TOML file and checked against params.py.

The shipped file is ``aura/optimize/grids.toml`` (``load_grids()`` without a path reads it through
importlib.resources, so it works from a wheel too).  Every name is checked against ``StrategyParams``,
``PARAM_RANGES`` and ``INT_PARAMS`` when the file is loaded, and every error names the file, the stage and
the key, because a typo in a grid would otherwise silently optimise nothing.

Stage order is the design's: (1) composite-score weights, (2) screen thresholds, (3) regime and hysteresis,
(4) risk.  ``Stage.expand(base)`` gives the stage's candidates around ``base``; the coordinator passes the
previous stage's winner as ``base``, which is how each stage fixes the winners of the one before.
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from aura.strategy.params import (
    FIELDS,
    INT_PARAMS,
    PARAM_RANGES,
    PARAMS_TIMEFRAME,
    StrategyParams,
    param_ranges,
    scale_value,
    timeframe_factor,
    validate_tradable,
)

STAGE_NAMES: tuple[str, ...] = ("score_weights", "screen", "regime", "risk")
_STAGE_KEYS = frozenset({"name", "title", "grid", "pending"})
_TOP_KEYS = frozenset({"timeframe", "base", "stage"})
SUPPORTED_TIMEFRAMES = ("1d", "4h", "1h")

Value = int | float
Axis = tuple[str, tuple[Value, ...]]


class GridError(ValueError):
    """A grid file that cannot be used; the message names the file, the stage and the key."""


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    axes: tuple[Axis, ...]  # (parameter, values) in file order: the product's order
    pending: tuple[Axis, ...] = ()  # parameters params.py does not define yet: listed, not evaluated
    timeframe: str = PARAMS_TIMEFRAME  # the bars the values count (the run's): what they are validated for

    @property
    def size(self) -> int:
        """Number of combinations (before StrategyParams refuses any)."""
        n = 1
        for _, values in self.axes:
            n *= len(values)
        return n

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def _combinations(self, base: StrategyParams) -> list[tuple[dict[str, Value], StrategyParams | str]]:
        out: list[tuple[dict[str, Value], StrategyParams | str]] = []
        for combo in itertools.product(*(values for _, values in self.axes)):
            changes = dict(zip(self.names, combo, strict=True))
            params = msgspec.structs.replace(base, **changes)
            try:
                validate_tradable(params, self.timeframe)
            except ValueError as exc:
                out.append((changes, str(exc)))
                continue
            out.append((changes, params))
        return out

    def expand(self, base: StrategyParams) -> tuple[StrategyParams, ...]:
        """Every valid combination of this stage's values on top of ``base``, in product order.

        A stage without axes has one candidate, ``base`` itself.  Raises GridError if ``base`` leaves no
        valid combination (e.g. every breadth_bull in the grid lies below the base's breadth_bear).
        """
        found = tuple(p for _, p in self._combinations(base) if isinstance(p, StrategyParams))
        if not found:
            raise GridError(f"stage {self.name!r}: no combination is a valid parameter set on this base "
                            f"({self.refusals(base)[:1]})")
        return found

    def refusals(self, base: StrategyParams) -> list[str]:
        """Why combinations were left out of ``expand(base)`` (for the report)."""
        return [f"{changes}: {why}" for changes, why in self._combinations(base) if isinstance(why, str)]


@dataclass(frozen=True)
class Grids:
    stages: tuple[Stage, ...]
    base: tuple[tuple[str, Value], ...]  # applied to the starting parameters before stage 1
    source: str  # where the grids came from, for the report
    timeframe: str = PARAMS_TIMEFRAME  # the run's bars: every value above is counted in them

    def apply_base(self, params: StrategyParams) -> StrategyParams:
        out = msgspec.structs.replace(params, **dict(self.base))
        try:
            validate_tradable(out, self.timeframe)
        except ValueError as exc:
            raise GridError(f"{self.source}: [base] makes an invalid parameter set: {exc}") from exc
        return out

    def start_from(self, incumbent: StrategyParams, defaults: StrategyParams) -> StrategyParams:
        """Where every selection starts: each knob a stage searches at ``defaults`` (fixed before any data was
        seen), every other knob as the ``incumbent`` has it (the operator's own choices, never searched).  Started
        from a promoted incumbent, a stage ranked its candidates with the later stages' knobs at values chosen on
        bars that are this run's validation windows, so its out-of-sample record was not (found by an audit)."""
        searched = sorted({name for stage in self.stages for name in stage.names})
        start = msgspec.structs.replace(incumbent, **{name: getattr(defaults, name) for name in searched})
        try:  # as the selections will open it: with [base] on top (SelectionState applies it)
            validate_tradable(msgspec.structs.replace(start, **dict(self.base)), self.timeframe)
        except ValueError as exc:  # a grid that searches one of two linked knobs (a cap without its cooldown)
            raise GridError(f"{self.source}: the searched knobs at their defaults and the incumbent's other knobs "
                            f"make an invalid set ({exc}); search linked knobs together or put them in [base]"
                            ) from exc
        return start

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages are {[s.name for s in self.stages]}")

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(name for s in self.stages for name, _ in s.pending)


def shipped_grids_text() -> str:
    return resources.files("aura.optimize").joinpath("grids.toml").read_text(encoding="utf-8")


def load_grids(path: str | Path | None = None, timeframe: str = PARAMS_TIMEFRAME) -> Grids:
    """The grids of ``path``, or the shipped ones when ``path`` is None, for a run on ``timeframe`` bars."""
    if path is None:
        return parse_grids(shipped_grids_text(), "aura/optimize/grids.toml (shipped)", timeframe)
    return parse_grids(Path(path).read_text(encoding="utf-8"), str(path), timeframe)


def parse_grids(text: str, source: str = "<grids>", timeframe: str = PARAMS_TIMEFRAME) -> Grids:
    """The grids of ``text`` for a run on ``timeframe`` bars.  The file's ``timeframe`` (default 1d) says which bars
    its values count; each is checked against that timeframe's ranges, then brought to the run's bars as
    params.rescale does (a 30-bar daily lookback is 720 bars on 1h), so the shipped daily lists search the same
    durations on every timeframe and never run hourly with daily bar counts."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise GridError(f"{source}: unknown top-level key {unknown[0]!r} (allowed: timeframe, [base] and "
                        "[[stage]])")
    counted_in = doc.get("timeframe", PARAMS_TIMEFRAME)
    for which, tf in (("the file's timeframe", counted_in), ("the run's timeframe", timeframe)):
        if tf not in SUPPORTED_TIMEFRAMES:
            raise GridError(f"{source}: {which} {tf!r} is not one of {list(SUPPORTED_TIMEFRAMES)}")
    units = _Units(param_ranges(counted_in), timeframe_factor(counted_in, timeframe), param_ranges(timeframe), source,
                   timeframe)
    base_doc = doc.get("base", {})
    if not isinstance(base_doc, Mapping):
        raise GridError(f"{source}: [base] must be a table of parameter = value")
    base = tuple((name, units.run(name, _check_value(source, "[base]", name, value, units.ranges)))
                 for name, value in base_doc.items())
    stages_doc = doc.get("stage", [])
    if not isinstance(stages_doc, list):
        raise GridError(f"{source}: stages must be an array of tables ([[stage]])")
    names = [s.get("name") if isinstance(s, Mapping) else None for s in stages_doc]
    if tuple(names) != STAGE_NAMES:
        raise GridError(f"{source}: the stages must be {list(STAGE_NAMES)} in this order, found {names}")
    stages = tuple(_parse_stage(source, s, units, timeframe) for s in stages_doc)
    seen: dict[str, str] = {}
    for stage in stages:
        for name in stage.names:
            if name in seen:
                raise GridError(f"{source}: parameter {name!r} is in stage {seen[name]!r} and in stage "
                                f"{stage.name!r}; a later stage would undo the winner of the earlier one")
            seen[name] = stage.name
    return Grids(stages, base, source, timeframe)


@dataclass(frozen=True)
class _Units:
    ranges: Mapping[str, tuple[float, float]]  # of the bars the file counts in
    factor: float  # run bars per file bar
    run_ranges: Mapping[str, tuple[float, float]]  # of the run's bars
    source: str
    timeframe: str  # the run's

    def run(self, name: str, value: Value) -> Value:
        scaled = scale_value(name, value, self.factor)
        out: Value = int(scaled) if name in INT_PARAMS else float(scaled)
        lo, hi = self.run_ranges[name]
        if not lo <= out <= hi:  # a daily 365-bar window is 8,760 hourly bars, past what a 1h snapshot carries
            raise GridError(f"{self.source}: {name!r} = {value!r} is {out!r} in {self.timeframe} bars, outside its "
                            f"range there [{lo}, {hi}] (param_ranges in aura/strategy/params.py)")
        return out

    def axis(self, name: str, values: tuple[Value, ...]) -> tuple[Value, ...]:
        # Two file values may land on one run value (hourly counts brought to days): kept once, in file order.
        return tuple(dict.fromkeys(self.run(name, v) for v in values))


def _parse_stage(source: str, doc: Mapping[str, Any], units: _Units, timeframe: str) -> Stage:
    name = str(doc["name"])
    where = f"stage {name!r}"
    unknown = sorted(set(doc) - _STAGE_KEYS)
    if unknown:
        raise GridError(f"{source}: {where}: unknown key {unknown[0]!r} (allowed: {sorted(_STAGE_KEYS)})")
    grid, pending_doc = doc.get("grid", {}), doc.get("pending", {})
    for key, table in (("grid", grid), ("pending", pending_doc)):
        if not isinstance(table, Mapping):
            raise GridError(f"{source}: {where}: [stage.{key}] must be a table of parameter = [values]")
    axes: list[Axis] = []
    for param, values in grid.items():
        _check_name(source, where, param)
        axes.append((param, units.axis(param, _check_values(source, where, param, values, units.ranges))))
    pending: list[Axis] = []
    for param, values in pending_doc.items():
        if param in grid:
            raise GridError(f"{source}: {where}: {param!r} is both in the grid and pending")
        if param in FIELDS:  # params.py defines it now: it joins the grid, checked like any other knob
            axes.append((param, units.axis(param, _check_values(source, where, param, values, units.ranges))))
        elif not isinstance(values, list) or not values:
            raise GridError(f"{source}: {where}: pending {param!r} must be a non-empty list of values")
        elif close := [f for f in difflib.get_close_matches(param, FIELDS, n=1, cutoff=0.85)
                       if abs(len(f) - len(param)) <= 1]:  # one letter off: take_profit_2 may be a knob to come
            # A pending knob is listed and never evaluated: a typo of a defined one would silently search nothing.
            raise GridError(f"{source}: {where}: pending {param!r} looks like the defined parameter {close[0]!r}; "
                            "a defined parameter belongs under [stage.grid] (a knob params.py does not define yet "
                            "needs a name of its own)")
        else:
            pending.append((param, tuple(values)))
    return Stage(name, str(doc.get("title", name)), tuple(axes), tuple(pending), timeframe)


def _check_name(source: str, where: str, name: str) -> None:
    if name in FIELDS and name in PARAM_RANGES:
        return
    if name in FIELDS:
        raise GridError(f"{source}: {where}: parameter {name!r} has no range in PARAM_RANGES, so the optimizer "
                        "may not vary it")
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise GridError(f"{source}: {where}: unknown parameter {name!r}{hint}; a knob that params.py does not define "
                    "yet belongs under [stage.pending]")


def _check_values(source: str, where: str, name: str, values: Any,
                  ranges: Mapping[str, tuple[float, float]]) -> tuple[Value, ...]:
    if not isinstance(values, list) or not values:
        raise GridError(f"{source}: {where}: {name!r} must be a non-empty list of values, got {values!r}")
    out = tuple(_check_value(source, where, name, v, ranges) for v in values)
    if len(set(out)) != len(out):
        raise GridError(f"{source}: {where}: {name!r} lists a value twice: {list(values)}")
    return out


def _check_value(source: str, where: str, name: str, value: Any, ranges: Mapping[str, tuple[float, float]]) -> Value:
    _check_name(source, where, name)
    lo, hi = ranges[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GridError(f"{source}: {where}: {name!r} = {value!r} is not a number")
    if name in INT_PARAMS:
        if not isinstance(value, int):
            raise GridError(f"{source}: {where}: {name!r} = {value!r} must be a whole number (an integer knob)")
        checked: Value = int(value)
    else:
        checked = float(value)  # 1 and 1.0 must give the same parameter set (and the same digest)
    if not lo <= checked <= hi:
        raise GridError(f"{source}: {where}: {name!r} = {value!r} is outside its range [{lo}, {hi}] "
                        "(PARAM_RANGES in aura/strategy/params.py)")
    return checked
