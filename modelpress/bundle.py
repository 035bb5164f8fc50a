"""The deployable bundle's Python API: ``load(bundle_dir)`` → the task's methods on raw inputs.

``load`` reads ``bundle.json`` (the configured task, input names, length limit, the model file of
each runtime the bundle was built for), the preprocessor folder and the int8 model, and returns the
task's bundle class (``embed`` for feature extraction, ``classify`` for classifiers, ``tag`` for
token classification), all through the same Predictor path validation measures. The runner comes
from the runtime registry: the bundle's first runtime (ONNX Runtime unless ``validate.runtimes``
said otherwise), or the one ``runtime=`` names (``"openvino"`` for ``openvino/model.xml``).

Before the model is loaded the bundle proves itself: every file matches ``manifest.json`` (a folder
without one is refused), its verdict is not ``fail`` (a run whose gate failed is published to
``<name>.rejected/``; ``allow_failed=True`` opens it for inspection), and with
``require_signature=PUBLIC_KEY_PEM`` its ``model.sig`` verifies against that key (``modelpress sign``;
the optional ``model-signing`` package) — a model swapped and re-hashed in the manifest passes the
checksums but not the signature. ``bundle.json`` records the CPU target the bundle was pressed for
(``runtimes.target``); on a CPU without that level's instructions ``load`` warns once, or refuses
with ``strict=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the bundle's files and base class live below the tasks (which subclass Bundle); re-exported here, the public API
from modelpress.bundle_base import (  # noqa: F401
    BUNDLE_META,
    INT8_MODEL,
    Bundle,
    bundle_model_file,
    check_target,
    read_bundle_meta,
    record_default,
    write_bundle_meta,
)
from modelpress.tasks import TASKS, task_from_dict


def _every_api() -> set[str]:
    """Every registered task's bundle methods (a bundle's message for another task's method)."""
    return {method for name in TASKS.names() for method in TASKS.get(name).api}


def load(
    bundle_dir: str | Path,
    *,
    runtime: str | None = None,
    model_file: str | None = None,
    threads: int = 0,
    verify: bool = True,
    allow_failed: bool = False,
    require_signature: str | Path | None = None,
    strict: bool = False,
    back_to_back: bool | None = None,
    **runner_options: Any,
) -> Bundle:
    """The bundle at ``bundle_dir``, as its task's bundle class (methods: ``task.api``).
    ``runtime``: one the bundle was built for (``bundle.json`` lists them; default its first);
    ``runner_options`` go to that runner (OpenVINO: ``precision="bf16"``).
    ``verify``: check the bundle against ``manifest.json`` first (a missing manifest, a changed,
    added or missing file is an error; the large files this load does not open — the fp32 export beside
    an int4 model — by their size, the rest by their hash); validation turns it off for the run's own unpublished
    staging folder. ``allow_failed``: open a bundle whose gate failed (``<name>.rejected/``), for
    inspection; refused otherwise. ``require_signature``: the signer's public key (PEM); the
    bundle's ``model.sig`` must verify against it (``modelpress sign``) before the model is loaded.
    ``strict``: refuse a bundle pressed for a CPU level whose instructions this CPU lacks (else a
    warning, once per target). ``back_to_back``: open the runner with its runtime's options for runs
    made back to back (``Runner.back_to_back_options``; ONNX Runtime: its threads spin between runs);
    None: where the task's API runs so (text generation's decode loop). A benchmark that interleaves
    several runtimes in one process passes False: a spinning pool steals the cores from the next one."""
    meta = read_bundle_meta(Path(bundle_dir))
    task = task_from_dict(meta["task"])
    return task.bundle_class()(
        Path(bundle_dir),
        model_file=model_file,
        runtime=runtime,
        threads=threads,
        verify=verify,
        runner_options=runner_options,
        allow_failed=allow_failed,
        require_signature=require_signature,
        strict=strict,
        back_to_back=back_to_back,
        task=task,
        every_api=_every_api,
    )
