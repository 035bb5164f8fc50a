"""Checkpoints under ``<run>/distill_ckpt/``: what lets an interrupted distillation resume.

``last.pt`` holds everything a resumed run needs (weights, optimizer and grad-scaler state, the
optimizer step, the evaluation history and the best score); ``best.safetensors`` holds the best
student weights seen by evaluation. Every file is written to a temporary name and renamed, so a
kill at any moment leaves the previous complete file. A fingerprint of the configuration, teacher
and data guards against resuming someone else's run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modelpress.errors import BadInputError
from modelpress.fileio import atomic_path

LAST = "last.pt"
BEST = "best.safetensors"
TEACHER_CACHE = "teacher_targets.safetensors"


def fingerprint(payload: Any) -> str:
    """A stable hash of a JSON-serialisable description of the run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TrainState:
    """What the trainer carries between steps (and across a restart)."""

    step: int = 0  # optimizer steps taken
    best_score: tuple[float, ...] | None = None  # evaluation score of the best weights (higher is better)
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation


@dataclass(frozen=True)
class CheckpointDir:
    root: Path

    @property
    def last(self) -> Path:
        return self.root / LAST

    @property
    def best(self) -> Path:
        return self.root / BEST

    @property
    def teacher_cache(self) -> Path:
        return self.root / TEACHER_CACHE

    def save_last(
        self,
        *,
        fingerprint: str,
        state: TrainState,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any | None,
    ) -> None:
        payload = {
            "fingerprint": fingerprint,
            "step": state.step,
            "best_score": list(state.best_score) if state.best_score is not None else None,
            "best_step": state.best_step,
            "history": json.dumps(state.history),
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        with atomic_path(self.last) as tmp:
            torch.save(payload, tmp)

    def load_last(self, fingerprint: str) -> dict[str, Any] | None:
        """The last checkpoint's contents, or None when there is none or it belongs to another run."""
        if not self.last.is_file():
            return None
        try:
            payload = torch.load(self.last, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError) as exc:
            raise BadInputError(f"{self.last}: unreadable checkpoint ({exc}); delete it to start over") from None
        if payload.get("fingerprint") != fingerprint:
            return None
        return payload

    @staticmethod
    def state_from(payload: dict[str, Any]) -> TrainState:
        best = payload["best_score"]
        return TrainState(
            step=int(payload["step"]),
            best_score=tuple(best) if best is not None else None,
            best_step=payload["best_step"],
            history=json.loads(payload["history"]),
        )

    def save_best(self, student: torch.nn.Module) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
        with atomic_path(self.best) as tmp:
            save_file(_unshare(state), str(tmp))

    def load_best(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.best))

    def clear(self) -> None:
        """Remove a previous run's training files (the teacher cache guards itself)."""
        for path in (self.last, self.best):
            if path.exists():
                path.unlink()


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out
