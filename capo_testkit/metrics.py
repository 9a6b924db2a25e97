"""Prometheus text parsing into something assertions can read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


class Metrics:
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def value(self, name: str, /, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 when there is none)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.samples)

    def series(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.series(name):
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + s.value
        return out


def parse_metrics(text: str) -> Metrics:
    samples = [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    return Metrics(samples)
