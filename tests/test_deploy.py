"""Bundles deploy without torch (issue 25 item 4).

- The bundle's tokenizer (``modelpress.tokenization``, ``tokenizers`` on ``tokenizer.json``) gives
  transformers' ids, masks, segment ids, offsets, overflowing windows and decoded text; its image
  processor (``modelpress.image_processing``, numpy + Pillow on ``preprocessor_config.json``) gives
  transformers' ``pixel_values``, bit for bit.
- Every deploy-side module (``modelpress.deploy_side``) imports in a fresh interpreter where
  importing torch or transformers raises.
- A bundle of each task, loaded there, gives the numbers the same bundle gives when its
  preprocessor is transformers' (what ``load`` used before); the README's snippets
  (``docs/snippets``: onnxruntime + tokenizers, no modelpress) give them too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelpress.testing import write_tokenizer
from modelpress.export.exporters import export_model

REPO = Path(__file__).resolve().parents[1]
SNIPPETS = REPO / "docs" / "snippets"

#: put first in a child interpreter: importing torch or transformers (or a submodule) raises
BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"{name} is blocked: the deploy side must not import it", name=name)

    sys.meta_path.insert(0, _Blocked())
    """
)


def run_blocked(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with torch and transformers unimportable (raises on failure)."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# -- the tokenizer against transformers' ---------------------------------------------------------------
TEXTS = [
    "the cat sat on the mat",
    "",
    "a dog runs fast , didn't it ?",
    "the movie was very good and the plot " * 6,
    "\u200b cat \ufeff dog",
]


def _byte_level_bpe(folder: Path):
    """A RoBERTa-style byte-level BPE tokenizer trained here (the BERT test tokenizer is WordPiece)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the cat sat on the mat, didn't it?", "a dog runs fast . slow"] * 50, trainer)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=64,
        padding_side="left",
        chat_template="{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}",
    )
    hf.save_pretrained(str(folder))


def _bert(folder: Path):
    tokenizer = write_tokenizer(folder)
    tokenizer.clean_up_tokenization_spaces = True
    tokenizer.save_pretrained(str(folder))


def _lists(x):
    """Arrays, tuples and lists as nested lists (rows of unpadded ids differ in length)."""
    x = x.tolist() if isinstance(x, np.ndarray) else x
    return [_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


CALLS = [
    dict(truncation=True, return_tensors="np", max_length=16, padding="longest"),
    dict(truncation=True, return_tensors="np", max_length=16, padding="max_length"),
    # the tagger's windows: overflowing rows, their owners and character offsets
    dict(
        truncation=True,
        return_tensors="np",
        max_length=12,
        padding="longest",
        return_offsets_mapping=True,
        return_overflowing_tokens=True,
        stride=4,
    ),
    dict(truncation=True, max_length=10),
    dict(add_special_tokens=False),
]


@pytest.mark.parametrize("make", [_bert, _byte_level_bpe], ids=["wordpiece", "byte-level-bpe"])
def test_the_bundle_tokenizer_encodes_and_decodes_as_transformers(make, tmp_path):
    import transformers

    from modelpress.tokenization import DeployTokenizer

    make(tmp_path)
    hf, ours = transformers.AutoTokenizer.from_pretrained(str(tmp_path)), DeployTokenizer(tmp_path)
    for kwargs in CALLS:
        want, got = hf(TEXTS, **kwargs), ours(TEXTS, **kwargs)
        for key in want:
            assert _lists(want[key]) == _lists(got[key]), (key, kwargs)
    # pairs (a cross-encoder's query and passage): longest-first truncation, segment ids 0 then 1
    want = hf(TEXTS[:3], TEXTS[2:], truncation=True, return_tensors="np", max_length=14, padding="longest")
    got = ours(TEXTS[:3], TEXTS[2:], truncation=True, return_tensors="np", max_length=14, padding="longest")
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    assert got["token_type_ids"].max() == (1 if make is _bert else 0)
    assert hf(TEXTS[2])["input_ids"] == ours(TEXTS[2])["input_ids"]  # one text: its ids alone
    ids = hf(TEXTS[2])["input_ids"]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert (ours.pad_token_id, ours.eos_token_id, ours.model_max_length, ours.num_special_tokens_to_add()) == (
        hf.pad_token_id,
        hf.eos_token_id,
        hf.model_max_length,
        hf.num_special_tokens_to_add(),
    )
    if hf.chat_template:
        chat = [{"role": "user", "content": "the cat"}]
        want = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert ours.apply_chat_template(chat, add_generation_prompt=True) == list(want)


# -- the image processor against transformers' ---------------------------------------------------------
PROCESSORS = [
    ("ViTImageProcessor", dict(size={"height": 32, "width": 32})),
    ("ViTImageProcessor", dict(size=20)),  # an int: a square
    ("DeiTImageProcessor", dict(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})),
    ("ConvNextImageProcessor", dict(size={"shortest_edge": 32}, crop_pct=0.875)),  # ResNet's
    ("ConvNextImageProcessor", dict(size={"shortest_edge": 384})),  # warped, not cropped
    ("MobileNetV2ImageProcessor", dict(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})),
    ("BitImageProcessor", dict(size={"shortest_edge": 40}, crop_size={"height": 48, "width": 48})),  # padded crop
]


@pytest.mark.parametrize("name,args", PROCESSORS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROCESSORS)])
def test_the_bundle_image_processor_matches_transformers_bit_for_bit(name, args, tmp_path):
    import transformers

    from modelpress.image_processing import DeployImageProcessor

    getattr(transformers, name)(**args).save_pretrained(str(tmp_path))
    hf = transformers.AutoImageProcessor.from_pretrained(str(tmp_path), backend="pil")
    ours = DeployImageProcessor.from_folder(tmp_path)
    rng = np.random.default_rng(0)
    for height, width in [(30, 40), (64, 17), (5, 7), (33, 33)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        want = hf(images=[image], return_tensors="np", input_data_format="channels_last")["pixel_values"]
        got = ours(images=[image])["pixel_values"]
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want), (height, width)


def test_an_unknown_image_processor_is_one_line_naming_the_supported_ones(tmp_path):
    from modelpress.errors import BadInputError
    from modelpress.image_processing import DeployImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "SiglipImageProcessor"}))
    with pytest.raises(BadInputError, match=r"SiglipImageProcessor is not one .* \(supported: ViTImageProcessor"):
        DeployImageProcessor.from_folder(tmp_path)


# -- the deploy-side modules ------------------------------------------------------------------------------
def test_every_deploy_side_module_imports_without_torch_or_transformers():
    """The rule of ``modelpress.deploy_side``: a module-level import of torch or transformers in any
    of these modules (or in anything they import) fails here."""
    run_blocked(
        """
        import importlib
        from modelpress.deploy_side import DEPLOY_SIDE_MODULES, PRESSING_STACK

        for name in DEPLOY_SIDE_MODULES:
            importlib.import_module(name)
        assert not [m for m in sys.modules if m.split(".")[0] in PRESSING_STACK]
        """
    )


def test_the_blocker_blocks():
    """The check above can fail: the same interpreter set-up refuses torch."""
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK + "import transformers"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "transformers is blocked" in proc.stderr


# -- a bundle of each task, run without torch ---------------------------------------------------------------
WORDS_TEXTS = ["the cat sat on the mat", "a dog runs fast", "the movie was very good and the plot was long"]
TOKENLESS = "a \u200b dog"  # a zero-width space: a word without a token of its own
LONG = " ".join(["the cat sat on the mat and the dog was good"] * 6)  # longer than max_length: windows
PAIRS = [("a cat", "the cat sat on the mat"), ("a dog", "the movie was very good"), ("the plot", "a dog runs")]


def _bundle(root: Path, graph: Path, preprocessor, task, *, label_names=(), max_positions=None) -> Path:
    """A bundle folder around ``graph`` with its manifest (what ``load`` verifies)."""
    from modelpress.bundle import INT8_MODEL, write_bundle_meta
    from modelpress.fileio import graph_input_shapes
    from modelpress.manifest import write_manifest
    from modelpress.modalities import get_modality

    root.mkdir(parents=True)
    shutil.copyfile(graph, root / INT8_MODEL)
    modality = get_modality(task.modality)
    modality.save_preprocessor(preprocessor, root / modality.preprocessor_dir)
    shapes = graph_input_shapes(graph)
    write_bundle_meta(
        root,
        task=task,
        input_names=list(shapes),
        max_length=24,
        max_positions=max_positions,
        label_names=label_names,
        input_shapes=shapes,
    )
    write_manifest(root, recipe={}, task=task.describe(), metrics={}, gate=None, input_names=list(shapes))
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """A bundle of each task from a tiny model (the fp32 export stands in for the int8 model)."""
    from modelpress.models import load_model_and_preprocessor
    from modelpress.tasks import configure_task
    from modelpress.testing import make_tiny_causal_lm, make_tiny_model, make_tiny_vision_model, write_images

    root = tmp_path_factory.mktemp("deploy")
    made = {}
    specs = {
        "feature-extraction": (dict(pooling="mean", normalize=True), {}),
        "text-classification": ({}, dict(labels=["negative", "neutral", "positive"])),
        "token-classification": ({}, dict(labels=["O", "B-X", "I-X"])),
        "text-ranking": ({}, dict(labels=1)),
        "image-classification": ({}, dict(labels=["zero", "one", "two"])),
        "text-generation": ({}, {}),
    }
    for name, (options, model_args) in specs.items():
        folder = root / name / "model"
        if name == "image-classification":
            make_tiny_vision_model(folder, family="vit", **model_args)
        elif name == "text-generation":
            make_tiny_causal_lm(folder)
        else:
            make_tiny_model(folder, task=name, seed=3, **model_args)
        task = configure_task(name, options, model_dir=folder)
        model, preprocessor = load_model_and_preprocessor(str(folder), task)
        graph = export_model(task, model, preprocessor, root / name / "model.onnx", opset=18, atol=1e-4).path
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if task.needs_labels else ()
        positions = getattr(model.config, "n_positions", None)
        made[name] = _bundle(
            root / name / "bundle", graph, preprocessor, task, label_names=labels, max_positions=positions
        )
    made["images"] = root / "images"
    write_images(made["images"], 4, size=(40, 30), modes=("RGB",))
    return made


def _calls(bundles: dict[str, Path]) -> dict[str, str]:
    """What to run on each bundle (Python expressions on ``b``), the same in both interpreters."""
    images = sorted(str(p) for p in Path(bundles["images"]).iterdir())
    return {
        "feature-extraction": f"b.embed({[*WORDS_TEXTS, LONG, '']!r})",
        "text-classification": f"b.classify({WORDS_TEXTS!r})",
        "token-classification": f"b.tag({[*WORDS_TEXTS, LONG, TOKENLESS]!r})",
        "text-ranking": f"[b.score({PAIRS!r}), b.rank('a cat', ['the cat sat', 'a dog runs', 'good plot'])]",
        "image-classification": f"b.classify({images!r})",
        "text-generation": "[b.generate(['the cat', 'a dog runs fast'], max_new_tokens=6, stop_token_ids=[]),"
        " b.generate('the cat', max_new_tokens=5, do_sample=True, top_k=5, seed=3, stop_token_ids=[]),"
        " ''.join(b.generate('a dog', max_new_tokens=4, stream=True, stop_token_ids=[]))]",
    }


RUN_ALL = """
    import json
    from modelpress.bundle import load
    import numpy as np

    def plain(x):
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return float(x) if isinstance(x, np.floating) else x

    out = {}
    for task, (path, call) in json.loads(sys.argv[1]).items():
        with load(path, threads=1) as b:
            out[task] = plain(eval(call))
    print(json.dumps(out))
"""


def _assert_same(got, want, where):
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), where
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    else:
        assert got == want, where


def test_each_tasks_bundle_runs_without_torch_and_gives_the_transformers_preprocessed_numbers(bundles, monkeypatch):
    from modelpress.modalities import Modality

    calls = _calls(bundles)
    jobs = {task: (str(bundles[task]), call) for task, call in calls.items()}
    got = json.loads(run_blocked(RUN_ALL, json.dumps(jobs)).stdout)
    # the reference: the same bundles, their preprocessor loaded by transformers (as load() did before)
    monkeypatch.setattr(Modality, "load_deployed", lambda self, folder: self.load_preprocessor(str(folder)))
    want = _in_process(jobs)
    assert set(got) == set(calls)
    for task in calls:
        _assert_same(got[task], want[task], task)
    # the results are real: embeddings of the right width, every word tagged, text generated
    assert len(got["feature-extraction"]) == 5 and len(got["token-classification"][3]) == len(LONG.split())
    assert all(isinstance(t, str) and t for t in got["text-generation"][0])


def _in_process(jobs: dict) -> dict:
    """RUN_ALL's output, run in this interpreter (torch importable)."""
    import contextlib
    import io
    from types import SimpleNamespace

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(textwrap.dedent(RUN_ALL), {"sys": SimpleNamespace(argv=["-c", json.dumps(jobs)])})
    return json.loads(buffer.getvalue())


# -- the README snippets: onnxruntime + tokenizers, no modelpress ------------------------------------------------
SNIPPET_CALLS = {
    "feature_extraction": (WORDS_TEXTS, "b.embed({args!r})"),
    "text_classification": (WORDS_TEXTS, "[dict(zip(b.labels, row)) for row in b.classify({args!r}).tolist()]"),
    "token_classification": (WORDS_TEXTS, "[[[w, t] for w, t, _ in s] for s in b.tag({args!r})]"),
    "text_ranking": (["a cat", "the cat sat", "a dog runs", "good plot"], "b.rank({query!r}, {passages!r})"),
    "text_generation": (["the", "cat"], "b.generate({joined!r}, max_new_tokens=8, stop_token_ids=[])"),
}


@pytest.mark.parametrize("snippet", [*SNIPPET_CALLS, "image_classification"])
def test_each_readme_snippet_runs_without_modelpress_and_matches_load(snippet, bundles):
    """Each snippet in docs/snippets runs with torch and transformers blocked (and no modelpress
    import) and prints what ``load()`` gives for the same inputs."""
    task = snippet.replace("_", "-")
    source = (SNIPPETS / f"{snippet}.py").read_text()
    assert "import modelpress" not in source and "from modelpress" not in source
    if snippet == "image_classification":
        args = sorted(str(p) for p in Path(bundles["images"]).iterdir())
        call = f"[dict(zip(b.labels, row)) for row in b.classify({args!r}).tolist()]"
    else:
        args, call = SNIPPET_CALLS[snippet]
        call = call.format(args=args, joined=" ".join(args), query=args[0], passages=args[1:])
    runner = f"sys.argv = [{str(SNIPPETS / f'{snippet}.py')!r}, *sys.argv[1:]]\nexec(open(sys.argv[0]).read())"
    printed = json.loads(run_blocked(runner, str(bundles[task]), *args).stdout)
    jobs = {task: (str(bundles[task]), call)}
    want = json.loads(run_blocked(RUN_ALL, json.dumps(jobs)).stdout)[task]
    _assert_same(printed, want, snippet)


def test_images_become_rgb_as_transformers_makes_them():
    """``open_image``'s colour conversion (transparency onto white, grey and palettes to RGB) is
    transformers' ``convert_to_rgb``, without transformers."""
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb as transformers_rgb

    from modelpress.calibration_data.images import convert_to_rgb

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 3
    images = [
        Image.fromarray(rgba),
        Image.fromarray(rgba[..., 0]),
        Image.fromarray(rgba[..., :2].copy(), "LA"),
        palette,
    ]
    for image in images:
        assert np.array_equal(convert_to_rgb(image), transformers_rgb(image, return_numpy=True)), image.mode
    for array in (rgba, rgba[..., :1], rgba[..., :3]):
        want = transformers_rgb(array, return_numpy=True, input_data_format="channels_last")
        assert np.array_equal(convert_to_rgb(array), want), array.shape


def test_pressing_on_a_slim_install_is_one_line_saying_what_to_install(bundles, tmp_path):
    """``modelpress run`` where torch and transformers are missing (``pip install modelpress``):
    exit 2 and the extra to install, not a traceback (exit 1)."""
    model = Path(bundles["text-classification"]).parent / "model"
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "slim"\nteacher = "{model}"\n', encoding="utf-8")
    code = "from modelpress.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK + code, "run", str(recipe)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("modelpress: error: run needs the pressing stack (") and "modelpress[press]" in last


def test_the_slim_install_is_the_deploy_side_and_press_adds_the_pressing_stack():
    """pyproject: ``pip install modelpress`` pulls only what the deploy side imports; ``[press]`` holds
    torch and transformers (and every package the CLI names when one is missing); ``dev``, which
    ``make`` installs, includes press."""
    import tomllib

    from packaging.requirements import Requirement

    from modelpress.deploy_side import PRESS_MODULES, PRESSING_STACK

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert {Requirement(r).name for r in project["dependencies"]} == {"numpy", "onnxruntime", "tokenizers", "pillow"}
    press = {Requirement(r).name for r in extras["press"]}
    assert set(PRESSING_STACK) <= press and press <= PRESS_MODULES
    assert any(Requirement(r).name == "modelpress" and "press" in Requirement(r).extras for r in extras["dev"])
    assert "[dev]" in (REPO / "Makefile").read_text(encoding="utf-8")


def test_only_a_bundle_whose_api_runs_back_to_back_keeps_onnx_runtimes_threads_spinning(bundles):
    """generate() is one run per token: waking idle threads for each small kernel costs more than it
    saves there (Task.runs_back_to_back → Runner.back_to_back_options); every other task's runs are
    single calls, and an idle spinning pool would steal the cores from whatever runs next."""
    from modelpress.bundle import load

    for task in ("text-generation", "text-classification"):
        with load(bundles[task], threads=1) as b:
            options = b.runner._session.get_session_options()
            spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
            assert spinning == ("1" if task == "text-generation" else "0"), task
    with load(bundles["text-generation"], threads=1, back_to_back=False) as b:  # an interleaved benchmark's
        options = b.runner._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with load(bundles["text-generation"], threads=1, spin=False) as b:  # the caller's own option wins
        options = b.runner._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
