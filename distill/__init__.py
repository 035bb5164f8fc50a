"""Distillation: the first stage of modelpress, teacher → smaller student (an HF folder).

``distill.config`` holds the ``[distill]`` recipe section (standard library only);
``distill.pipeline.run_distillation`` runs the stage, in one process or under torchrun (DDP).
The rest, one job per module: ``student`` (build the student), ``data`` and ``sampler`` (corpus and
batches), ``teacher`` (targets and their cache), ``forward`` (what is compared), ``losses`` and
``objective`` (what is minimised), ``trainer`` (the loop), ``evaluation``, ``checkpoint``,
``output`` (the student folder), ``distributed`` and ``precision`` (where it runs).
Modules are imported on use, so reading a recipe does not import torch.
"""
