"""Shared fixtures of the spine's tests: tiny random Hugging Face models built in code, data files.

Every model here is built from a config (hidden 32, 2 layers, 2 heads, intermediate 64), saved as an
ordinary Hugging Face folder with a WordPiece tokenizer whose vocab.txt covers every word of the texts
below, and built once per session. Nothing reads the network or the model hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# On tiny models int8 vs fp32 speed is noise, so which candidate becomes the bundle's default would be
# too: the fp32 candidates are timed 20 ms slower (validate.select's test hook, timing only), and the
# int8 plan stays the default the tests check. tests/test_select.py sets the hook to test selection.
os.environ.setdefault("MODELPRESS_SLOW_CANDIDATE", "onnx-fp32=20,student-onnx-fp32=20,openvino-f32=20,openvino-bf16=20")

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STSB_TEST = SHARED_DATA / "stsb" / "sts-test.csv"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = [".", ",", "!", "?", "'", "-"]
#: words the generated texts are made of (plus every word of export/onnx_export.py's example texts)
WORDS = """a an the this that one two three some many every no dog dogs cat cats fox bird horse man woman
child children people team city river road house car train book song game music food water light night
day morning evening weather rain sun snow market price prices report news story film show school student
teacher doctor player runs run ran walks walked jumps jumped sits sat plays played eats ate reads read
sings sang opens opened closes closed rises rose falls fell watches watched likes liked quick quickly slow
slowly brown lazy small big old new young happy sad red green blue black white cold warm bright dark loud
quiet over under near across into onto with without from to in on at by after before during and or but
because while is are was were has have had will can may not very too also again today yesterday tomorrow
here there""".split()
EXPORT_WORDS = """the quick brown fox jumps over lazy dog export me please a much longer sentence than example so
sequence length differs from it short one batch size three also two text used for tracing""".split()
VOCAB = SPECIAL_TOKENS + PUNCTUATION + sorted(set(WORDS) | set(EXPORT_WORDS))

# the tiny models' shapes (the brief of the test suite: hidden 32, 2 layers, 2 heads, intermediate 64)
HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 32, 2, 2, 64, 128
NUM_LABELS = 3


def make_texts(n: int, *, seed: int, min_words: int = 2, max_words: int = 24) -> list[str]:
    """Deterministic sentences over ``WORDS`` with widely varying lengths (padding-heavy batches)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        words = [rng.choice(WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "!", "?", "."]))
    return out


def write_vocab(path: Path) -> Path:
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def make_tokenizer(vocab_file: Path, *, model_input_names=None):
    from transformers import BertTokenizerFast

    # transformers 5.x: the argument is ``vocab``; ``vocab_file=`` is silently ignored there and gives
    # a tokenizer that maps every word to [UNK]. The tests below check that words are known.
    kwargs = {"model_input_names": list(model_input_names)} if model_input_names else {}
    return BertTokenizerFast(vocab=str(vocab_file), **kwargs)


@dataclass(frozen=True)
class TinyModel:
    """A tiny HF model folder, its family and the graph inputs it should export with."""

    path: Path
    family: str
    input_names: tuple[str, ...]


#: wider than BERT's 0.02: with 0.02 the tiny model's outputs are dominated by the embeddings, every
#: text gets nearly the same vector and int8 error vanishes below 1e-6; with 0.2 the MatMuls matter
INIT_RANGE = 0.2


def _bert_config(**extra):
    from modelpress.testing import tiny_config

    extra.setdefault("initializer_range", INIT_RANGE)
    return tiny_config(
        "bert",
        vocab_size=len(VOCAB),
        hidden=HIDDEN,
        layers=LAYERS,
        heads=HEADS,
        intermediate=INTERMEDIATE,
        max_positions=MAX_POSITIONS,
        **extra,
    )


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


def _tiny(tmp_path_factory, name: str, **kwargs) -> Path:
    from modelpress.testing import make_tiny_model

    return make_tiny_model(
        tmp_path_factory.mktemp(name),
        words=VOCAB[len(SPECIAL_TOKENS) :],
        initializer_range=INIT_RANGE,
        hidden=HIDDEN,
        layers=LAYERS,
        heads=HEADS,
        intermediate=INTERMEDIATE,
        max_positions=MAX_POSITIONS,
        **kwargs,
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> TinyModel:
    """BertModel (feature extraction), random weights, seed 0."""
    return TinyModel(
        _tiny(tmp_path_factory, "tiny-bert", seed=0), "bert", ("input_ids", "attention_mask", "token_type_ids")
    )


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory) -> TinyModel:
    """DistilBertModel with the same WordPiece vocabulary; its tokenizer emits no token_type_ids."""
    return TinyModel(
        _tiny(tmp_path_factory, "tiny-distilbert", family="distilbert", seed=1),
        "distilbert",
        ("input_ids", "attention_mask"),
    )


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory) -> TinyModel:
    """BertForSequenceClassification with NUM_LABELS classes, random weights, seed 2."""
    return TinyModel(
        _tiny(tmp_path_factory, "tiny-bert-cls", task="text-classification", labels=NUM_LABELS, seed=2),
        "bert",
        ("input_ids", "attention_mask", "token_type_ids"),
    )


# -- data files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataFiles:
    calibration_txt: Path  # 96 texts, one per line
    text_jsonl: Path  # {"text": ...} per line, 40 texts
    pairs_jsonl: Path  # {"sentence1", "sentence2", "score"} per line, 30 pairs
    stsb_tsv: Path  # STS-B layout: 7 tab fields, no header (two rows with 9 fields)
    labelled_jsonl: Path  # {"text", "label"} per line, 40 texts, NUM_LABELS classes
    calibration_texts: tuple[str, ...]
    eval_texts: tuple[str, ...]


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> DataFiles:
    root = tmp_path_factory.mktemp("data")
    cal = make_texts(96, seed=10)
    (root / "calibration.txt").write_text("\n".join(cal) + "\n", encoding="utf-8")

    texts = make_texts(40, seed=11)
    with (root / "texts.jsonl").open("w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")

    rng = random.Random(12)
    a, b = make_texts(30, seed=13), make_texts(30, seed=14)
    with (root / "pairs.jsonl").open("w", encoding="utf-8") as fh:
        for s1, s2 in zip(a, b):
            fh.write(json.dumps({"sentence1": s1, "sentence2": s2, "score": round(rng.uniform(0, 5), 2)}) + "\n")

    with (root / "sts.tsv").open("w", encoding="utf-8") as fh:
        for k, (s1, s2) in enumerate(zip(a[:12], b[:12])):
            extra = "\tsource\tlicence" if k in (3, 7) else ""
            fh.write(f"main-captions\tMSRvid\t2012test\t{k:04d}\t{rng.uniform(0, 5):.3f}\t{s1}\t{s2}{extra}\n")

    with (root / "labelled.jsonl").open("w", encoding="utf-8") as fh:
        for k, t in enumerate(texts):
            fh.write(json.dumps({"text": t, "label": k % NUM_LABELS}) + "\n")
    return DataFiles(
        root / "calibration.txt",
        root / "texts.jsonl",
        root / "pairs.jsonl",
        root / "sts.tsv",
        root / "labelled.jsonl",
        tuple(cal),
        tuple(texts),
    )


# -- the CLI in a subprocess -------------------------------------------------------------------
def cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m modelpress ARGS`` in a fresh process (offline), as a user runs it."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(
        [sys.executable, "-m", "modelpress", *map(str, args)],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string for these values


def write_recipe(path: Path, top: dict, sections: dict[str, dict]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, body in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


#: validation settings small enough for a tiny model on 2 shared cores
FAST_VALIDATE = {
    "latency_runs": 2,
    "warmup_runs": 1,
    "batch_sizes": [1, 2],
    "seq_lengths": [16],
    "real_workload": False,
    "max_length": 32,
    "threads": 1,
}
FAST_CALIBRATION = {"num_samples": 64, "max_length": 32, "batch_size": 16}


# -- exported tiny models (exported once per session, in process) ------------------------------
@dataclass(frozen=True)
class Exported:
    model: TinyModel
    onnx_path: Path
    result: object  # export.onnx_export.ExportResult


def task_for(name: str = "feature-extraction", **options):
    """A configured task of the registry (feature extraction: mean pooling, normalized, by default)."""
    from modelpress.tasks import configure_task

    if name == "feature-extraction":
        options = {"pooling": "mean", "normalize": True, **options}
    return configure_task(name, options)


def load_tiny(path: Path, task=None):
    """(model, tokenizer) of a tiny model folder for ``task`` (default: feature extraction)."""
    from modelpress.models import load_model_and_preprocessor

    return load_model_and_preprocessor(str(path), task or task_for())


def _export(tiny: TinyModel, out: Path) -> Exported:
    from modelpress.export.onnx_export import export_onnx

    task = task_for()
    model, tokenizer = load_tiny(tiny.path, task)
    result = export_onnx(model, tokenizer, out, task=task)
    return Exported(tiny, out, result)


@pytest.fixture(scope="session")
def bert_onnx(tiny_bert, tmp_path_factory) -> Exported:
    return _export(tiny_bert, tmp_path_factory.mktemp("bert-onnx") / "model.onnx")


@pytest.fixture(scope="session")
def distilbert_onnx(tiny_distilbert, tmp_path_factory) -> Exported:
    return _export(tiny_distilbert, tmp_path_factory.mktemp("distilbert-onnx") / "model.onnx")
