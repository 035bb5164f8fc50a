"""Write the distilled student as a Hugging Face folder: what export reads next.

``<run>/student/`` holds ``config.json``, ``model.safetensors``, the teacher's tokenizer files,
the teacher's sentence-transformers module files when it had them (pooling / normalisation, so
the folder also loads in sentence-transformers), and ``distill.json`` (how it was made, the
evaluation history). The folder is assembled under a temporary name and renamed into place, so an
interrupted run never leaves something that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from modelpress.fileio import atomic_path, write_json
from modelpress.paths import DISTILL_JSON

ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")


def _copy_sentence_transformers_files(teacher_dir: Path, dest: Path) -> None:
    modules = teacher_dir / "modules.json"
    if not modules.is_file():
        return
    for name in ST_FILES:
        if (teacher_dir / name).is_file():
            shutil.copy2(teacher_dir / name, dest / name)
    for module in json.loads(modules.read_text(encoding="utf-8")):
        sub = module.get("path", "")
        if sub and (teacher_dir / sub).is_dir():
            shutil.copytree(teacher_dir / sub, dest / sub, dirs_exist_ok=True)


def write_student_folder(
    student: nn.Module,
    tokenizer: Any,
    *,
    dest: Path,
    teacher_ref: str,
    same_width: bool,
    summary: dict[str, Any],
) -> Path:
    """Save ``student`` + tokenizer (+ sentence-transformers files when widths match) at ``dest``."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        tmp.mkdir(parents=True)
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if same_width and Path(teacher_ref).is_dir():
            _copy_sentence_transformers_files(Path(teacher_ref), tmp)
        write_json(tmp / DISTILL_JSON, summary, sort_keys=True)
    return dest
