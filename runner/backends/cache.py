"""The cache of converted models (TF-TRT SavedModels, LiteRT flatbuffers, ...), keyed by everything
that changes the result: source model hash, converter parameters (precision included), input
shape, converter/runtime versions and device. A hit skips conversion; entries are written
atomically under a file lock. Each backend keeps its entries under its own root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

META = "conversion.json"


def cache_key(ingredients: Mapping[str, Any]) -> str:
    """A stable hash of the ingredients (order of keys does not matter)."""
    text = json.dumps({str(k): str(v) for k, v in ingredients.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def source_hash(model_dir: Path) -> str:
    """sha256 over the SavedModel's graph and variable files (the source model's identity)."""
    digest = hashlib.sha256()
    files = [model_dir / "saved_model.pb", *sorted((model_dir / "variables").glob("*"))]
    for path in files:
        if path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def ingredients(source: Path, params: Mapping[str, Any], input_shape: Sequence[int | None],
                versions: Mapping[str, str], device: str) -> dict[str, Any]:
    """The cache key's ingredients, the same for every backend: source model hash, converter
    parameters, input shape, versions, device."""
    return {"source_sha256": source_hash(source), **params, "input_shape": list(input_shape),
            **{f"version.{k}": v for k, v in versions.items()}, "device": device}


@dataclass
class CacheResult:
    path: Path  # the converted artifact (a SavedModel directory, a .tflite file, ...)
    stats: dict[str, float]  # conversion_s (0 on a hit), segments, tf_nodes, ...
    hit: bool
    key: str


class ConversionCache:
    def __init__(self, root: Path, artifact: str = "saved_model") -> None:
        self.root, self.artifact = root, artifact
        root.mkdir(parents=True, exist_ok=True)

    def get_or_convert(self, ingredients: Mapping[str, Any],
                       convert: Callable[[Path], Mapping[str, float]]) -> CacheResult:
        """``convert(out_path)`` writes the converted artifact there and returns its stats."""
        key = cache_key(ingredients)
        entry = self.root / key
        with FileLock(str(self.root / f"{key}.lock")):
            if (entry / META).is_file():
                meta = json.loads((entry / META).read_text())
                stats = {**meta["stats"], "conversion_s": 0.0,
                         "first_conversion_s": meta["stats"]["conversion_s"]}
                return CacheResult(entry / self.artifact, stats, True, key)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                start = time.perf_counter()
                stats = dict(convert(tmp / self.artifact))
                stats["conversion_s"] = time.perf_counter() - start
                (tmp / META).write_text(json.dumps(
                    {"ingredients": {k: str(v) for k, v in ingredients.items()},
                     "stats": stats}, indent=1))
                os.replace(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return CacheResult(entry / self.artifact, stats, False, key)
