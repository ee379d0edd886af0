"""The one reader of `--data` spec strings: an optional prefix that names a label space or a loader
(ckplus:, ferplus8:, fer2013:, fergit:, tpe:, tpe-agreed:) followed by the path, or fergit's two comma-separated
paths. An existing file whose name holds a colon is a plain path."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class DataSpec:
    prefix: str   # "" for a plain path
    rest: str     # the spec after "prefix:" (the whole spec for a plain path)

    @property
    def paths(self) -> list[str]:
        return self.rest.split(",") if self.prefix else [self.rest]


def parse_spec(spec) -> DataSpec:
    spec = str(spec)
    if ":" in spec and not Path(spec).exists():
        prefix, _, rest = spec.partition(":")
        return DataSpec(prefix, rest)
    return DataSpec("", spec)


def map_spec_paths(spec: str, fn: Callable[[str], str]) -> str:
    """The spec with fn applied to each of its non-empty paths, prefix kept."""
    if not spec:
        return spec
    parsed = parse_spec(spec)
    if not parsed.prefix:
        return fn(spec)
    return f"{parsed.prefix}:" + ",".join(fn(p) if p else p for p in parsed.paths)
