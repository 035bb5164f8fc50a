"""The ``[engine]`` recipe table: defaults, validation messages naming ``engine.<key>``, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.errors import BadInputError
from modelpress.runtimes.tensorrt.config import EngineConfig


def test_defaults_build_int8_only_with_cache_in_run_folder(tmp_path: Path):
    cfg = EngineConfig.from_dict({}, base_dir=tmp_path)
    assert cfg == EngineConfig()
    assert cfg.precisions == ("int8",)
    assert cfg.timing_cache_path(tmp_path / "run") == tmp_path / "run" / "timing.cache"
    assert EngineConfig.from_dict(None, base_dir=tmp_path) == cfg


def test_both_builds_int8_first_and_profile_covers_each_input(tmp_path: Path):
    cfg = EngineConfig.from_dict(
        {
            "precision": "both",
            "min_batch": 1,
            "opt_batch": 4,
            "max_batch": 16,
            "min_seq": 8,
            "opt_seq": 64,
            "max_seq": 256,
        },
        base_dir=tmp_path,
    )
    assert cfg.precisions == ("int8", "fp16")
    from modelpress.modalities.text import TEXT

    profile = TEXT.engine_profile(("input_ids", "attention_mask"), cfg)
    assert profile["attention_mask"] == {"min": (1, 8), "opt": (4, 64), "max": (16, 256)}
    assert set(profile) == {"input_ids", "attention_mask"}


def test_timing_cache_false_and_relative_path(tmp_path: Path):
    assert EngineConfig.from_dict({"timing_cache": False}, base_dir=tmp_path).timing_cache_path(tmp_path) is None
    (tmp_path / "caches").mkdir()
    (tmp_path / "caches" / "h100.cache").write_bytes(b"")
    cfg = EngineConfig.from_dict({"timing_cache": "caches/h100.cache"}, base_dir=tmp_path)
    assert cfg.timing_cache_path(tmp_path / "run") == (tmp_path / "caches" / "h100.cache").resolve()
    # a file that does not exist yet stays as written (relative to the working directory)
    cfg = EngineConfig.from_dict({"timing_cache": "caches/a100.cache"}, base_dir=tmp_path)
    assert cfg.timing_cache_path(tmp_path / "run") == Path("caches/a100.cache")


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"precison": "int8"}, "engine.precison: unknown key"),
        ({"precision": "int4"}, "engine.precision"),
        ({"enabled": "yes"}, "engine.enabled"),
        ({"max_batch": "32"}, "engine.max_batch"),
        ({"max_batch": True}, "engine.max_batch"),
        ({"min_seq": 64, "opt_seq": 32}, "engine.min_seq/opt_seq/max_seq"),
        ({"min_batch": 0}, "engine.min_batch/opt_batch/max_batch"),
        ({"workspace_mb": 0}, "engine.workspace_mb"),
        ({"builder_optimization_level": 6}, "engine.builder_optimization_level"),
        ({"timing_cache": 3}, "engine.timing_cache"),
        ({"timing_cache": ""}, "engine.timing_cache"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, table, names):
    with pytest.raises(BadInputError, match=names.replace("/", ".")):
        EngineConfig.from_dict(table, base_dir=tmp_path)


def test_unknown_key_lists_known_keys(tmp_path: Path):
    with pytest.raises(BadInputError, match="known: .*workspace_mb"):
        EngineConfig.from_dict({"fp16": True}, base_dir=tmp_path)
