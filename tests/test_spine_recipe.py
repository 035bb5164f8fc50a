"""Recipes: defaults, unknown keys and bad values named in BadInputError, --set overrides, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.errors import BadInputError
from modelpress.config_check import PathRule
from modelpress.recipe import (
    CalibrationConfig,
    ExportConfig,
    GateConfig,
    ValidateConfig,
    apply_overrides,
    load_recipe,
    parse_override,
)
from modelpress.quantize.config import QuantizeConfig

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, body: str = "", *, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text('name = "job"\nteacher = "org/some-model"\n' + body, encoding="utf-8")
    return path


# -- defaults -----------------------------------------------------------------------------------
def test_minimal_recipe_takes_every_default(tmp_path):
    r = load_recipe(_recipe(tmp_path))
    assert (r.name, r.teacher, r.task, r.seed, r.trust_remote_code) == (
        "job",
        "org/some-model",
        "feature-extraction",
        0,
        False,
    )
    assert r.export == ExportConfig() and r.export.opset == 18 and r.export.atol == 1e-4
    assert r.quantize == QuantizeConfig()
    assert (r.quantize.preset, r.quantize.calibration_method, r.quantize.smoothquant) == ("onnxruntime", "minmax", True)
    assert r.quantize.op_types == ("MatMul", "Gemm", "Conv") and r.quantize.exclude_padding is True
    assert r.gate == GateConfig() and r.gate.max_drop == 0.5 and r.gate.metric == "auto"
    assert r.task_options == {} and r.allow_new_heads is False
    assert r.distill is None and r.engine is None and not r.distill_enabled
    # data defaults are the packaged files, as absolute paths (whatever the working directory)
    assert r.calibration.data == str(PACKAGE_ROOT / "calibration_data" / "en_default.txt")
    assert r.validate.eval_data == str(PACKAGE_ROOT / "calibration_data" / "en_eval.jsonl")
    assert (r.calibration.num_samples, r.calibration.max_length, r.calibration.batch_size) == (512, 128, 16)
    assert (r.validate.batch_sizes, r.validate.seq_lengths, r.validate.latency_runs) == ((1, 32), (128,), 30)
    assert r.source == str(tmp_path / "r.toml")


def test_lists_become_tuples_and_the_recipe_is_frozen(tmp_path):
    r = load_recipe(_recipe(tmp_path, "[validate]\nbatch_sizes = [1, 4]\n[quantize]\nnodes_to_exclude = ['a']\n"))
    assert r.validate.batch_sizes == (1, 4) and r.quantize.nodes_to_exclude == ("a",)
    with pytest.raises(Exception):
        r.validate.latency_runs = 3  # frozen dataclass
    d = r.to_dict()
    assert d["validate"]["batch_sizes"] == [1, 4] and "raw" not in d


# -- unknown keys and bad values ------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, named",
    [
        ("[quantize]\nbogus = 1\n", "quantize.bogus"),
        ("[validate]\nlatency_run = 3\n", "validate.latency_run"),
        ("[calibration]\nnum_sample = 3\n", "calibration.num_sample"),
        ("[export]\nopset_version = 18\n", "export.opset_version"),
        ("[gate]\nmaxdrop = 1\n", "gate.maxdrop"),
        ("[task_options]\npool = 'cls'\n", "task_options.pool"),
        ("bogus = 1\n", "bogus"),
    ],
)
def test_unknown_key_is_named(tmp_path, body, named):
    with pytest.raises(BadInputError) as exc:
        load_recipe(_recipe(tmp_path, body))
    assert str(exc.value).startswith(named + ":"), str(exc.value)
    assert "unknown" in str(exc.value)


@pytest.mark.parametrize(
    "body, named",
    [
        ("[quantize]\ncalibration_method = 'mse'\n", "quantize.calibration_method"),
        ("[quantize]\npreset = 'openvino'\n", "quantize.preset"),
        ("[quantize]\npercentile = 40.0\n", "quantize.percentile"),
        ("[quantize]\nsmoothquant_alpha = 1.5\n", "quantize.smoothquant_alpha"),
        ("[quantize]\nop_types = ['LSTM']\n", "quantize.op_types"),
        ("[quantize]\nnodes_to_exclude = 'node_MatMul_1'\n", "quantize.nodes_to_exclude"),
        ("[gate]\nmax_drop = -1.0\n", "gate.max_drop"),
        ("[export]\nopset = 13\n", "export.opset"),
        ("[export]\natol = 0.0\n", "export.atol"),
        ("[validate]\neval_format = 'xml'\n", "validate.eval_format"),
        ("[validate]\nbatch_sizes = []\n", "validate.batch_sizes"),
        ("[task_options]\npooling = 'max'\n", "task_options.pooling"),
        ("task = 'translation'\n", "task"),
        ("[calibration]\nnum_samples = 0\n", "calibration"),
        ("[calibration]\nnum_samples = 'many'\n", "calibration"),
        ("[quantize]\npercentile = 'high'\n", "quantize"),
        # a float count must fail at load time, not much later in range(2.5) with a traceback
        ("[validate]\nlatency_runs = 2.5\n", "validate.latency_runs"),
        ("[calibration]\nbatch_size = 1.5\n", "calibration.batch_size"),
        ("[validate]\nbatch_sizes = [1, 2.5]\n", "validate.batch_sizes"),
        # the top level goes through the same checker: a string is never a true switch
        ("trust_remote_code = 'false'\n", "trust_remote_code: expected true or false"),
        ("trust_remote_code = 1\n", "trust_remote_code: expected true or false"),
        ("seed = 2.7\n", "seed: expected an integer"),
        ("allow_new_heads = 'yes'\n", "allow_new_heads"),
        # task-dependent values are checked against the task registry at load
        ("[gate]\nmetric = 'acuracy'\n", "gate.metric: feature-extraction reports"),
        ("task = 'token-classification'\n[validate]\neval_format = 'stsb'\n", "validate.eval_format"),
        ("[task_options]\npooling = 'cls'\nnormalize = 'yes'\n", "task_options.normalize"),
    ],
)
def test_bad_value_is_named(tmp_path, body, named):
    with pytest.raises(BadInputError) as exc:
        load_recipe(_recipe(tmp_path, body))
    assert str(exc.value).startswith(named), str(exc.value)


def test_missing_required_keys_and_bad_files(tmp_path):
    (tmp_path / "noteacher.toml").write_text('name = "x"\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="^teacher: required"):
        load_recipe(tmp_path / "noteacher.toml")
    with pytest.raises(BadInputError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text('name = "x\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="not valid TOML"):
        load_recipe(tmp_path / "broken.toml")
    (tmp_path / "section.toml").write_text('name = "x"\nteacher = "t"\nquantize = 3\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"^quantize: expected a table"):
        load_recipe(tmp_path / "section.toml")
    for bad_name in ("a/b", ".hidden", ""):
        (tmp_path / "n.toml").write_text(f'name = "{bad_name}"\nteacher = "t"\n', encoding="utf-8")
        with pytest.raises(BadInputError, match="^name:"):
            load_recipe(tmp_path / "n.toml")


# -- --set overrides --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, path, value",
    [
        ("gate.max_drop=1.5", ["gate", "max_drop"], 1.5),
        ("validate.latency_runs=3", ["validate", "latency_runs"], 3),
        ("validate.batch_sizes=[1, 8]", ["validate", "batch_sizes"], [1, 8]),
        ("quantize.smoothquant=false", ["quantize", "smoothquant"], False),
        ("quantize.calibration_method=percentile", ["quantize", "calibration_method"], "percentile"),
        ('quantize.calibration_method="entropy"', ["quantize", "calibration_method"], "entropy"),
        ("name=other", ["name"], "other"),
        ("calibration.data=a=b.txt", ["calibration", "data"], "a=b.txt"),
    ],
)
def test_parse_override_reads_toml_values(text, path, value):
    assert parse_override(text) == (path, value)


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = _recipe(tmp_path, "[quantize]\ncalibration_method = 'entropy'\n[gate]\nmax_drop = 2.0\n")
    r = load_recipe(
        path,
        [
            "quantize.calibration_method=percentile",
            "validate.batch_sizes=[2, 4]",
            "gate.max_drop=0.25",
            "quantize.smoothquant=false",
            "name=renamed",
            "quantize.nodes_to_exclude=['n1', 'n2']",
        ],
    )
    assert r.quantize.calibration_method == "percentile" and r.quantize.smoothquant is False
    assert r.quantize.nodes_to_exclude == ("n1", "n2")
    assert r.validate.batch_sizes == (2, 4) and r.gate.max_drop == 0.25 and r.name == "renamed"
    assert load_recipe(path, ["trust_remote_code=true"]).trust_remote_code is True
    assert load_recipe(path).trust_remote_code is False
    with pytest.raises(BadInputError, match=r"^quantize\.bogus"):
        load_recipe(path, ["quantize.bogus=1"])
    with pytest.raises(BadInputError, match="expected section.key=value"):
        load_recipe(path, ["quantize.smoothquant"])
    with pytest.raises(BadInputError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


# -- relative paths ----------------------------------------------------------------------------------
def test_relative_paths_resolve_against_recipe_folder_and_its_parent(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "recipes" / "model").mkdir()
    (project / "data" / "cal.txt").write_text("hello\n", encoding="utf-8")
    (project / "recipes" / "eval.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    recipe = project / "recipes" / "r.toml"
    recipe.write_text(
        'name = "j"\nteacher = "model"\n[calibration]\ndata = "data/cal.txt"\n[validate]\neval_data = "eval.jsonl"\n',
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = load_recipe(recipe)
    assert r.teacher == str((project / "recipes" / "model").resolve())
    assert r.calibration.data == str((project / "data" / "cal.txt").resolve())  # recipe's parent
    assert r.validate.eval_data == str((project / "recipes" / "eval.jsonl").resolve())  # recipe's folder
    # the working directory wins over the recipe's folder
    (elsewhere / "eval.jsonl").write_text('{"text": "y"}\n', encoding="utf-8")
    assert load_recipe(recipe).validate.eval_data == str((elsewhere / "eval.jsonl").resolve())
    # a path that exists nowhere is kept as written (the stage that reads it reports it)
    r = load_recipe(recipe, ["calibration.data=nowhere/x.txt"])
    assert r.calibration.data == "nowhere/x.txt"
    # last, the installed project (where the packaged calibration_data/ lives)
    r = load_recipe(recipe, ["calibration.data=calibration_data/loaders.py"])
    assert r.calibration.data == str(PACKAGE_ROOT / "calibration_data" / "loaders.py")
    # a package reference is not a path
    assert load_recipe(recipe, ["teacher=package:some_module"]).teacher == "package:some_module"


def test_resolve_path_keeps_absolute_paths(tmp_path):
    assert PathRule((tmp_path,)).resolve(str(tmp_path / "absent.txt")) == str(tmp_path / "absent.txt")
    (tmp_path / "here.txt").write_text("x", encoding="utf-8")
    assert PathRule((tmp_path / "nope", tmp_path)).resolve("here.txt") == str((tmp_path / "here.txt").resolve())


def test_config_dataclasses_validate_on_their_own():
    with pytest.raises(BadInputError):
        ValidateConfig(latency_runs=0)
    with pytest.raises(BadInputError):
        CalibrationConfig(max_length=1)
    with pytest.raises(BadInputError, match="quantize.num_bins"):
        QuantizeConfig(num_bins=16)
    assert QuantizeConfig(preset="tensorrt").activation_symmetric is True
    assert QuantizeConfig().activation_symmetric is False
    assert QuantizeConfig(preset="tensorrt", symmetric_activations=False).activation_symmetric is False
    assert QuantizeConfig().with_(percentile=99.9).percentile == 99.9
