"""Checks a Grafana dashboard's PromQL against the metrics a running system exports: names *and* labels.

A query that names an existing metric can still show nothing: a matcher on a label the metric does not carry
(``aura_equity{side="buy"}``), a ``service="risk"`` on a metric only the executor exports, a ``by (gate)`` over a
counter counted by reason, a ``histogram_quantile`` over buckets whose ``le`` an inner ``sum by (side)`` dropped,
or a legend ``{{service}}`` on a ``sum(...)`` that kept no label.  Prometheus answers each of these with an empty
result or an empty legend, never with an error, so only a check like this one finds them.

The check reads each expression with a small recursive-descent parser of the PromQL the dashboard uses and works
out, for every sub-expression, the set of labels its series carry; anything it does not understand (``on(...)``,
``label_replace``, an unknown function) is reported as unsupported rather than passed, so a new query cannot slip
through unchecked.  Label sets of binary operations are the intersection of their operands' (conservative).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Functions whose result carries the labels of their (one) vector argument; scalar parameters are allowed around it.
LABEL_KEEPING = frozenset({
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "changes", "resets", "abs", "ceil",
    "floor", "round", "clamp", "clamp_min", "clamp_max", "exp", "ln", "log2", "log10", "sqrt", "sgn", "timestamp",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "stddev_over_time", "stdvar_over_time", "present_over_time", "quantile_over_time", "absent_over_time",
})
AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "quantile", "topk",
                          "bottomk", "limitk"})  # count_values (a label named by a string) is not modelled
SELECTING = frozenset({"topk", "bottomk", "limitk"})  # they return whole input series, labels and all
SCALAR = None  # the label set of a scalar (a number, ``time()``, ``scalar(...)``)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}

TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<braces>\{(?:[^}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>==|!=|>=|<=|[-+*/%^<>(),@])
    )""", re.VERBOSE)
MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?""")
BINARY_OPS = frozenset({"+", "-", "*", "/", "%", "^", "==", "!=", ">=", "<=", ">", "<"})
BINARY_WORDS = frozenset({"and", "or", "unless"})
DURATION_UNIT = re.compile(r"ms|[smhdwy]")


@dataclass(frozen=True)
class Family:
    """One exported metric family as PromQL sees it: its type, every label its series carry (``service``
    included, ``le`` not: that one belongs to the ``_bucket`` series alone), and the services exporting it."""

    kind: str
    labels: frozenset[str]
    services: frozenset[str]


class Unsupported(Exception):
    """A construct this checker does not model: the query is reported, not silently passed."""


def resolve(name: str, families: Mapping[str, Family]) -> tuple[str, Family, str] | None:
    """(family name, family, series suffix) a series name selects, or None when no exported family has it.
    A counter is only queryable as ``<family>_total`` and a histogram only through ``_bucket/_sum/_count``:
    the bare family name holds no series in Prometheus."""
    found = families.get(name)
    if found is not None and found.kind not in SUFFIXES:
        return name, found, ""
    for kind, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            family = families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
            if family is not None and family.kind == kind:
                return name.removesuffix(suffix), family, suffix
    return None


class _Query:
    def __init__(self, expr: str, families: Mapping[str, Family]) -> None:
        self.expr, self.families = expr, families
        self.tokens = self._tokenize(expr)
        self.i = 0
        self.problems: list[str] = []

    @staticmethod
    def _tokenize(expr: str) -> list[tuple[str, str]]:
        out, pos = [], 0
        while pos < len(expr.rstrip()):
            m = TOKEN.match(expr, pos)
            if m is None or m.end() == pos:
                raise Unsupported(f"cannot read {expr[pos:pos + 20]!r}")
            kind = m.lastgroup or ""
            out.append((kind, m.group(kind)))
            pos = m.end()
        return out

    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end" or (value is not None and token[1] != value):
            raise Unsupported(f"expected {value or 'more'} at token {self.i}, got {token[1]!r}")
        self.i += 1
        return token

    # --- grammar: expr := unary (binop unary)* ; the label sets of binary operands are intersected --------------

    def expression(self) -> frozenset[str] | None:
        labels = self.unary()
        while self.peek() in {("op", o) for o in BINARY_OPS} | {("name", w) for w in BINARY_WORDS}:
            self.take()
            if self.peek() == ("name", "bool"):
                self.take()
            if self.peek()[0] == "name" and self.peek()[1] in ("on", "ignoring", "group_left", "group_right"):
                raise Unsupported(f"vector matching with {self.peek()[1]}(...)")
            right = self.unary()
            labels = right if labels is SCALAR else labels if right is SCALAR else labels & right
        return labels

    def unary(self) -> frozenset[str] | None:
        if self.peek() in (("op", "-"), ("op", "+")):
            self.take()
        labels = self.primary()
        while self.peek()[0] == "range" or self.peek() in (("name", "offset"), ("op", "@")):
            if self.take()[0] == "range":  # a range or a subquery: the series keep their labels
                continue
            if self.peek() == ("op", "-"):  # offset -5m
                self.take()
            if self.peek()[0] != "number":
                raise Unsupported("offset or @ without a literal")
            self.take()  # 5m reads as the number 5 and the name m (1h30m is not read: reported as unsupported)
            if self.peek()[0] == "name" and DURATION_UNIT.fullmatch(self.peek()[1]):
                self.take()
        return labels

    def primary(self) -> frozenset[str] | None:
        kind, value = self.take()
        if kind == "number" or kind == "string":
            return SCALAR
        if (kind, value) == ("op", "("):
            labels = self.expression()
            self.take(")")
            return labels
        if kind == "braces":
            raise Unsupported("a selector without a metric name")
        if kind != "name":
            raise Unsupported(f"unexpected {value!r}")
        if value in AGGREGATIONS:
            return self.aggregation(value)
        if self.peek() == ("op", "("):
            return self.function(value)
        return self.selector(value)

    def arguments(self) -> list[frozenset[str] | None]:
        self.take("(")
        args = []
        while self.peek() != ("op", ")"):
            args.append(self.expression())
            if self.peek() == ("op", ","):
                self.take()
        self.take(")")
        return args

    def grouping(self) -> tuple[str, list[str]] | None:
        if self.peek()[0] != "name" or self.peek()[1] not in ("by", "without"):
            return None
        how = self.take()[1]
        self.take("(")
        names = []
        while self.peek() != ("op", ")"):
            names.append(self.take()[1])
            if self.peek() == ("op", ","):
                self.take()
        self.take(")")
        return how, names

    def aggregation(self, op: str) -> frozenset[str] | None:
        group = self.grouping()
        args = self.arguments()
        group = group or self.grouping()
        vectors = [a for a in args if a is not SCALAR]
        if len(vectors) != 1:
            raise Unsupported(f"{op}(...) over {len(vectors)} vectors")
        inner = vectors[0]
        if group is not None:
            missing = sorted(set(group[1]) - inner)
            if missing:
                self.problems.append(f"{op} {group[0]} ({', '.join(group[1])}): {', '.join(missing)} is no label of "
                                     f"its argument (labels: {', '.join(sorted(inner)) or 'none'})")
        if op in SELECTING:
            return inner
        if group is None:
            return frozenset()
        return frozenset(group[1]) if group[0] == "by" else inner - frozenset(group[1])

    def function(self, name: str) -> frozenset[str] | None:
        args = self.arguments()
        vectors = [a for a in args if a is not SCALAR]
        if name in ("time", "scalar", "pi"):
            return SCALAR
        if name in ("vector", "absent"):
            return frozenset()
        if name == "histogram_quantile":
            if len(vectors) != 1:
                raise Unsupported("histogram_quantile without one vector")
            if "le" not in vectors[0]:
                self.problems.append("histogram_quantile over series without an le label (an inner aggregation "
                                     "dropped it, or no _bucket series)")
            return vectors[0] - {"le"}
        if name in LABEL_KEEPING and len(vectors) == 1:
            return vectors[0]
        raise Unsupported(f"function {name}(...)")

    def selector(self, name: str) -> frozenset[str] | None:
        matchers = self.take()[1][1:-1] if self.peek()[0] == "braces" else ""
        found = resolve(name, self.families)
        if found is None:
            self.problems.append(f"{name}: no service exports this series")
            return frozenset()
        family_name, family, suffix = found
        labels = family.labels | ({"le"} if suffix == "_bucket" else set())
        pos = 0
        while pos < len(matchers.strip()):
            m = MATCHER.match(matchers, pos)
            if m is None or m.end() == pos:
                raise Unsupported(f"matchers {matchers!r}")
            pos = m.end()
            label, op, quoted = m.group(1), m.group(2), m.group(3)[1:-1]
            if label != "__name__" and label not in labels:
                self.problems.append(f"{name}{{{label}{op}...}}: {family_name} has no label {label} "
                                     f"(labels: {', '.join(sorted(labels))})")
            elif label == "service" and "$" not in quoted:  # a Grafana variable's value is not known here
                exporting = sorted(family.services)
                if op in ("=", "!=") and quoted not in family.services:
                    self.problems.append(f'{name}{{service{op}"{quoted}"}}: {family_name} is exported by '
                                         f"{', '.join(exporting)} only")
                elif op == "=~" and not any(re.fullmatch(quoted, s) for s in exporting):
                    self.problems.append(f'{name}{{service=~"{quoted}"}}: matches none of {", ".join(exporting)}')
        return frozenset(labels)


def check_query(expr: str, families: Mapping[str, Family], legend: str = "") -> list[str]:
    """Every problem of ``expr`` (empty: it selects existing series by existing labels); ``legend`` is the panel
    target's legendFormat, whose ``{{label}}`` must be labels the query's result keeps."""
    try:
        query = _Query(expr, families)
        labels = query.expression()
        if query.peek()[0] != "end":
            raise Unsupported(f"trailing {query.peek()[1]!r}")
    except Unsupported as exc:
        return [f"{expr}: not understood by tests/promql_labels.py ({exc})"]
    problems = query.problems
    for label in re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend):
        if labels is SCALAR or label not in labels:
            problems.append(f"legend {{{{{label}}}}}: the result keeps no {label} label "
                            f"(it keeps: {', '.join(sorted(labels or ())) or 'none'})")
    return [f"{expr}: {p}" for p in problems]


def families_from(exposed: Mapping[str, Iterable[tuple[str, str, Iterable[Mapping[str, str]]]]],
                  declared: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, Family]:
    """Families as the running services export them.  ``exposed``: service -> (family name, type, each sample's
    labels) as the OpenMetrics parser read its /metrics; ``declared``: family name -> (type, labels besides
    ``service``) from shared/metrics.py.  A family's labels are its samples' where it has any; a labelled
    family none of whose series fired yet exposes no sample, so its declared labels (plus ``service``) stand in."""
    kinds: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    services: dict[str, set[str]] = {}
    for service, families in exposed.items():
        for name, kind, samples in families:
            kinds[name] = kind
            services.setdefault(name, set()).add(service)
            seen = labels.setdefault(name, set())
            for sample in samples:
                seen.update(k for k in sample if k != "le")
    out = {}
    for name, kind in kinds.items():
        found = labels[name]
        if not found and name in declared:
            found = {"service", *declared[name][1]}
        out[name] = Family(kind, frozenset(found), frozenset(services[name]))
    return out
