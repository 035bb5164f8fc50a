"""TensorRT backend: Q/DQ compliance checker, engine builder, engine runner, ORT GPU runners.

Place in the pipeline: ``model.int8.onnx`` (written by the ONNX Runtime quantizer with the
``tensorrt`` preset) -> ``checker`` (no TensorRT needed) -> ``engine`` / ``stage`` (builds
``model.plan`` + ``engine.json``) -> ``runner`` (what validate and bench measure).

Nothing is imported here on purpose: every submodule must import on a CPU machine, and the
GPU-only ones import ``tensorrt`` / CUDA lazily inside functions.
"""
