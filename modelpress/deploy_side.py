"""The deploy side: the modules ``modelpress.bundle.load`` and the bundle's methods run, which must
import without torch or transformers.

A deployment host installs ``pip install modelpress`` (numpy, onnxruntime, tokenizers, pillow; the
``openvino`` extra for the OpenVINO runtime); pressing needs ``modelpress[press]`` (torch,
transformers, onnx, ...). The rule, for every module listed here: no module-level import of torch,
transformers, onnx, optimum or any module outside this list (import such a module inside the
function that needs it, on the pressing side only). ``tests/test_deploy.py`` imports each one in a
fresh interpreter where importing torch or transformers raises, and runs a bundle of every task
there, so a hoisted import fails the suite rather than a user's deployment.
"""

from __future__ import annotations

#: every module of the deploy side (load(), the encoders, the runners, the tasks' post-processing)
DEPLOY_SIDE_MODULES = (
    "modelpress.errors",
    "modelpress.registry",
    "modelpress.fileio",
    "modelpress.manifest",
    "modelpress.signing",
    "modelpress.bundle",
    "modelpress.bundle_base",
    "modelpress.inference",
    "modelpress.generation",
    "modelpress.kv_cache",
    "modelpress.tokenization",
    "modelpress.image_processing",
    "modelpress.modalities",
    "modelpress.modalities.text",
    "modelpress.modalities.causal_text",
    "modelpress.modalities.image",
    "modelpress.tasks",
    "modelpress.task_match",  # Task.auto: the architectures --task auto maps, the default data
    "modelpress.tasks.feature_extraction",
    "modelpress.tasks.text_classification",
    "modelpress.tasks.token_classification",
    "modelpress.tasks.text_ranking",
    "modelpress.tasks.image_classification",
    "modelpress.tasks.text_generation",
    "modelpress.runtimes.base",
    "modelpress.runtimes.registry",
    "modelpress.runtimes.artifacts",
    "modelpress.runtimes.onnxruntime_runner",
    "modelpress.runtimes.openvino_runner",
    "modelpress.runtimes.genai_runner",
    "modelpress.runtimes.openvino_genai_runner",
    "modelpress.runtimes.cpu",
    "modelpress.runtimes.target",
    "modelpress.calibration_data.loaders",
    "modelpress.calibration_data.images",
    "modelpress.measures",
    "modelpress.measures.perplexity",
    "modelpress.measures.metrics",
    "modelpress.measures.uncertainty",
    "modelpress.measures.entities",
    "modelpress.tasks.evalsets",
    "modelpress.tasks.records",
    "modelpress.tasks.ranking",
    "modelpress.tasks.tagged",
    "modelpress.tasks.images",
    "modelpress.tasks.greedy_agreement",
)

#: what a deployment host must never need to import
PRESSING_STACK = ("torch", "transformers")
#: the import names of the ``press`` extra's packages: a CLI command that needs one on a slim install
#: is one line (exit 2) saying to install ``modelpress[press]``
PRESS_MODULES = frozenset(
    {
        "torch",
        "transformers",
        "onnx",
        "onnxscript",
        "onnx_ir",
        "safetensors",
        "scipy",
        "tqdm",
        "psutil",
        "archspec",
        "tomli",
    }
)
