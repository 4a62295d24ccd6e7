"""The dashboard, the alert rules and the docs name only metrics goblet exposes.

``goblet.observe.metrics.Metrics`` is the single source of truth for metric names. This
module reads every PromQL expression in the Grafana dashboard, in the Prometheus
alert rules and in the docs, and checks metric names, label names, label values
and function names against it; and, the other way round, that every goblet
metric is documented and on the dashboard.

Every markdown file of the repository is checked too: each ``goblet_*`` name
it mentions is a real metric or option, each option has its own row in the
README's options table, and each relative link leads to a file that exists and
an anchor that a heading there makes.

PromQL is parsed loosely with regular expressions (``parse_promql``): strings are
set aside first, then selectors ``{…}``, ranges ``[…]`` and grouping clauses
``by (…)``; what is left are function names (followed by ``(``), keywords and
metric names. The parser's own tests show that it catches what it should.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from goblet import options as gopts
from goblet.observe import metrics as gm
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "loadtest/grafana/dashboards/goblet.json"
ALERTS = ROOT / "loadtest/prometheus/alerts.yml"
PROMETHEUS_CONFIG = ROOT / "loadtest/prometheus/prometheus.yml"
DATASOURCE = ROOT / "loadtest/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDER = ROOT / "loadtest/grafana/provisioning/dashboards/goblet.yml"
METRICS_DOC = ROOT / "docs/reference/metrics.md"
_NOT_DOCS = {"node_modules", "__pycache__", "cache"}


def markdown_files() -> list[Path]:
    """Every markdown file of the repository (hidden directories and caches aside)."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_DOCS)
        found += [Path(top) / f for f in files if f.endswith(".md")]
    return sorted(found)


ALL_DOCS = markdown_files()
# Benchmark scenario names (docs/benchmarks.md's tables), not metrics or options.
BENCH_LABELS = frozenset(re.findall(r"\"(goblet_\w+)\"",
                                    (ROOT / "bench" / "scenarios.py").read_text()))
MONITORING_DOC = ROOT / "docs/operations/monitoring.md"

QUESTIONS = ("Is it up?", "Is it hitting?", "What is it saving?")
# Labels Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = frozenset({"job", "instance"})
# Prometheus's own series that may appear next to goblet's.
PROMETHEUS_SERIES = frozenset({"up"})
# Every option goblet declares.
OPTIONS = {spec.name: spec for spec in gopts.OPTIONS}
STATUS_CLASSES = tuple(sorted({gm.status_class(s) for s in (None, *range(100, 600))}))
# The values of each label, by label name ...
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "kind": gm.KINDS,
    "outcome": gm.OUTCOMES,
    "result": gm.FILL_RESULTS,
    "source": gm.SOURCES,
    "status": STATUS_CLASSES,
}
# ... except in families whose label of the same name has values of its own.
FAMILY_LABEL_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "goblet_repacks": {"kind": gm.REPACK_KINDS, "result": gm.REPACK_RESULTS},
    "goblet_pack_cache_requests": {"result": gm.PACK_CACHE_RESULTS},
    "goblet_request_bodies": {"result": gm.BODY_RESULTS},
    "goblet_store_restores": {"result": gm.STORE_RESTORES},
    "goblet_store_publishes": {"result": gm.STORE_PUBLISHES},
    "goblet_store_bytes": {"direction": gm.STORE_DIRECTIONS},
    "goblet_store_duration_seconds": {"operation": gm.STORE_OPERATIONS},
    "goblet_fleet_lease_waits": {"result": gm.LEASE_RESULTS},
    "goblet_fleet_degraded": {"part": gm.FLEET_PARTS},
    "goblet_webhooks": {"result": gm.WEBHOOK_RESULTS},
    "goblet_lfs_downloads": {"result": gm.LFS_DOWNLOADS},
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
# The name a family is documented under: what users type in queries.
PRIMARY_SUFFIX = {"counter": "_total", "gauge": "", "histogram": "", "summary": "", "info": "_info"}
# PromQL 2.42 functions and aggregation operators.
PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year", "sum", "min", "max",
    "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"
})
PROMQL_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "atan2", "inf", "nan"
})


# -- the registry --------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One registered metric family as Prometheus sees it."""

    name: str  # the family name prometheus_client uses (no _total)
    type: str
    labels: frozenset[str]

    @property
    def exposed(self) -> tuple[str, ...]:
        """Every sample name this family can put in the exposition."""
        return tuple(self.name + s for s in SUFFIXES[self.type])

    @property
    def primary(self) -> str:
        """The name the docs use as the heading of this family."""
        return self.name + PRIMARY_SUFFIX[self.type]


def registry_families() -> dict[str, Family]:
    """Family name → Family, for a freshly built ``goblet.observe.metrics.Metrics``."""
    m = gm.Metrics()
    # Label names of families without samples yet (not pre-initialised) are only on
    # the wrapper objects; prometheus_client keeps them in ``_labelnames``.
    declared: dict[str, frozenset[str]] = {}
    for wrapper in vars(m).values():
        names = getattr(wrapper, "_labelnames", None)
        if names is not None:
            declared[wrapper._name] = frozenset(names)
    families: dict[str, Family] = {}
    for fam in m.registry.collect():
        labels = set(declared.get(fam.name, ()))
        for sample in fam.samples:
            labels |= set(sample.labels) - {"le"}
        families[fam.name] = Family(fam.name, fam.type, frozenset(labels))
    return families


FAMILIES = registry_families()
EXPOSED: dict[str, Family] = {n: f for f in FAMILIES.values() for n in f.exposed}
GOBLET_FAMILIES = sorted((f for f in FAMILIES.values() if f.name.startswith("goblet_")),
                         key=lambda f: f.name)


# -- a loose PromQL reader -----------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*\x00(\d+)\x00")
_IDENT = re.compile(r"(?<![\w.:$\x00])([A-Za-z_:][\w:]*)(?![\w\x00])(\s*\()?")
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Matcher:
    """``label op "value"`` inside the selector of ``metric`` (None: no metric name)."""

    metric: str | None
    label: str
    op: str
    value: str


@dataclass
class Query:
    """What one PromQL expression refers to."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    matchers: list[Matcher] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    """Metric names, functions, label matchers and grouping labels of ``expr``.

    Raises ValueError for a selector it cannot read (so a typo cannot hide).
    """
    strings: list[str] = []

    def stash(m: re.Match[str]) -> str:
        strings.append(_UNESCAPE.sub(r"\1", m.group(0)[1:-1]))
        return f"\x00{len(strings) - 1}\x00"

    text = _STRING.sub(stash, expr)
    q = Query()

    def selector(m: re.Match[str]) -> str:
        name, body = m.group(1), m.group(2)
        if name and name not in PROMQL_KEYWORDS:
            q.metrics.add(name)
        else:
            name = None
        for part in filter(None, (p.strip() for p in body.split(","))):
            mm = _MATCHER.fullmatch(part)
            if mm is None:
                raise ValueError(f"unreadable label matcher {part!r} in {expr!r}")
            label, op, value = mm.group(1), mm.group(2), strings[int(mm.group(3))]
            if label == "__name__" and op == "=":
                q.metrics.add(value)
            q.matchers.append(Matcher(name, label, op, value))
        return f" {name or ''} "

    text = _SELECTOR.sub(selector, text)
    text = _RANGE.sub(" ", text)

    def grouping(m: re.Match[str]) -> str:
        q.grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
        return " "

    text = _GROUPING.sub(grouping, text)
    text = _PLACEHOLDER.sub(" ", text)
    for m in _IDENT.finditer(text):
        word = m.group(1)
        if m.group(2):
            q.functions.add(word)
        elif word not in PROMQL_KEYWORDS:
            q.metrics.add(word)
    return q


def check_expr(where: str, expr: str) -> list[str]:
    """Problems with one expression: unknown metrics, functions, labels or values."""
    try:
        q = parse_promql(expr)
    except ValueError as e:
        return [f"{where}: {e}"]
    problems = [f"{where}: unknown metric {n!r}" for n in sorted(q.metrics)
                if n not in EXPOSED and n not in PROMETHEUS_SERIES]
    problems += [f"{where}: unknown function {f!r}" for f in sorted(q.functions - PROMQL_FUNCTIONS)]
    known_labels = set(TARGET_LABELS) | {"le"} | {x for f in FAMILIES.values() for x in f.labels}
    problems += [f"{where}: grouping by unknown label {x!r}"
                 for x in sorted(q.grouping - known_labels)]
    for m in q.matchers:
        problems += _check_matcher(where, m)
    return problems


def label_values(family: Family | None, label: str) -> tuple[str, ...] | None:
    """The values ``label`` takes in ``family`` (None: not an enum label).

    Without a family (a selector with no metric name, or not one of goblet's),
    a value of that label in any family is accepted.
    """
    if family is not None:
        return FAMILY_LABEL_VALUES.get(family.name, {}).get(label, LABEL_VALUES.get(label))
    tables = [LABEL_VALUES, *FAMILY_LABEL_VALUES.values()]
    if not any(label in t for t in tables):
        return None
    return tuple(dict.fromkeys(v for t in tables for v in t.get(label, ())))


def _check_matcher(where: str, m: Matcher) -> list[str]:
    if m.label == "__name__":
        return []
    family = EXPOSED.get(m.metric or "")
    if family is not None:
        allowed = set(family.labels) | TARGET_LABELS
        if m.metric and m.metric.endswith("_bucket"):
            allowed.add("le")
        if m.label not in allowed:
            return [f"{where}: {m.metric} has no label {m.label!r}"]
    values = label_values(family, m.label)
    if values is None:
        return []
    if m.op in ("=", "!="):
        bad = [] if m.value in values else [m.value]
    else:  # each alternative of a regex matcher must match a value
        bad = [a for a in m.value.split("|") if not any(re.fullmatch(a, v) for v in values)]
    return [f"{where}: {m.label}={a!r} is not one of {values}" for a in bad]


def test_parser_finds_metrics_functions_labels_and_grouping() -> None:
    q = parse_promql(
        'histogram_quantile(0.95, sum by (le, kind) (rate('
        'goblet_request_duration_seconds_bucket{job="$job", kind=~"fetch|ls_refs"}'
        '[$__rate_interval]))) > bool 1e3 offset 5m'
    )
    assert q.metrics == {"goblet_request_duration_seconds_bucket"}
    assert q.functions == {"histogram_quantile", "sum", "rate"}
    assert q.grouping == {"le", "kind"}
    assert Matcher("goblet_request_duration_seconds_bucket", "kind", "=~", "fetch|ls_refs") \
        in q.matchers


def test_parser_sees_every_operand_and_ignores_strings() -> None:
    q = parse_promql(
        'a_total / on (job, instance) group_left (x) b:recorded unless c '
        'or label_replace(d, "dst_metric", "$1 not_a_metric", "src", "(.*)") '
        'and {__name__="e_total", x!~"y"}'
    )
    assert q.metrics == {"a_total", "b:recorded", "c", "d", "e_total"}
    assert q.grouping == {"job", "instance", "x"}


def test_parser_refuses_an_unreadable_selector() -> None:
    with pytest.raises(ValueError, match="unreadable label matcher"):
        parse_promql("goblet_requests_total{kind=fetch}")


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ('sum(rate(goblet_fake_total[5m]))', "unknown metric 'goblet_fake_total'"),
        ('sum(rate(goblet_requests[5m]))', "unknown metric 'goblet_requests'"),
        ('{__name__="goblet_hidden_fake"}', "unknown metric 'goblet_hidden_fake'"),
        ('goblet_requests_total{outcome="hit"}', "outcome='hit' is not one of"),
        ('goblet_fills_total{result=~"ok|timeout"}', "result='timeout' is not one of"),
        ('goblet_fills_total{outcome="ok"}', "has no label 'outcome'"),
        ('goblet_upstream_requests_total{status="200"}', "status='200' is not one of"),
        ('rates(goblet_requests_total[5m])', "unknown function 'rates'"),
        ('sum by (repo) (goblet_cache_bytes)', "grouping by unknown label 'repo'"),
        # A label name two families share, with values of the other family.
        ('goblet_repacks_total{kind="fetch"}', "kind='fetch' is not one of"),
        ('goblet_repacks_total{result=~"ok|local_error"}', "result='local_error' is not one of"),
        ('goblet_pack_cache_requests_total{result="ok"}', "result='ok' is not one of"),
        ('goblet_fills_total{result="hit"}', "result='hit' is not one of"),
        ('goblet_requests_total{kind="full"}', "kind='full' is not one of"),
        ('{result="evicted"}', "result='evicted' is not one of"),
    ],
)
def test_checker_catches_mistakes(expr: str, complaint: str) -> None:
    problems = check_expr("example", expr)
    assert any(complaint in p for p in problems), problems


def test_checker_accepts_real_expressions() -> None:
    assert check_expr("example", 'sum(rate(goblet_requests_total{kind="fetch",'
                                 'outcome="cache"}[1m])) / sum(up{job="goblet"})') == []
    assert check_expr("example", 'increase(goblet_repacks_total{kind="full", result="error"}'
                                 '[1h]) + on () sum(goblet_pack_cache_requests_total{'
                                 'result=~"follow|hit"}) + count({result="skipped"})') == []


def test_label_value_tables_cover_the_registry() -> None:
    """Every label value a fresh registry exports is one the checker allows."""
    for fam in gm.Metrics().registry.collect():
        family = FAMILIES[fam.name]
        for sample in fam.samples:
            for label, value in sample.labels.items():
                values = label_values(family, label)
                assert values is None or value in values, (sample.name, label, value)
    for name, table in FAMILY_LABEL_VALUES.items():
        assert set(table) <= FAMILIES[name].labels, name


# -- the files -----------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for p in items:
        yield p
        yield from panels(p.get("panels", ()))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel query and every query variable."""
    out = []
    for p in panels(dashboard()["panels"]):
        for t in p.get("targets", ()):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert m, f"variable {v['name']}: expected label_values(selector, label)"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = _yaml(ALERTS)["groups"]
    return [rule for g in groups for rule in g["rules"]]


def markdown_promql(path: Path) -> list[tuple[str, str]]:
    """PromQL in a markdown file: ```promql blocks and inline code that queries a metric."""
    text = path.read_text(encoding="utf-8")
    out = []
    for i, block in enumerate(re.findall(r"```promql\n(.*?)```", text, re.S)):
        out.append((f"{path.name} promql block {i + 1}", block))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        # A query, not a name with its label names (`x_bucket{kind, le}`).
        if re.search(r"\b(goblet|process)_\w+", span) and re.search(r'[(\[]|=~?"', span):
            out.append((f"{path.name} `{span}`", span))
    return out


def mentioned_names(path: Path) -> set[str]:
    """Every goblet_*/process_* word in a file (file names such as goblet_addon.py aside)."""
    return set(re.findall(r"\b((?:goblet|process)_[a-z0-9_]+)\b(?!\.py)",
                          path.read_text(encoding="utf-8")))


def sections(path: Path) -> dict[str, str]:
    """Markdown heading → text up to the next heading of the same or a higher level."""
    text = path.read_text(encoding="utf-8")
    fences = [m.span() for m in re.finditer(r"^```.*?^```", text, re.M | re.S)]
    heads = [h for h in re.finditer(r"^(#{1,6}) (.*)$", text, re.M)
             if not any(a <= h.start() < b for a, b in fences)]  # not a shell comment
    out = {}
    for i, h in enumerate(heads):
        level = len(h.group(1))
        end = len(text)
        for later in heads[i + 1:]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        out[h.group(2).strip()] = text[h.end():end]
    return out


# -- names and labels used are real --------------------------------------------------


def test_dashboard_queries_use_only_real_metrics_and_labels() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 10
    problems = [p for where, expr in exprs for p in check_expr(where, expr)]
    assert problems == []


def test_alert_expressions_use_only_real_metrics_and_labels() -> None:
    rules = alert_rules()
    assert rules
    problems = [p for r in rules for p in check_expr(f"alert {r['alert']}", r["expr"])]
    assert problems == []


@pytest.mark.parametrize("doc", [METRICS_DOC, MONITORING_DOC], ids=lambda p: p.name)
def test_docs_queries_use_only_real_metrics_and_labels(doc: Path) -> None:
    exprs = markdown_promql(doc)
    assert exprs, f"{doc.name} shows no PromQL"
    problems = [p for where, expr in exprs for p in check_expr(where, expr)]
    assert problems == []


def unknown_names(doc: Path) -> set[str]:
    """goblet_*/process_* words of ``doc`` that are neither metrics nor options."""
    families = {f.primary for f in FAMILIES.values()}  # a histogram's own name, too
    return mentioned_names(doc) - set(EXPOSED) - families - set(OPTIONS) - BENCH_LABELS


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_real_metrics_and_options(doc: Path) -> None:
    unknown = unknown_names(doc)
    assert unknown == set(), f"{doc.name} names metrics or options that do not exist: " \
                             f"{sorted(unknown)}"


def test_every_markdown_file_is_checked() -> None:
    names = {str(p.relative_to(ROOT)) for p in ALL_DOCS}
    assert {"README.md", "loadtest/README.md", "examples/README.md",
            "docs/operations/cache.md", "docs/reference/metrics.md",
            "docs/operations/exposure.md"} <= names
    assert not any(part.startswith(".") for n in names for part in Path(n).parts)


def test_the_name_check_catches_a_fake_name_in_prose(tmp_path: Path) -> None:
    fake = tmp_path / "doc.md"
    fake.write_text("The `goblet_requests_total` counter, goblet_fake_bytes_total, the "
                    "`goblet_upstream_request_duration_seconds` histogram, "
                    "`--set goblet_verdict_tll=5m`, `goblet_repack_threads` and "
                    "addon/goblet_addon.py.\n")
    assert unknown_names(fake) == {"goblet_fake_bytes_total", "goblet_verdict_tll",
                                   "goblet_upstream_request_duration_seconds"}


def options_table() -> dict[str, str]:
    """Option name → its row in the README's options table."""
    body = sections(ROOT / "README.md")["Options"]
    rows = re.findall(r"^\| `(goblet_\w+)` \|(.*)$", body, re.M)
    return {name: row for name, row in rows}


def test_every_option_has_a_readme_row_with_its_default() -> None:
    table = options_table()
    assert sorted(table) == sorted(OPTIONS), "options without a row, or rows without an option"
    for name, spec in OPTIONS.items():
        default = ",".join(spec.default) if isinstance(spec.default, list) else spec.default
        if default:
            assert f"`{default}`" in table[name].split("|")[0], f"{name}: default {default!r}"


@pytest.mark.parametrize(("name", "bounds"), [
    ("goblet_verdict_ttl", ("`0` to `1h`",)), ("goblet_negative_ttl", ("`0` to `1d`",)),
    ("goblet_offline_grace", ("`1s` to `30d`",)), ("goblet_upstream_timeout", ("`1s` to `1d`",)),
    ("goblet_full_repack_interval", ("`1m` to `365d`",)),
    ("goblet_warm_interval", ("`10s` to `1d`",)), ("goblet_repack_threads", ("`1` to `64`",)),
    ("goblet_metrics_port", ("`0` to `65535`",)), ("goblet_prefix_port", ("`0` to `65535`",)),
    ("goblet_request_body_timeout", ("`1s` to `1h`",)),
    ("goblet_max_partitions", ("`0` to `100000`",)),
])
def test_readme_ranges_are_the_parsers(name: str, bounds: tuple[str, ...]) -> None:
    """The stated range is the one options.py enforces: its ends parse, one step beyond fails."""
    row = options_table()[name]
    for text in bounds:
        assert text in row, f"{name}: {text} not stated"
        low, high = re.findall(r"`([^`]+)`", text)
        assert _parses(name, low) and _parses(name, high), f"{name}: {low} or {high} refused"
        assert not _parses(name, str(_units(high) + 1)), f"{name}: more than {high} accepted"
        if _units(low) > 0:
            assert not _parses(name, str(_units(low) - 1)), f"{name}: less than {low} accepted"


def _parses(name: str, value: str) -> bool:
    """Whether options.py accepts ``value`` for ``name`` (every other option at its default)."""
    values = {k: spec.default for k, spec in OPTIONS.items()} | {name: value}
    try:
        gopts.parse_settings(type("Options", (), values)())
    except ValueError:
        return False
    return True


def _units(value: str) -> int:
    """``value`` in plain units: seconds for a duration (``1h`` → 3600), else the number."""
    m = re.fullmatch(r"([0-9]+)([smhd]?)", value)
    assert m is not None, value
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


# -- links and anchors in every markdown file -----------------------------------------


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file (duplicate headings get -1, -2…)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``path`` to a missing file, a missing anchor, or out of ``root``."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    problems = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (dest.is_dir() or dest.suffix != ".md"):
            problems.append(f"{target}: an anchor into something that is not markdown")
        elif anchor and anchor not in anchors(dest):
            problems.append(f"{target}: no heading makes #{anchor}")
        elif not dest.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
    return problems


# Broken links in files this change may not edit, with the fix handed on. The test
# fails once such a link is fixed, so the entry cannot outlive it.
KNOWN_BROKEN: dict[str, list[str]] = {}


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(doc: Path) -> None:
    assert broken_links(doc) == KNOWN_BROKEN.get(str(doc.relative_to(ROOT)), [])


def test_the_link_check_catches_broken_links(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.md").write_text("# Other\n\n## Known limits\n\n## `x_y` (HTTP/2)\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](sub/other.md#known-limits) [ok](#same-1) [ok](sub/other.md#x_y-http2) "
        "[ok](sub/) [web](https://example.com/x#y) ![img](sub/other.md)\n"
        "[gone](sub/missing.md) [anchor](sub/other.md#known-issues) [self](#nowhere)\n"
        "`[code](nope.md)`\n\n```\n[fenced](nope.md)\n```\n[up](../elsewhere.md)\n")
    (tmp_path.parent / "elsewhere.md").write_text("# Elsewhere\n")
    assert broken_links(doc, root=tmp_path) == ["sub/missing.md: no such file",
                                 "sub/other.md#known-issues: no heading makes #known-issues",
                                 "#nowhere: no heading makes #nowhere",
                                 "../elsewhere.md: outside the repository"]


# -- every metric is documented and on the dashboard ---------------------------------


@pytest.mark.parametrize("family", GOBLET_FAMILIES, ids=lambda f: f.primary)
def test_metric_is_documented_with_its_labels_and_values(family: Family) -> None:
    heading = next((h for h in sections(METRICS_DOC) if f"`{family.primary}`" in h), None)
    assert heading is not None, f"metrics.md has no heading for `{family.primary}`"
    body = sections(METRICS_DOC)[heading]
    assert family.type in body.lower(), f"{family.primary}: the type ({family.type}) is not named"
    values = sections(METRICS_DOC)["Label values"]
    for label in family.labels:
        assert f"`{label}`" in body, f"{family.primary}: label `{label}` is not documented"
        for value in label_values(family, label) or ():
            assert f"`{value}`" in values, f"Label values: {label} value `{value}` missing"
    for name in family.exposed:
        if name != family.primary and not name.endswith("_created"):
            assert name in body, f"{family.primary}: {name} is not explained"


def test_process_metrics_are_documented() -> None:
    process = {n for n in EXPOSED if n.startswith("process_")}
    assert process, "the registry lost its process collector"
    doc = mentioned_names(METRICS_DOC)
    assert "process_resident_memory_bytes" in doc
    assert doc & process == {n for n in doc if n.startswith("process_")}


def test_docs_explain_why_there_are_no_repo_labels() -> None:
    per_repo = next((b for h, b in sections(METRICS_DOC).items() if h == "Per-repo data"), None)
    assert per_repo is not None
    for needle in ("grep", "jq", "outcome=", "tenant="):
        assert needle in per_repo


@pytest.mark.parametrize("family", GOBLET_FAMILIES, ids=lambda f: f.primary)
def test_metric_is_on_the_dashboard(family: Family) -> None:
    used = set()
    for p in panels(dashboard()["panels"]):
        for t in p.get("targets", ()):
            used |= parse_promql(t["expr"]).metrics
    assert used & set(family.exposed), f"no dashboard panel shows {family.primary}"


# -- shape of the dashboard, the rules and the provisioning ---------------------------


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 36
    assert d["uid"] and d["title"]
    (ds,) = [v for v in d["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    provisioned = _yaml(DATASOURCE)["datasources"][0]
    assert ds["current"]["value"] == provisioned["uid"]
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels(d["panels"]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert any(q in p.get("description", "") for q in QUESTIONS), \
            f"panel {p['title']!r}: the description names no operator question"
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]


def test_dashboard_has_the_panels_operators_need() -> None:
    titles = " | ".join(p["title"] for p in panels(dashboard()["panels"]))
    for needle in ("Request rate by outcome", "Cache hit ratio (fetch)", "p50 / p95 / p99",
                   "Upstream bytes avoided", "Fills by result", "Fill duration",
                   "Fills in flight", "Disk used", "Free disk", "Errors",
                   "Verdict cache entries", "RSS", "Ready", "Pack-cache answers by role",
                   "without a pack generation", "Stored pack-cache answers", "Evictions",
                   "Repacks by kind and result"):
        assert needle in titles


def test_alert_rules_shape() -> None:
    (group,) = _yaml(ALERTS)["groups"]
    assert group["name"] == "goblet"
    names = [r["alert"] for r in group["rules"]]
    for required in ("GobletDown", "GobletNotReady", "GobletLowHitRatio", "GobletFillFailures",
                     "GobletUpstreamErrors", "GobletDiskHigh", "GobletDiskGrowth",
                     "GobletRepackFailures"):
        assert required in names
    for r in group["rules"]:
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_prometheus_config_scrapes_goblet_and_loads_the_rules() -> None:
    config = _yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "goblet"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    for rule in alert_rules():
        assert 'job="goblet"' in rule["expr"], rule["alert"]


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provider = _yaml(DASHBOARD_PROVIDER)["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    source = _yaml(DATASOURCE)["datasources"][0]
    assert source["type"] == "prometheus" and source["name"] == "prometheus"
