"""Entry point of the distillation stage: recipe section in, student HF folder out.

``run_distillation`` is what ``modelpress distill`` / ``modelpress run`` call, in one process or
in each process started by ``torchrun`` (it joins the process group itself). It wires the pieces
of this package together: teacher → student → corpus → teacher targets → trainer → folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from modelpress.distill.checkpoint import CheckpointDir, fingerprint
from modelpress.distill.config import DistillConfig
from modelpress.distill.corpora import build_corpus
from modelpress.distill.data import split_indices
from modelpress.distill.distributed import distributed_context
from modelpress.distill.forward import DistillModule
from modelpress.distill.layer_selection import choose_layers
from modelpress.distill.objective import DistillObjective
from modelpress.distill.output import write_student_folder
from modelpress.distill.precision import resolve_precision
from modelpress.distill.sampler import DistributedBatchSampler
from modelpress.distill.student import build_student
from modelpress.distill.task_view import distill_view
from modelpress.distill.teacher import TeacherTargets, load_teacher
from modelpress.distill.trainer import Trainer, TrainPlan, say
from modelpress.errors import BadInputError
from modelpress.modalities import get_modality
from modelpress.models import load_preprocessor

STUDENT_DIR = "student"
CHECKPOINT_DIR = "distill_ckpt"
_NOT_IN_FINGERPRINT = ("enabled", "data", "save_every")  # data enters through its content hash


def run_distillation(
    cfg: DistillConfig,
    *,
    teacher: str,
    task: str,
    task_options: Mapping[str, Any] | None = None,
    out_dir: Path,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Distil ``teacher`` into the student ``cfg`` names; return ``out_dir / "student"``.

    ``teacher`` is a resolved model reference (folder or hub id), ``task`` a name of the task registry and
    ``task_options`` its options (feature extraction: ``pooling``, ``normalize``). Checkpoints live in
    ``out_dir / "distill_ckpt"``; a run with the same configuration, teacher and data resumes from them. Under
    torchrun every process calls this; only rank 0 writes, and every process returns the path once the folder
    exists. ``on_step`` is called with the optimizer step after each step (progress hooks, fault-injection
    tests).
    """
    if not cfg.enabled:
        raise BadInputError("distill.enabled: distillation is switched off in this recipe")
    spec = distill_view(task, task_options, model_dir=teacher if Path(teacher).is_dir() else None)
    weights = spec.resolve_weights(cfg.losses, has_labels=cfg.label_field is not None)
    out_dir = Path(out_dir)
    ckpt = CheckpointDir(out_dir / CHECKPOINT_DIR)
    attn = "eager" if weights["attention_kl"] > 0 else None  # only eager attention returns the maps

    with distributed_context() as dist:
        precision = resolve_precision(cfg.precision, dist.device)
        preprocessor = load_preprocessor(teacher, spec.task)  # a tokenizer, an image processor
        teacher_model = load_teacher(teacher, spec, attn_implementation=attn)
        corpus = build_corpus(
            get_modality(spec.task.modality),
            cfg,
            preprocessor,
            label2id=getattr(teacher_model.config, "label2id", None),
            num_labels=getattr(teacher_model.config, "num_labels", 0),
            per_token=spec.per_token_target,
        )
        train_indices, eval_indices = split_indices(len(corpus), cfg.eval_fraction, seed=cfg.seed)
        student_cfg, choice = cfg, None
        if cfg.num_layers is not None and cfg.layer_selection == "agreement":
            choice = choose_layers(
                teacher_model,
                num_layers=cfg.num_layers,
                spec=spec,
                corpus=corpus,
                indices=eval_indices + train_indices,
                dist=dist,
                precision=precision,
                batch_size=cfg.batch_size,
                max_texts=cfg.layer_selection_texts,
            )
            student_cfg = dataclasses.replace(cfg, layers=choice.layers, num_layers=None)
            if dist.is_main:
                best = choice.candidates[0]
                shown = ", ".join(f"{k}={v:.4g}" for k, v in best.items() if k != "layers")
                say(
                    f"distill: layer_selection = agreement: keeping teacher layers {list(choice.layers)} "
                    f"({shown} untrained; best of {len(choice.candidates)} subsets)"
                )
        build = build_student(student_cfg, teacher_model, spec, tokenizer=preprocessor, attn_implementation=attn)
        teacher_width = getattr(teacher_model.config, "hidden_size", None)  # CNNs have a width per stage
        same_width = getattr(build.model.config, "hidden_size", None) == teacher_width
        if not same_width and (weights["embedding_mse"] > 0 or weights["embedding_cos"] > 0):
            raise BadInputError(
                "distill.student: a feature-extraction student must keep the teacher's hidden size "
                f"({teacher_width}); its embeddings are compared with the teacher's"
            )
        sampler = DistributedBatchSampler(
            train_indices,
            corpus.lengths,
            global_batch=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            world_size=dist.world_size,
            rank=dist.rank,
            seed=cfg.seed,
            group_by_length=cfg.group_by_length,
        )
        plan = TrainPlan.from_config(cfg, steps_per_epoch=sampler.steps_per_epoch, has_eval=bool(eval_indices))
        objective = DistillObjective(weights, temperature=cfg.temperature, layer_map=build.layer_map)
        torch.manual_seed(cfg.seed)  # the width projection starts identical on every process
        module = DistillModule(
            build.model,
            spec=spec,
            teacher_hidden_size=teacher_width,
            need_hidden=objective.needs_hidden,
            need_attentions=objective.needs_attentions,
        )
        targets = TeacherTargets(
            teacher_model,
            spec=spec,
            precision=precision,
            device=dist.device,
            need_hidden=objective.needs_hidden,
            need_attentions=objective.needs_attentions,
            hidden_layers=build.layer_map,
        )
        task_key = {"teacher": teacher, "task": task, "options": spec.describe(), "corpus": corpus.fingerprint}
        run_config = {k: v for k, v in cfg.to_json_dict().items() if k not in _NOT_IN_FINGERPRINT}
        run_fingerprint = fingerprint({**task_key, "config": run_config})
        if dist.is_main:
            say(
                f"distill: {len(train_indices)} train / {len(eval_indices)} eval examples, {plan.total_steps} steps "
                f"({plan.steps_per_epoch} per epoch), global batch {cfg.batch_size} on {dist.world_size} "
                f"process(es), {precision.name}, losses {objective.weights}"
            )
            if ckpt.last.exists() and ckpt.load_last(run_fingerprint) is None:
                say(f"distill: {ckpt.root} belongs to a different configuration or data; starting over")
                ckpt.clear()
        dist.barrier()
        if cfg.cache_teacher and not objective.needs_attentions and not spec.per_token_target:
            targets.build_cache(
                corpus,
                path=ckpt.teacher_cache,
                dist=dist,
                batch_size=cfg.batch_size,
                max_token_mb=cfg.cache_teacher_max_mb,
                fingerprint=fingerprint({**task_key, "precision": precision.name, "max_length": cfg.max_length}),
            )
            if dist.is_main and objective.needs_hidden and targets.token_cache is None:
                say(
                    f"distill: the teacher's hidden states would take more than cache_teacher_max_mb = "
                    f"{cfg.cache_teacher_max_mb:g} MB; the teacher runs live for hidden_mse"
                )
        trainer = Trainer(
            module=module,
            objective=objective,
            teacher=targets,
            corpus=corpus,
            sampler=sampler,
            eval_indices=eval_indices,
            plan=plan,
            cfg=cfg,
            dist=dist,
            precision=precision,
            ckpt=ckpt,
            fingerprint=run_fingerprint,
            on_step=on_step,
        )
        state = trainer.train()
        dest = out_dir / STUDENT_DIR
        if dist.is_main:
            student = build.model
            if state.best_step is not None:
                student.load_state_dict(ckpt.load_best())
            summary = {
                "teacher": teacher,
                "task": task,
                "task_options": spec.describe(),
                "kept_layers": list(build.kept_layers) if build.kept_layers else None,
                "layer_map": list(build.layer_map),
                "layer_candidates": list(choice.candidates) if choice is not None else None,
                "steps": state.step,
                "best_step": state.best_step,
                "evaluations": state.history,
                "world_size": dist.world_size,
                "precision": precision.name,
                "config": cfg.to_json_dict(),
            }
            write_student_folder(
                student.cpu(), preprocessor, dest=dest, teacher_ref=teacher, same_width=same_width, summary=summary
            )
            say(
                f"distill: student written to {dest}"
                + (f" (best at step {state.best_step})" if state.best_step is not None else "")
            )
        dist.barrier()
    return dest
