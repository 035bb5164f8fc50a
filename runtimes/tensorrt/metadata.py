"""``engine.json``: what a TensorRT plan was built from, with, and for; and the load-time check.

Place in the pipeline: written by ``engine.build_engine`` beside each plan, read by the
``TensorRTRunner`` before deserializing, and copied into the bundle. A plan only runs on the
TensorRT version and GPU it was built for, so loading one built elsewhere is refused here with a
message that says what differs and how to rebuild, instead of a deserialization crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from modelpress.errors import BadInputError
from modelpress.fileio import write_json
from modelpress.runtimes.tensorrt.gpu import GpuIdentity

FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class EngineMetadata:
    """The content of one ``engine.json``."""

    plan: str  # file name of the plan, beside this file
    plan_sha256: str  # ties this file to one build: a rebuilt plan with stale metadata is refused
    source_onnx: str  # file name of the ONNX it was built from
    precision: str  # "int8" (explicit Q/DQ) or "fp16" (fp16 ONNX); the network is strongly typed
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    profiles: tuple[dict[str, dict[str, list[int]]], ...]  # per profile: input -> min/opt/max
    workspace_mb: int
    builder_optimization_level: int | None
    timing_cache: str | None  # the cache file used, if any
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"], d["outputs"], d["profiles"] = list(self.inputs), list(self.outputs), list(self.profiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: Path) -> "EngineMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(d))
        if missing:
            raise BadInputError(f"{source}: engine metadata lacks {', '.join(missing)}; rebuild the engine")
        kwargs = {k: v for k, v in d.items() if k in names}  # newer writers may add keys
        kwargs["inputs"] = tuple(d["inputs"])
        kwargs["outputs"] = tuple(d["outputs"])
        kwargs["profiles"] = tuple(d["profiles"])
        return cls(**kwargs)

    def profile_range(self, input_name: str) -> str:
        """``"[1, 1]..[32, 512]"`` for messages about out-of-profile shapes."""
        ranges = [f"{p[input_name]['min']}..{p[input_name]['max']}" for p in self.profiles if input_name in p]
        return " or ".join(ranges) or "(no profile)"


def engine_metadata_path(plan_path: Path) -> Path:
    """Where a plan's metadata lives: the one naming rule, shared by the builder and the runner.

    ``model.plan`` -> ``engine.json``; ``model.fp16.plan`` -> ``engine.fp16.json``;
    any other ``x.plan`` -> ``x.engine.json``.
    """
    stem = plan_path.stem
    if stem == "model" or stem.startswith("model."):
        return plan_path.with_name("engine" + stem[len("model") :] + ".json")
    return plan_path.with_name(stem + ".engine.json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_engine_metadata(meta: EngineMetadata, path: Path) -> None:
    """Write atomically: an interrupted build never leaves a half-written engine.json."""
    write_json(path, meta.to_dict(), sort_keys=True)


def load_engine_metadata(path: Path) -> EngineMetadata:
    """Read one ``engine.json``; :class:`BadInputError` naming the file when missing or malformed."""
    if not path.is_file():
        raise BadInputError(f"{path}: no engine metadata beside the plan; rebuild with `modelpress engine`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable engine metadata ({exc})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: engine metadata is not a JSON object")
    if data.get("format_version") != FORMAT_VERSION:
        raise BadInputError(
            f"{path}: engine metadata format {data.get('format_version')!r} is not {FORMAT_VERSION}; rebuild the engine"
        )
    return EngineMetadata.from_dict(data, source=path)


def check_engine_compatible(
    meta: EngineMetadata,
    *,
    plan_path: Path,
    tensorrt_version: str,
    gpu: GpuIdentity,
    verify_hash: bool = True,
) -> None:
    """Refuse a plan built for another TensorRT version or GPU, or not the plan ``meta`` describes.

    TensorRT plans are tied to the exact TensorRT version and to the GPU they were built on
    (tactics are chosen for its SM and memory); deserializing one elsewhere fails or runs with
    tactics chosen for another device. The message names what differs.
    """
    problems = []
    if meta.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT {meta.tensorrt_version} (this machine has {tensorrt_version})")
    if meta.compute_capability != gpu.sm:
        problems.append(f"compute capability {meta.compute_capability} (this GPU is {gpu.sm})")
    if meta.gpu_name != gpu.name:
        problems.append(f"GPU '{meta.gpu_name}' (this machine has '{gpu.name}')")
    if problems:
        raise BadInputError(
            f"{plan_path}: engine was built for {'; '.join(problems)}; rebuild it here with `modelpress engine RUN_DIR`"
        )
    if verify_hash and file_sha256(plan_path) != meta.plan_sha256:
        raise BadInputError(
            f"{plan_path}: plan does not match its engine metadata (sha256 differs); "
            "rebuild it with `modelpress engine RUN_DIR`"
        )
