"""A strict parser of the Prometheus text exposition format 0.0.4, for tests of
``modcoord metrics`` and the HTTP endpoint: :func:`parse_exposition` refuses anything the
format does not allow (raising ``AssertionError`` naming the line), :func:`check_conventions`
and :func:`check_histogram` check modcoord's naming and histogram rules."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

__all__ = ["Family", "check_conventions", "check_histogram", "parse_exposition", "value_of"]

# --------------------------------------------------------------------------- strict parser

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE_RE = re.compile(rf"^({NAME})(\{{(.*)\}})? (\S+)( -?\d+)?$")
LABEL_PAIR_RE = re.compile(rf'({LABEL})="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
ALLOWED_LABELS = {"actor", "mode", "cause", "reason", "quantile", "le", "result"}


@dataclass
class Family:
    name: str
    type: str = ""
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = LABEL_PAIR_RE.match(text, pos)
        assert m, f"bad labels {text!r} at {pos}"
        assert m.group(1) not in labels, f"duplicate label in {text!r}"
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"bad separator in {text!r}"
            pos += 1
    return labels


def _parse_value(text: str) -> float:
    assert text in ("NaN", "+Inf", "-Inf") or re.fullmatch(
        r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", text), f"bad value {text!r}"
    return float(text.replace("+Inf", "inf").replace("-Inf", "-inf"))


def _family_of(sample: str, families: dict[str, Family]) -> Family:
    if sample in families:
        return families[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[: -len(suffix)]
        if sample.endswith(suffix) and base in families and families[base].type in (
                "histogram", "summary"):
            return families[base]
    raise AssertionError(f"sample {sample} has no TYPE line before it")


def parse_exposition(text: str) -> dict[str, Family]:
    """Parse text format 0.0.4 strictly; fail on anything malformed or out of order."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    finished: set[str] = set()
    current: str | None = None
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):
        assert line, "no blank lines"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(NAME, name), name
                fam = families.setdefault(name, Family(name))
                assert name not in finished, f"{name} split in two groups"
                if current is not None and current != name:
                    finished.add(current)
                current = name
                if parts[1] == "TYPE":
                    assert not fam.type, f"second TYPE for {name}"
                    assert not fam.samples, f"TYPE after samples of {name}"
                    assert len(parts) == 4 and parts[3] in TYPES, line
                    fam.type = parts[3]
                else:
                    assert fam.help is None, f"second HELP for {name}"
                    fam.help = parts[3] if len(parts) == 4 else ""
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"malformed sample line {line!r}"
        sample, _, label_text, value_text, _ = m.groups()
        labels = _parse_labels(label_text or "")
        fam = _family_of(sample, families)
        assert fam.type, f"no TYPE for {fam.name} before its samples"
        assert current == fam.name, f"{sample} is outside its family's group"
        series = (sample, tuple(sorted(labels.items())))
        assert series not in seen_series, f"duplicate series {series}"
        seen_series.add(series)
        fam.samples.append((sample, labels, _parse_value(value_text)))
    return families


def check_conventions(families: dict[str, Family]) -> None:
    for fam in families.values():
        assert fam.name.startswith("modcoord_"), fam.name
        assert fam.help, f"{fam.name} has no HELP"
        assert fam.samples, f"{fam.name} has no samples"
        if fam.type == "counter":
            assert fam.name.endswith("_total"), fam.name
            assert all(v >= 0 for _, _, v in fam.samples)
        for _, labels, _ in fam.samples:
            assert set(labels) <= ALLOWED_LABELS, labels
        if fam.type == "histogram":
            check_histogram(fam)


def check_histogram(fam: Family) -> tuple[list[tuple[float, float]], float, float]:
    buckets = [(_parse_value(lab["le"]), v) for s, lab, v in fam.samples
               if s == fam.name + "_bucket"]
    sums = [v for s, _, v in fam.samples if s == fam.name + "_sum"]
    counts = [v for s, _, v in fam.samples if s == fam.name + "_count"]
    assert len(sums) == 1 and len(counts) == 1, fam.name
    bounds = [le for le, _ in buckets]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), bounds
    assert bounds[-1] == math.inf, "last bucket must be +Inf"
    values = [v for _, v in buckets]
    assert all(a <= b for a, b in itertools.pairwise(values)), f"not cumulative: {values}"
    assert values[-1] == counts[0], "+Inf bucket must equal _count"
    assert bounds[0] < 0.001, "needs sub-millisecond buckets"
    return buckets, sums[0], counts[0]


def value_of(families: dict[str, Family], name: str, **labels: str) -> float:
    for fam in families.values():
        for sample, labs, value in fam.samples:
            if sample == name and labs == labels:
                return value
    raise KeyError(f"{name}{labels}")
