"""The trainer end to end on tiny models: DDP equals one process, a killed run resumes to the same
weights, distillation moves the student towards the teacher, and the student folder is a normal
HF model (feature extractor or classifier with the teacher's labels)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelpress.distill.config import DistillConfig
from modelpress.tasks.feature_extraction import pool
from modelpress.distill.pipeline import run_distillation
from modelpress.testing import make_teacher, random_sentences, write_corpus
from modelpress.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]
FE_OPTIONS = {"pooling": "mean", "normalize": True}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and the subprocesses get one (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fe_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fe")
    make_teacher(root / "teacher", num_layers=4)
    write_corpus(root / "corpus.txt", 120)
    return root


@pytest.fixture(scope="module")
def tc_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    make_teacher(root / "teacher", task="text-classification", num_labels=3, num_layers=4, initializer_range=0.3)
    write_corpus(root / "corpus.jsonl", 100, num_labels=3)
    return root


def _section(root: Path, **overrides) -> dict:
    section = {
        "data": "corpus.txt",
        "num_layers": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_ratio": 0.2,
        "eval_fraction": 0.1,
        "seed": 1,
    }
    section.update(overrides)
    return section


def _config(root: Path, section: dict) -> DistillConfig:
    return DistillConfig.from_dict(section, base_dir=root)


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _cli(root: Path, section: dict, out: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    section_file = out.parent / f"{out.name}.json"
    section_file.write_text(json.dumps(section))
    # the section file lives next to the run folder; data paths in it are absolute
    args = [
        "-m",
        "modelpress.distill",
        str(section_file),
        "--teacher",
        str(root / "teacher"),
        "--out",
        str(out),
        "--task-options",
        json.dumps(FE_OPTIONS),
        *extra,
    ]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)


def _trained_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "distill_ckpt" / "last.pt", map_location="cpu", weights_only=True)["module"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(fe_setup, tmp_path):
    # hidden_mse: the token-level teacher cache is computed in shards and gathered across processes
    section = _section(
        fe_setup,
        data=str(fe_setup / "corpus.txt"),
        max_steps=6,
        eval_every=3,
        precision="fp32",
        losses={"embedding_mse": 1.0, "embedding_cos": 1.0, "hidden_mse": 1.0},
    )
    ddp = _cli(fe_setup, section, tmp_path / "ddp", nproc=2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_distillation(
        _config(fe_setup, section),
        teacher=str(fe_setup / "teacher"),
        task="feature-extraction",
        task_options=FE_OPTIONS,
        out_dir=tmp_path / "one",
    )
    run_distillation(
        _config(fe_setup, {**section, "grad_accum": 2}),
        teacher=str(fe_setup / "teacher"),
        task="feature-extraction",
        task_options=FE_OPTIONS,
        out_dir=tmp_path / "accum",
    )
    assert single == tmp_path / "one" / "student"
    ddp_state, one_state, accum_state = (_trained_state(tmp_path / d) for d in ("ddp", "one", "accum"))
    assert _max_diff(ddp_state, one_state) < 1e-5
    assert _max_diff(accum_state, one_state) < 1e-5
    # the weights did move, so the equality is not vacuous
    ddp_summary = json.loads((tmp_path / "ddp" / "student" / "distill.json").read_text())
    one_summary = json.loads((single / "distill.json").read_text())
    # every process chose the same teacher layers (layer_selection = agreement), as one process did
    assert ddp_summary["kept_layers"] == one_summary["kept_layers"]
    teacher = load_file(str(fe_setup / "teacher" / "model.safetensors"))
    source = one_summary["kept_layers"][1]
    moved = (
        (
            one_state["student.encoder.layer.1.output.dense.weight"]
            - teacher[f"encoder.layer.{source}.output.dense.weight"]
        )
        .abs()
        .max()
        .item()
    )
    assert moved > 1e-3
    assert ddp_summary["world_size"] == 2 and one_summary["world_size"] == 1
    assert [e["step"] for e in ddp_summary["evaluations"]] == [0, 3, 6]
    for a, b in zip(ddp_summary["evaluations"], one_summary["evaluations"]):
        assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-6)
    assert (tmp_path / "ddp" / "distill_ckpt" / "teacher_targets.safetensors").is_file()


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(fe_setup, tmp_path):
    # two epochs of 13 steps, checkpoints every 5, dropout on (the RNG must be restored too), and a
    # token-level loss whose targets the resumed run reads back from the token cache
    section = _section(
        fe_setup,
        data=str(fe_setup / "corpus.txt"),
        epochs=2,
        save_every=5,
        eval_every=4,
        dropout=0.1,
        losses={"hidden_mse": 0.5},
        precision="fp32",
    )
    killed = _cli(fe_setup, section, tmp_path / "run", "--kill-at-step", "17")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "distill_ckpt" / "last.pt", weights_only=True)
    assert ckpt["step"] == 15  # the last checkpoint before the kill; steps 16-17 are redone
    assert not (tmp_path / "run" / "student").exists()

    kwargs = dict(teacher=str(fe_setup / "teacher"), task="feature-extraction", task_options=FE_OPTIONS)
    resumed = run_distillation(_config(fe_setup, section), out_dir=tmp_path / "run", **kwargs)
    straight = run_distillation(_config(fe_setup, section), out_dir=tmp_path / "straight", **kwargs)
    assert _max_diff(_trained_state(tmp_path / "run"), _trained_state(tmp_path / "straight")) < 1e-6
    assert (
        _max_diff(load_file(str(resumed / "model.safetensors")), load_file(str(straight / "model.safetensors"))) < 1e-6
    )
    resumed_summary = json.loads((resumed / "distill.json").read_text())
    straight_summary = json.loads((straight / "distill.json").read_text())
    assert resumed_summary["steps"] == straight_summary["steps"] == 26
    assert resumed_summary["best_step"] == straight_summary["best_step"]
    assert [e["step"] for e in resumed_summary["evaluations"]] == [0, 4, 8, 12, 16, 20, 24, 26]

    # a finished run resumes at its end: no more steps, same student
    again = run_distillation(_config(fe_setup, section), out_dir=tmp_path / "run", **kwargs)
    assert _max_diff(load_file(str(again / "model.safetensors")), load_file(str(resumed / "model.safetensors"))) == 0
    # a changed configuration does not resume someone else's checkpoint
    changed = run_distillation(
        _config(fe_setup, {**section, "lr": 5e-4, "epochs": 1}), out_dir=tmp_path / "run", **kwargs
    )
    assert json.loads((changed / "distill.json").read_text())["steps"] == 13


def _embed(model_dir_or_model, texts, tokenizer):
    from transformers import AutoModel

    model = (
        AutoModel.from_pretrained(model_dir_or_model) if isinstance(model_dir_or_model, Path) else model_dir_or_model
    )
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    return pool(hidden, batch["attention_mask"], pooling="mean", normalize=True)


def test_distilled_student_is_measurably_closer_to_its_teacher(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from modelpress.distill.student import build_layer_subset

    teacher_dir = make_teacher(tmp_path / "teacher", num_layers=4)
    write_corpus(tmp_path / "corpus.txt", 400, seed=5)
    cfg = _config(tmp_path, _section(tmp_path, batch_size=16, epochs=4, lr=2e-3, warmup_ratio=0.1))
    student_dir = run_distillation(
        cfg, teacher=str(teacher_dir), task="feature-extraction", task_options=FE_OPTIONS, out_dir=tmp_path / "run"
    )
    assert {"config.json", "model.safetensors", "tokenizer.json", "distill.json"} <= {
        p.name for p in student_dir.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    texts = random_sentences(200, seed=99)  # texts the student never saw
    teacher = AutoModel.from_pretrained(teacher_dir)
    reference = _embed(teacher, texts, tokenizer)
    kept = json.loads((student_dir / "distill.json").read_text())["kept_layers"]
    start = _embed(build_layer_subset(teacher, kept), texts, tokenizer)  # where training started
    distilled = _embed(student_dir, texts, tokenizer)
    assert AutoModel.from_pretrained(student_dir).config.num_hidden_layers == 2
    cos_start = (start * reference).sum(-1).mean().item()
    cos_end = (distilled * reference).sum(-1).mean().item()
    assert cos_start < 0.95
    assert 1 - cos_end < 0.5 * (1 - cos_start), (cos_start, cos_end)  # at least halves the gap


def test_classifier_student_keeps_teacher_labels_and_learns_with_token_losses(tc_setup, tmp_path):
    from transformers import AutoModelForSequenceClassification

    section = _section(
        tc_setup,
        data="corpus.jsonl",
        label_field="label",
        epochs=3,
        eval_fraction=0.2,
        losses={"kl": 1.0, "ce": 0.1, "hidden_mse": 0.1, "attention_kl": 1.0},
        temperature=2.0,
    )
    student_dir = run_distillation(
        _config(tc_setup, section),
        teacher=str(tc_setup / "teacher"),
        task="text-classification",
        task_options={},
        out_dir=tmp_path / "run",
    )
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(tc_setup / "teacher")
    assert student.config.architectures == ["BertForSequenceClassification"]
    assert student.config.id2label == teacher.config.id2label and student.config.num_hidden_layers == 2
    history = json.loads((student_dir / "distill.json").read_text())["evaluations"]
    assert history[0]["step"] == 0 and len(history) == 4
    best = max(history, key=lambda e: (e["agreement"], -e["kl"]))
    assert best["kl"] < history[0]["kl"]
    assert not (tmp_path / "run" / "distill_ckpt" / "teacher_targets.safetensors").exists()  # token losses: live


def test_narrower_student_uses_a_projection_that_is_not_exported(tc_setup, tmp_path):
    section = _section(
        tc_setup,
        data="corpus.jsonl",
        num_layers=None,
        max_steps=4,
        eval_fraction=0.0,
        student_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2},
        losses={"kl": 1.0, "hidden_mse": 1.0},
    )
    section.pop("num_layers")
    student_dir = run_distillation(
        _config(tc_setup, section),
        teacher=str(tc_setup / "teacher"),
        task="text-classification",
        task_options={},
        out_dir=tmp_path / "run",
    )
    state = _trained_state(tmp_path / "run")
    assert state["projection.weight"].shape == (32, 16)
    exported = load_file(str(student_dir / "model.safetensors"))
    assert not any("projection" in k for k in exported)
    assert exported["classifier.weight"].shape == (3, 16)
    with pytest.raises(BadInputError, match="must keep the teacher's hidden size"):
        run_distillation(
            _config(tc_setup, {**section, "data": "corpus.jsonl", "losses": {}}),
            teacher=str(tc_setup / "teacher"),
            task="feature-extraction",
            task_options=FE_OPTIONS,
            out_dir=tmp_path / "fe",
        )


def test_bad_corpus_and_batch_errors_name_the_problem(fe_setup, tmp_path):
    kwargs = dict(
        teacher=str(fe_setup / "teacher"), task="feature-extraction", task_options=FE_OPTIONS, out_dir=tmp_path / "run"
    )
    with pytest.raises(BadInputError, match="missing.txt"):
        run_distillation(_config(fe_setup, _section(fe_setup, data="missing.txt")), **kwargs)
    with pytest.raises(BadInputError, match="distill.batch_size"):
        run_distillation(_config(fe_setup, _section(fe_setup, batch_size=500)), **kwargs)
    with pytest.raises(BadInputError, match="task_options.pooling"):
        run_distillation(_config(fe_setup, _section(fe_setup)), **{**kwargs, "task_options": {"pooling": "max"}})


def test_a_decoder_student_trains_under_ddp_as_in_one_process(tmp_path):
    """text-generation: a 1-layer GPT-2 subset on next-token KL (+ hidden MSE), two torchrun processes
    against one with the same global batch: the same weights."""
    from modelpress.testing import make_tiny_causal_lm

    teacher = make_tiny_causal_lm(tmp_path / "gpt2", family="gpt2")
    (tmp_path / "corpus.txt").write_text("\n".join(random_sentences(120, seed=1)) + "\n", encoding="utf-8")
    section = {
        "data": str(tmp_path / "corpus.txt"),
        "num_layers": 1,
        "layer_selection": "spread",
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_ratio": 0.2,
        "eval_fraction": 0.1,
        "seed": 1,
        "max_steps": 6,
        "eval_every": 3,
        "precision": "fp32",
        "max_length": 32,
        "losses": {"kl": 1.0, "hidden_mse": 1.0},
    }
    (tmp_path / "section.json").write_text(json.dumps(section))
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "modelpress.distill",
            str(tmp_path / "section.json"),
            "--teacher",
            str(teacher),
            "--task",
            "text-generation",
            "--out",
            str(tmp_path / "ddp"),
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_distillation(
        _config(tmp_path, section), teacher=str(teacher), task="text-generation", out_dir=tmp_path / "one"
    )
    ddp_state, one_state = _trained_state(tmp_path / "ddp"), _trained_state(tmp_path / "one")
    assert _max_diff(ddp_state, one_state) < 1e-5
    summary = json.loads((single / "distill.json").read_text())
    assert json.loads((tmp_path / "ddp" / "student" / "distill.json").read_text())["world_size"] == 2
    source = summary["kept_layers"][0]
    start = load_file(str(teacher / "model.safetensors"))[f"transformer.h.{source}.mlp.c_fc.weight"]
    assert (one_state["student.transformer.h.0.mlp.c_fc.weight"] - start).abs().max().item() > 1e-3  # it trained
