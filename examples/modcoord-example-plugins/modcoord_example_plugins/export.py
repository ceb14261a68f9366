"""An exporter: append every export to a JSON-lines file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modcoord.actors.plugins import MetricSample


class JsonLinesExporter:
    """Writes one line per export, ``{"samples": [{"name", "labels", "value"}, ...]}``, to
    the file ``options["path"]``."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError("example_jsonl: options.path must name a file")
        self.path = Path(path)

    def export(self, samples: Sequence[MetricSample]) -> None:
        line = json.dumps({"samples": [
            {"name": s.name, "labels": dict(s.labels), "value": s.value} for s in samples]})
        with self.path.open("a") as out:
            out.write(line + "\n")

    def close(self) -> None:
        pass
