"""The claims ledger: ``benchmarks/claims.yaml`` (published claims, and where the zoo's result files test them)
rendered with ``benchmarks/results/*.json`` into ``benchmarks/CLAIMS.md``.

``python -m benchmarks.claims [claims=FILE] [results_dir=DIR] [out=FILE]`` (``python -m benchmarks.render``
writes it too, beside the leaderboard).

Every verdict is computed from the numbers by the rule below; none is typed by hand.

Verdict rule
------------

Each test of a claim reads two numbers out of result files: **A**, the method the claim is about, and **B**, what
it is compared with (another method, or the paper's own number when the claim is that a number reproduces). The
effect is (A - B) / |B| (`effect: relative`, the default) or A - B (`effect: difference`); where a file holds
per-seed values, A and B are the means over seeds.

1. The 95% interval of A - B comes from the first of these that applies:
   - (a) the interval the result file carries (`interval:`, e.g. a paired bootstrap of A - B), as it is;
   - (b) per-seed values (at least 2 on a side; a paper's number counts as exact): Welch's t interval of the
     difference of the means;
   - (c) otherwise a single run on at least one side. A single run has no measured uncertainty, so it is given
     a 95% half-width of 25% of its value m; where the test names its number of test users n and m lies in
     [0, 1], the half-width is 1.96 * sqrt(m (1 - m) / n) when that is larger (an upper bound on the
     test-sampling error of a mean of per-user values in [0, 1]). A side with per-seed values keeps its t
     half-width, a paper's number has none, and the half-widths add in quadrature (the two numbers' errors are
     taken as not negatively correlated). The 25% is about four times the seed-to-seed spread of the zoo's only
     multi-seed comparison (coefficient of variation 6.4% of SASRec's test NDCG@10 on MovieLens-100K, 3 seeds,
     `peer_sasrec_ml100k.json`), because a run under a wall-clock cap on a shared machine varies more than a
     seeded re-run. So two single runs get a verdict only when they differ by more than about 30% (A below B)
     to 45% (A above B) of B, and a single run can show that a number fails to reproduce, never that it does.

   For a relative effect the interval is divided by |B|.
2. The claim's `expect` says what the paper reports; p is the paper's effect, in the same units, when it gives one:
   - `greater` (A beats B): **holds** if the interval lies above 0 and its upper end reaches p/2; **does not hold
     at this budget** if its upper end is below 0, or below p/2 (with 95% confidence the effect is in the other
     direction, or less than half the paper's); **inconclusive** otherwise. Without a p, only the sign counts.
   - `less` (A is below B): the mirror image of `greater`.
   - `within` (A reproduces B within ±tolerance): **holds** if the interval lies inside [-tolerance,
     +tolerance]; **does not hold at this budget** if it lies entirely outside; **inconclusive** otherwise.
   - `at_most` (A exceeds B by at most the tolerance, e.g. a cost overhead): **holds** if the upper end is at
     most the tolerance; **does not hold at this budget** if the lower end is above it; **inconclusive** otherwise.

   An inconclusive verdict whose interval came from 1(c) reads "inconclusive (single run, no uncertainty)".
3. A claim's verdict combines the tests that count toward it (`in_verdict`, true unless a test is context, such as
   a run on a protocol other than the paper's): **not yet tested** when none of them has a result file yet; their
   common verdict when they agree; "inconclusive (tests disagree)" otherwise. The budget of each test is shown,
   and a claim tested only at a CPU budget says so: its verdict is about that budget, not the paper's.

Claims file
-----------

``claims.yaml`` holds ``claims:``, a list of entries with ``id``, ``claim`` (one sentence), ``source`` (``paper``,
``where``: table or section), ``comparison`` (``a``, ``b``, ``metric``, ``dataset``, ``setting``: the paper's
budget), ``expect`` (greater, less, within, at_most), ``tolerance`` (within, at_most), ``effect`` (relative,
difference), ``paper_effect`` (``text``, and ``value`` or the paper's two numbers ``a`` and ``b``), ``tests`` and
optionally ``planned`` and ``notes``. A test names a result ``file`` (under the results folder), its ``budget``
(cpu, gpu, paper), and how to read ``a`` and ``b``: a key path (``metrics.test/ndcg@10``), ``{seeds: PATH}``
for per-seed values, ``{value: X}`` for a paper's number, ``{file: OTHER, path: PATH}`` for a number in another
file; optionally ``n`` (test users, a number or ``{path: PATH}``), ``interval`` (``{lo: PATH, hi: PATH}``, the
file's 95% interval of A - B), ``label``, ``note`` and ``in_verdict``. A key path is keys joined by dots, with
``[i]`` (a list position), ``[*]`` (every element) or ``[key=value]`` (the one element whose ``key`` is ``value``)
after a key, and ``"..."`` around a key that holds a dot. A missing result file is a test not run yet; a field
missing from an entry, or a key path the file does not have, is a ConfigError.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError, ZooError
from zoo.io import write_text_atomic

BENCH_DIR = Path(__file__).resolve().parent
CLAIMS_PATH = BENCH_DIR / "claims.yaml"
RESULTS_DIR = BENCH_DIR / "results"
CLAIMS_MD = BENCH_DIR / "CLAIMS.md"

SINGLE_RUN_HALF_WIDTH = 0.25  # rule 1(c): a single run's 95% half-width, as a fraction of its value
MAGNITUDE_FRACTION = 0.5  # rule 2: `greater`/`less` fail when the effect is surely below this share of the paper's
Z95 = 1.959963984540054

HOLDS = "holds"
FAILS = "does not hold at this budget"
INCONCLUSIVE = "inconclusive"
UNTESTED = "not yet tested"
SINGLE_RUN = "single run, no uncertainty"

EXPECTS = ("greater", "less", "within", "at_most")
EFFECTS = ("relative", "difference")
BUDGETS = ("cpu", "gpu", "paper")
CLAIM_FIELDS = ("id", "claim", "source", "comparison", "expect", "paper_effect", "tests")
OPTIONAL_CLAIM_FIELDS = ("tolerance", "effect", "planned", "notes")
TEST_FIELDS = ("file", "budget", "a", "b")
OPTIONAL_TEST_FIELDS = ("n", "interval", "label", "note", "in_verdict")


# -- the claims file ---------------------------------------------------------------------------------------------


@dataclass
class NumberSpec:
    """How to read one side of a comparison: a key path (one number), a key path to per-seed values, or a
    constant (a paper's number); ``file`` overrides the test's file."""

    path: str | None = None
    seeds: str | None = None
    value: float | None = None
    file: str | None = None


@dataclass
class ClaimTest:
    file: str
    budget: str
    a: NumberSpec
    b: NumberSpec
    n: int | str | None = None  # test users: a number, or a key path to it
    interval: tuple[str, str] | None = None  # key paths of the file's 95% interval of A - B
    label: str = ""
    note: str = ""
    in_verdict: bool = True


@dataclass
class Claim:
    id: str
    claim: str
    source: dict[str, str]
    comparison: dict[str, str]
    expect: str
    paper_text: str
    paper_value: float | None  # the paper's effect in the claim's units, when it reports one
    paper_computed: bool  # paper_value comes from the paper's two numbers (so the text does not state it)
    tests: list[ClaimTest]
    effect: str = "relative"
    tolerance: float | None = None
    planned: str = ""
    notes: str = ""


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _text(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise _fail(where, f"'{name}' must be a non-empty text")
    return " ".join(str(value).split())


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"'{name}' must be a number (got {value!r})")
    return float(value)


def _check_keys(entry: dict, required: tuple[str, ...], optional: tuple[str, ...], where: str) -> None:
    missing = [k for k in required if k not in entry]
    if missing:
        raise _fail(where, f"missing field '{missing[0]}' (an entry needs {', '.join(required)})")
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        raise _fail(where, f"unknown field '{unknown[0]}' (valid: {', '.join(required + optional)})")


def _number_spec(value: Any, where: str, name: str) -> NumberSpec:
    if isinstance(value, str):
        return NumberSpec(path=_text(value, where, name))
    if not isinstance(value, dict):
        raise _fail(where, f"'{name}' must be a key path, {{seeds: PATH}}, {{value: X}} or {{file: F, path: PATH}}")
    unknown = sorted(set(value) - {"path", "seeds", "value", "file"})
    kinds = [k for k in ("path", "seeds", "value") if k in value]
    if unknown or len(kinds) != 1:
        raise _fail(where, f"'{name}' needs exactly one of path, seeds, value (got {', '.join(sorted(value))})")
    if "value" in value:
        if "file" in value:
            raise _fail(where, f"'{name}' is a constant: it takes no file")
        return NumberSpec(value=_number(value["value"], where, f"{name}.value"))
    spec = NumberSpec(**{kinds[0]: _text(value[kinds[0]], where, f"{name}.{kinds[0]}")})
    if "file" in value:
        spec.file = _text(value["file"], where, f"{name}.file")
    return spec


def _test(entry: Any, where: str) -> ClaimTest:
    if not isinstance(entry, dict):
        raise _fail(where, "a test must be a mapping")
    _check_keys(entry, TEST_FIELDS, OPTIONAL_TEST_FIELDS, where)
    budget = _text(entry["budget"], where, "budget")
    if budget not in BUDGETS:
        raise _fail(where, f"unknown budget '{budget}'; valid: {', '.join(BUDGETS)}")
    test = ClaimTest(
        file=_text(entry["file"], where, "file"),
        budget=budget,
        a=_number_spec(entry["a"], where, "a"),
        b=_number_spec(entry["b"], where, "b"),
        label=_text(entry["label"], where, "label") if "label" in entry else "",
        note=_text(entry["note"], where, "note") if "note" in entry else "",
        in_verdict=bool(entry.get("in_verdict", True)),
    )
    if not isinstance(entry.get("in_verdict", True), bool):
        raise _fail(where, "'in_verdict' must be true or false")
    if test.a.value is not None and test.b.value is not None:
        raise _fail(where, "'a' and 'b' are both constants: nothing is measured")
    if "n" in entry:
        n = entry["n"]
        if isinstance(n, dict) and set(n) == {"path"}:
            test.n = _text(n["path"], where, "n.path")
        elif isinstance(n, int) and not isinstance(n, bool) and n > 0:
            test.n = n
        else:
            raise _fail(where, f"'n' must be a positive whole number or {{path: PATH}} (got {n!r})")
    if "interval" in entry:
        interval = entry["interval"]
        if not isinstance(interval, dict) or set(interval) != {"lo", "hi"}:
            raise _fail(where, "'interval' must be {lo: PATH, hi: PATH}")
        test.interval = (_text(interval["lo"], where, "interval.lo"), _text(interval["hi"], where, "interval.hi"))
    return test


def _claim(entry: Any, where: str) -> Claim:
    if not isinstance(entry, dict):
        raise _fail(where, "a claim must be a mapping")
    if "id" in entry:
        where = f"{where} '{entry['id']}'"
    _check_keys(entry, CLAIM_FIELDS, OPTIONAL_CLAIM_FIELDS, where)
    claim_id = _text(entry["id"], where, "id")
    if not re.fullmatch(r"[a-z0-9_]+", claim_id):
        raise _fail(where, "'id' must be lower-case letters, digits and underscores")
    source, comparison, paper = entry["source"], entry["comparison"], entry["paper_effect"]
    for name, value, keys in (
        ("source", source, ("paper", "where")),
        ("comparison", comparison, ("a", "b", "metric", "dataset", "setting")),
        ("paper_effect", paper, ("text",)),
    ):
        if not isinstance(value, dict):
            raise _fail(where, f"'{name}' must be a mapping with {', '.join(keys)}")
        missing = [k for k in keys if k not in value]
        if missing:
            raise _fail(where, f"missing field '{name}.{missing[0]}'")
    expect = _text(entry["expect"], where, "expect")
    if expect not in EXPECTS:
        raise _fail(where, f"unknown expect '{expect}'; valid: {', '.join(EXPECTS)}")
    effect = _text(entry.get("effect", "relative"), where, "effect")
    if effect not in EFFECTS:
        raise _fail(where, f"unknown effect '{effect}'; valid: {', '.join(EFFECTS)}")
    tolerance = None
    if expect in ("within", "at_most"):
        if "tolerance" not in entry:
            raise _fail(where, f"missing field 'tolerance' (expect: {expect} needs one)")
        tolerance = _number(entry["tolerance"], where, "tolerance")
        if tolerance < 0:
            raise _fail(where, "'tolerance' must be >= 0")
    elif "tolerance" in entry:
        raise _fail(where, f"'tolerance' applies to expect: within or at_most, not {expect}")
    unknown = sorted(set(paper) - {"text", "value", "a", "b"})
    if unknown:
        raise _fail(where, f"unknown field 'paper_effect.{unknown[0]}' (valid: text, value, a, b)")
    value = None
    if "value" in paper and paper["value"] is not None:
        value = _number(paper["value"], where, "paper_effect.value")
    elif "a" in paper or "b" in paper:
        pa, pb = (_number(paper.get(k), where, f"paper_effect.{k}") for k in ("a", "b"))
        value = _effect(pa, pb, effect, where)
    if value is not None and (expect == "greater" and value <= 0 or expect == "less" and value >= 0):
        raise _fail(where, f"paper_effect {value:+g} contradicts expect: {expect}")
    tests = entry["tests"] if entry["tests"] is not None else []
    if not isinstance(tests, list):
        raise _fail(where, "'tests' must be a list (empty when nothing tests the claim yet)")
    return Claim(
        id=claim_id,
        claim=_text(entry["claim"], where, "claim"),
        source={k: _text(source[k], where, f"source.{k}") for k in ("paper", "where")},
        comparison={k: _text(comparison[k], where, f"comparison.{k}") for k in comparison},
        expect=expect,
        paper_text=_text(paper["text"], where, "paper_effect.text"),
        paper_value=value,
        paper_computed="value" not in paper and value is not None,
        tests=[_test(t, f"{where}, tests[{j}]") for j, t in enumerate(tests)],
        effect=effect,
        tolerance=tolerance,
        planned=_text(entry["planned"], where, "planned") if entry.get("planned") else "",
        notes=_text(entry["notes"], where, "notes") if entry.get("notes") else "",
    )


def load_claims(path: Path = CLAIMS_PATH) -> list[Claim]:
    """Read and check the claims file; any malformed entry is a one-line ConfigError naming it."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read claims file {path}: {str(err).splitlines()[0]}") from None
    entries = (data or {}).get("claims") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a non-empty list under 'claims:'")
    claims = [_claim(entry, f"{path}: claims[{i}]") for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for claim in claims:
        if claim.id in seen:
            raise ConfigError(f"{path}: claim id '{claim.id}' appears twice")
        seen.add(claim.id)
    return claims


# -- key paths ---------------------------------------------------------------------------------------------------

_KEY = re.compile(r'"(?P<quoted>[^"]+)"|(?P<plain>[^.\[\]"]+)')
_INDEX = re.compile(r"\[(?P<inside>[^\]]*)\]")


def parse_path(path: str) -> list[tuple[str, Any]]:
    """``a.b[0].c[*].d[k=v]`` -> steps (``key``, name), (``index``, i), (``all``, None), (``select``, (k, v))."""
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(path):
        key = _KEY.match(path, pos)
        if key is None:
            raise ValueError(f"bad key path syntax at {path[pos:]!r}")
        steps.append(("key", key.group("quoted") or key.group("plain")))
        pos = key.end()
        while (index := _INDEX.match(path, pos)) is not None:
            inside = index.group("inside").strip()
            if inside == "*":
                steps.append(("all", None))
            elif re.fullmatch(r"-?\d+", inside):
                steps.append(("index", int(inside)))
            elif "=" in inside:
                k, _, v = inside.partition("=")
                steps.append(("select", (k.strip(), v.strip())))
            else:
                raise ValueError(f"bad selector [{inside}]")
            pos = index.end()
        if pos < len(path):
            if path[pos] != ".":
                raise ValueError(f"bad key path syntax at {path[pos:]!r}")
            pos += 1
            if pos == len(path):
                raise ValueError("key path ends with '.'")
    if not steps:
        raise ValueError("empty key path")
    return steps


def resolve(data: Any, path: str) -> Any:
    """The value at ``path`` in parsed JSON; a ``[*]`` step maps the rest over a list. KeyError on a miss."""
    try:
        steps = parse_path(path)
    except ValueError as err:
        raise KeyError(str(err)) from None
    return _walk(data, steps, "")


def _walk(value: Any, steps: list[tuple[str, Any]], done: str) -> Any:
    for i, (kind, arg) in enumerate(steps):
        if kind == "key":
            if not isinstance(value, dict) or arg not in value:
                keys = ", ".join(sorted(value)[:10]) if isinstance(value, dict) else type(value).__name__
                raise KeyError(f"no key '{arg}' at '{done or '(top)'}' (there: {keys})")
            value, done = value[arg], f"{done}.{arg}" if done else arg
            continue
        if not isinstance(value, list):
            raise KeyError(f"'{done}' is not a list")
        if kind == "index":
            if not -len(value) <= arg < len(value):
                raise KeyError(f"'{done}' has {len(value)} elements, no [{arg}]")
            value, done = value[arg], f"{done}[{arg}]"
        elif kind == "all":
            return [_walk(element, steps[i + 1 :], f"{done}[{j}]") for j, element in enumerate(value)]
        else:
            k, v = arg
            matches = [e for e in value if isinstance(e, dict) and str(e.get(k)) == v]
            if len(matches) != 1:
                raise KeyError(f"'{done}' has {len(matches)} elements with {k}={v}, not one")
            value, done = matches[0], f"{done}[{k}={v}]"
    return value


# -- statistics --------------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile_975(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if df > 1e6:
        return Z95

    def upper_tail(t: float) -> float:  # P(T > t) for t >= 0
        return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while upper_tail(hi) > 0.025:
        lo, hi = hi, hi * 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if upper_tail(mid) > 0.025 else (lo, mid)
    return (lo + hi) / 2.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _variance(values: list[float]) -> float:
    m = _mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def _effect(a: float, b: float, effect: str, where: str) -> float:
    if effect == "difference":
        return a - b
    if b == 0:
        raise _fail(where, "B is 0, so a relative effect is undefined (use effect: difference)")
    return (a - b) / abs(b)


# -- measuring ---------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side's numbers: ``kind`` is constant, single (one run) or seeds (two or more values)."""

    values: list[float]
    kind: str

    @property
    def mean(self) -> float:
        return _mean(self.values)


@dataclass
class Measurement:
    """One test's outcome: both sides, the effect and its 95% interval (claim units), and the verdict."""

    test: ClaimTest
    ran: bool
    a: Side | None = None
    b: Side | None = None
    effect: float | None = None
    lo: float | None = None
    hi: float | None = None
    uncertainty: str = ""
    verdict: str = UNTESTED
    reason: str = ""

    @property
    def single_run(self) -> bool:
        return self.uncertainty.startswith("single run")


@dataclass
class ClaimResult:
    claim: Claim
    measurements: list[Measurement] = field(default_factory=list)
    verdict: str = UNTESTED
    reason: str = ""

    @property
    def counted(self) -> list[Measurement]:
        return [m for m in self.measurements if m.ran and m.test.in_verdict]

    def budget(self) -> str:
        budgets = sorted({m.test.budget for m in self.counted})
        if not budgets:
            return "—"
        if budgets == ["cpu"]:
            return "CPU budget only"
        names = ", ".join({"cpu": "CPU", "gpu": "GPU", "paper": "the paper's"}[b] for b in budgets)
        return names + (" budgets" if len(budgets) > 1 else " budget")


class _Files:
    """Result files read once each; a missing file is None."""

    def __init__(self, results_dir: Path) -> None:
        self.dir = Path(results_dir)
        self.cache: dict[str, Any] = {}

    def get(self, name: str, where: str) -> Any:
        if name not in self.cache:
            path = self.dir / name
            if not path.is_file():
                self.cache[name] = None
            else:
                try:
                    self.cache[name] = json.loads(path.read_text())
                except (OSError, ValueError) as err:
                    raise _fail(where, f"result file {name} is not readable JSON ({type(err).__name__})") from None
        return self.cache[name]


def _read(data: Any, file: str, path: str, where: str) -> Any:
    try:
        return resolve(data, path)
    except KeyError as err:
        raise _fail(where, f"key path '{path}' not found in {file}: {err.args[0]}") from None


def _as_float(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"{what} is {json.dumps(value)[:60]}, not a number")
    return float(value)


def _side(files: _Files, test: ClaimTest, spec: NumberSpec, where: str) -> Side | None:
    if spec.value is not None:
        return Side([spec.value], "constant")
    file = spec.file or test.file
    data = files.get(file, where)
    if data is None:
        return None
    if spec.seeds is not None:
        values = _read(data, file, spec.seeds, where)
        if not isinstance(values, list) or not values:
            raise _fail(where, f"key path '{spec.seeds}' in {file} is not a non-empty list of per-seed values")
        floats = [_as_float(v, where, f"'{spec.seeds}' in {file}") for v in values]
        return Side(floats, "seeds" if len(floats) > 1 else "single")
    value = _read(data, file, spec.path, where)
    if isinstance(value, list):
        raise _fail(where, f"key path '{spec.path}' in {file} is a list: read per-seed values with {{seeds: PATH}}")
    return Side([_as_float(value, where, f"'{spec.path}' in {file}")], "single")


def _half_width(side: Side, n: int | None) -> tuple[float, bool]:
    """Rule 1(c): one side's 95% half-width on its mean, and whether the test-sampling bound set it."""
    if side.kind == "constant":
        return 0.0, False
    if side.kind == "seeds":
        k = len(side.values)
        return t_quantile_975(k - 1) * math.sqrt(_variance(side.values) / k), False
    m = side.mean
    width = SINGLE_RUN_HALF_WIDTH * abs(m)
    if n is not None and 0.0 <= m <= 1.0:
        sampling = Z95 * math.sqrt(m * (1.0 - m) / n)
        if sampling > width:
            return sampling, True
    return width, False


def _welch(a: Side, b: Side) -> tuple[float, int]:
    """Half-width of Welch's 95% t interval of mean(a) - mean(b), and how many sides have seeds."""
    parts = [(_variance(s.values) / len(s.values), len(s.values) - 1) for s in (a, b) if s.kind == "seeds"]
    total = sum(v for v, _ in parts)
    if total == 0.0:
        return 0.0, len(parts)
    df = total**2 / sum(v**2 / dof for v, dof in parts if v > 0)
    return t_quantile_975(df) * math.sqrt(total), len(parts)


def measure(claim: Claim, test: ClaimTest, files: _Files, where: str) -> Measurement:
    """Read one test's numbers and apply rules 1 and 2 (a test whose file is missing has not run)."""
    a, b = _side(files, test, test.a, where), _side(files, test, test.b, where)
    if a is None or b is None:
        return Measurement(test, ran=False, reason=f"no result file {test.file} yet")
    out = Measurement(test, ran=True, a=a, b=b)
    diff = a.mean - b.mean
    scale = 1.0 if claim.effect == "difference" else abs(b.mean)
    out.effect = _effect(a.mean, b.mean, claim.effect, where)
    if test.interval is not None:
        data = files.get(test.file, where)
        lo, hi = (_as_float(_read(data, test.file, p, where), where, f"'{p}'") for p in test.interval)
        if lo > hi:
            raise _fail(where, f"interval lo {lo:g} is above hi {hi:g}")
        out.uncertainty = "95% interval from the result file"
    else:
        n = test.n
        if isinstance(n, str):
            n = int(_as_float(_read(files.get(test.file, where), test.file, n, where), where, f"'{n}'"))
        if "single" not in (a.kind, b.kind):
            half, seeded = _welch(a, b)
            counts = "/".join(str(len(s.values)) for s in (a, b) if s.kind == "seeds")
            out.uncertainty = f"Welch t over seeds ({counts} seeds)" if seeded == 2 else f"t over {counts} seeds"
        else:
            halves = [_half_width(s, n) for s in (a, b)]
            half = math.sqrt(sum(h * h for h, _ in halves))
            out.uncertainty = f"single run: ±{SINGLE_RUN_HALF_WIDTH:.0%} a run"
            if any(sampled for _, sampled in halves):
                out.uncertainty += f", test-sampling bound (n={n})"
        lo, hi = diff - half, diff + half
    out.lo, out.hi = lo / scale, hi / scale
    out.verdict, out.reason = decide(claim.expect, out.lo, out.hi, claim.tolerance, claim.paper_value, claim.effect)
    if out.verdict == INCONCLUSIVE and out.single_run:
        out.verdict = f"{INCONCLUSIVE} ({SINGLE_RUN})"
    return out


def decide(
    expect: str, lo: float, hi: float, tolerance: float | None, paper: float | None, effect: str = "relative"
) -> tuple[str, str]:
    """Rule 2: the verdict of one 95% interval [lo, hi] of the effect, and why."""

    def show(value: float) -> str:
        return _fmt_bound(value, effect)

    if expect in ("greater", "less"):
        sign = 1.0 if expect == "greater" else -1.0
        lo, hi = (lo, hi) if sign > 0 else (-hi, -lo)  # mirror ``less`` onto ``greater``
        floor = MAGNITUDE_FRACTION * abs(paper) if paper is not None else 0.0
        if hi < 0:
            return FAILS, f"the interval lies {'below' if sign > 0 else 'above'} 0: the effect goes the other way"
        if hi < floor:
            return FAILS, f"the whole interval falls short of half the paper's effect ({show(sign * floor)})"
        if lo > 0:
            reached = f" and reaches half the paper's effect ({show(sign * floor)})" if paper is not None else ""
            return HOLDS, f"the interval lies {'above' if sign > 0 else 'below'} 0{reached}"
        return INCONCLUSIVE, "the interval includes 0"
    assert tolerance is not None
    if expect == "within":
        band = f"±{show(tolerance)[1:]}"
        if -tolerance <= lo and hi <= tolerance:
            return HOLDS, f"the interval lies inside {band}"
        if hi < -tolerance or lo > tolerance:
            return FAILS, f"the interval lies outside {band}"
        return INCONCLUSIVE, f"the interval straddles the edge of {band}"
    if hi <= tolerance:
        return HOLDS, f"the interval stays at or under {show(tolerance)}"
    if lo > tolerance:
        return FAILS, f"the interval lies above {show(tolerance)}"
    return INCONCLUSIVE, f"the interval straddles {show(tolerance)}"


def evaluate(claims: list[Claim], results_dir: Path, claims_path: Path | str = "claims") -> list[ClaimResult]:
    """Measure every test of every claim and combine them into the claim's verdict (rule 3)."""
    files = _Files(results_dir)
    results = []
    for claim in claims:
        result = ClaimResult(claim)
        for j, test in enumerate(claim.tests):
            where = f"{claims_path}: claim '{claim.id}', tests[{j}] ({test.file})"
            result.measurements.append(measure(claim, test, files, where))
        counted = result.counted
        kinds = {m.verdict for m in counted}
        if not counted:
            result.verdict = UNTESTED
            missing = [m.reason for m in result.measurements if m.test.in_verdict]
            result.reason = "; ".join(missing) or "no result file tests it yet"
        elif len(kinds) == 1:
            result.verdict = counted[0].verdict
            result.reason = counted[0].reason if len(counted) == 1 else f"the {len(counted)} counted tests agree"
        else:
            result.verdict = f"{INCONCLUSIVE} (tests disagree)"
            result.reason = "; ".join(f"{m.test.label or m.test.file}: {m.verdict}" for m in counted)
        results.append(result)
    return results


def verdict_kind(verdict: str) -> str:
    """The verdict without its qualifier: holds, does not hold at this budget, inconclusive, not yet tested."""
    return verdict.split(" (", 1)[0]


# -- rendering ---------------------------------------------------------------------------------------------------


def verdict_rule() -> str:
    """The 'Verdict rule' section of this module's docstring (the text at the top of CLAIMS.md)."""
    doc = __doc__ or ""
    body = doc.split("Verdict rule\n------------\n", 1)[-1].split("\nClaims file\n", 1)[0]
    return body.strip()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def _fmt_effect(value: float | None, effect: str) -> str:
    if value is None:
        return "—"
    return f"{value:+.1%}" if effect == "relative" else f"{value:+.4g}"


def _fmt_bound(value: float, effect: str) -> str:
    """A tolerance or threshold: like an effect, without a trailing .0 on a whole percentage."""
    if effect == "relative" and round(value * 100, 6).is_integer():
        return f"{value:+.0%}"
    return _fmt_effect(value, effect)


def _fmt_side(side: Side | None) -> str:
    if side is None:
        return "—"
    if side.kind == "seeds":
        return f"{_fmt(side.mean)} (seeds: {', '.join(_fmt(v) for v in side.values)})"
    return _fmt(side.mean) + (" (paper)" if side.kind == "constant" else "")


def _fmt_verdict(verdict: str) -> str:
    kind = verdict_kind(verdict)
    return f"**{kind}**{verdict[len(kind) :]}"


def _paper_effect(claim: Claim) -> str:
    if claim.expect == "within":
        return f"{claim.paper_text} (reproduced if within ±{_fmt_bound(claim.tolerance, claim.effect)[1:]})"
    if claim.expect == "at_most":
        return f"{claim.paper_text} (holds if at most {_fmt_bound(claim.tolerance, claim.effect)})"
    if not claim.paper_computed:
        return claim.paper_text
    return f"{claim.paper_text} ({_fmt_effect(claim.paper_value, claim.effect)})"


def _measured(result: ClaimResult) -> str:
    counted = result.counted
    if not counted:
        return "—"
    first = counted[0]
    text = f"{_fmt_effect(first.effect, result.claim.effect)} [{_fmt_effect(first.lo, result.claim.effect)}, "
    text += f"{_fmt_effect(first.hi, result.claim.effect)}]"
    return text + (f" (+{len(counted) - 1} more)" if len(counted) > 1 else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(results: list[ClaimResult], results_dir: Path, out: Path) -> str:
    """The whole CLAIMS.md text (links to result files relative to ``out``'s folder)."""
    base = Path(out).parent
    lines = [
        "# Claims ledger",
        "",
        "<!-- generated by `python -m benchmarks.render` from benchmarks/claims.yaml and benchmarks/results/*.json:"
        " do not edit by hand -->",
        "",
        "Published claims of the papers the zoo hosts, and what the zoo's own result files say about each. One "
        "entry of `benchmarks/claims.yaml` per claim names its source, the comparison it implies, the result "
        "files that test it and where in each file the two numbers are. The effect, its 95% interval and the "
        "verdict below are computed from those numbers by the rule that follows (`benchmarks/claims.py`); no "
        "verdict is typed by hand. A verdict is about the budget it was measured at (the Budget column): "
        '"does not hold at this budget" at a CPU budget says nothing yet about the paper\'s budget.',
        "",
        "## Verdict rule",
        "",
        verdict_rule(),
        "",
        "## Summary",
        "",
        "| Claim | Paper's effect | Zoo's effect [95% interval] | Budget | Verdict |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        claim = result.claim
        row = [
            f"[`{claim.id}`](#{claim.id}): {claim.claim}",
            _paper_effect(claim),
            _measured(result),
            result.budget(),
            _fmt_verdict(result.verdict),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    counts: dict[str, int] = {}
    for result in results:
        counts[verdict_kind(result.verdict)] = counts.get(verdict_kind(result.verdict), 0) + 1
    tally = ", ".join(f"{counts[k]} {k}" for k in (HOLDS, FAILS, INCONCLUSIVE, UNTESTED) if k in counts)
    lines += ["", f"{len(results)} claims: {tally}."]
    lines += ["", "## Claims"]
    for result in results:
        lines += ["", *_claim_section(result, Path(results_dir), base)]
    return "\n".join(lines) + "\n"


def _claim_section(result: ClaimResult, results_dir: Path, base: Path) -> list[str]:
    claim = result.claim
    comp = claim.comparison
    lines = [
        f'<a id="{claim.id}"></a>',
        f"### `{claim.id}`",
        "",
        f"> {claim.claim}",
        "",
        f"- **Source**: {claim.source['paper']}, {claim.source['where']}.",
        f"- **Comparison**: A = {comp['a']}; B = {comp['b']}; {comp['metric']} on {comp['dataset']}; "
        f"the paper's setting: {comp['setting']}.",
        f"- **Paper's effect**: {_paper_effect(claim)}; effect = "
        + ("(A - B) / B." if claim.effect == "relative" else "A - B."),
        f"- **Verdict**{f' ({result.budget()})' if result.counted else ''}: {_fmt_verdict(result.verdict)}; "
        f"{result.reason}.",
    ]
    if claim.notes:
        lines.append(f"- **Notes**: {claim.notes}")
    if claim.planned and not result.counted:
        lines.append(f"- **How the zoo will test it**: {claim.planned}")
    if not claim.tests:
        return lines
    lines += [
        "",
        "| Test | A | B | Effect | 95% interval | Uncertainty | Budget | Counts | Verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result.measurements:
        test = m.test
        files = dict.fromkeys(s.file or test.file for s in (test.a, test.b) if s.value is None)
        links = ", ".join(
            f"[{name}]({os.path.relpath(results_dir / name, base)})" if (results_dir / name).is_file() else name
            for name in files
        )
        label = f"{test.label}: {links}" if test.label else links
        if test.note:
            label += f" ({test.note})"
        interval = f"[{_fmt_effect(m.lo, claim.effect)}, {_fmt_effect(m.hi, claim.effect)}]" if m.ran else "—"
        verdict = _fmt_verdict(m.verdict) + (f": {m.reason}" if m.reason else "")
        row = [
            label,
            _fmt_side(m.a),
            _fmt_side(m.b),
            _fmt_effect(m.effect, claim.effect),
            interval,
            m.uncertainty or "—",
            test.budget,
            "yes" if test.in_verdict else "context",
            verdict,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def render_claims(claims_path: Path, results_dir: Path, out: Path) -> Path:
    """Load the claims, measure them against ``results_dir`` and write the ledger to ``out``."""
    claims = load_claims(claims_path)
    results = evaluate(claims, results_dir, claims_path)
    write_text_atomic(out, render_markdown(results, results_dir, out))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import key_values

    argv = sys.argv[1:] if argv is None else argv
    settings = {"claims": CLAIMS_PATH, "results_dir": RESULTS_DIR, "out": CLAIMS_MD}
    try:
        settings = {key: Path(value) for key, value in key_values(argv, settings).items()}
        out = render_claims(settings["claims"], settings["results_dir"], settings["out"])
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
