"""text-generation: causal language models (GPT-2, Llama, Qwen2, Phi-3, Mistral families:
``AutoModelForCausalLM``), exported as one graph with a KV cache (``export.causal_lm``: prefill
and decode steps), validated on held-out text and generated with by the bundle.

Eval set: held-out text (``text`` format: a .txt with a text per line, or .jsonl/.csv with
``validate.text_field``), tokenized into one stream (``modalities.causal_text``) and cut into
windows of ``validate.max_length`` tokens every ``task_options.stride`` (``measures.perplexity``).
Metrics on the scored tokens: ``perplexity``; ``perplexity_ratio`` (the candidate's ÷ the
teacher's: the gate reads its drop, 100 × (ratio − 1), as the perplexity increase in percent, its
default metric); ``next_token_agreement`` (top-1) and ``mean_kl`` (teacher ‖ candidate). Their
intervals resample windows. With ``task_options.prompts``, also ``greedy_agreement``: the share of the
teacher's greedy new tokens each model reproduces (``tasks.greedy_agreement``; its interval
resamples prompts). Timings: the prefill at ``validate.seq_lengths`` (the latency rows)
and one decode step at ``task_options.decode_contexts`` (``decode_latency``). The bundle's API is
``generate`` (``modelpress.generation.TextGenerator`` on the bundle's runner).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from modelpress import task_match
from modelpress.errors import BadInputError
from modelpress.kv_cache import fused_graph_unsupported
from modelpress.tasks import HIGHER, LOWER, DistillSpec, EvalSet, Task
from modelpress.bundle_base import Bundle
from modelpress.calibration_data.loaders import load_texts
from modelpress.generation import TextGenerator
from modelpress.measures import uncertainty as U
from modelpress.measures.perplexity import against_teacher, lm_metrics, score_window, window_sums, windows
from modelpress.modalities import get_modality
from modelpress.modalities.causal_text import token_stream
from modelpress.tasks.greedy_agreement import agreement_counts, continue_greedily, greedy_agreement, read_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMEvalSet(EvalSet):
    """text-generation's record: the held-out texts, their token windows (the examples), and the
    eval prompts' token ids for ``greedy_agreement`` (None: no ``task_options.prompts``)."""

    texts: tuple[str, ...] = ()
    windows: tuple = ()  # ``measures.perplexity.Window``s of the texts' token stream
    prompts: tuple[tuple[int, ...], ...] | None = None

    @property
    def examples(self) -> tuple:
        return self.windows

    def counts(self) -> dict[str, Any]:
        return {
            "num_texts": len(self.texts),
            "num_pairs": 0,
            "num_words": 0,
            "has_labels": False,
            "num_scored_tokens": sum(w.scored for w in self.windows),
            **({"num_prompts": len(self.prompts)} if self.prompts is not None else {}),
        }


AUTO_GRAPH, TRACED, FUSED = "auto", "traced", "fused"


def _graphs_run(runners: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each runtime's decoder graphs (``Runner.decoder_graphs``)."""
    return {name: tuple(getattr(cls, "decoder_graphs", (TRACED,))) for name, cls in runners.items()}


def choose_decoder_graph(asked: str, model_config: Any, runners: Mapping[str, Any]) -> tuple[str, str]:
    """The decoder graph for ``asked`` ("auto", "traced", "fused"), the model and the runtimes, and
    why; a graph that was asked for (or the only one a runtime runs) and cannot be had is refused."""
    graphs = _graphs_run(runners)
    lacking = {g: [n for n, runs in graphs.items() if g not in runs] for g in (TRACED, FUSED)}
    unfit = fused_graph_unsupported(model_config)
    if asked == AUTO_GRAPH:
        if unfit is None and not lacking[FUSED]:
            return FUSED, f"{getattr(model_config, 'model_type', '?')} takes it and {', '.join(graphs)} run it"
        if not lacking[TRACED]:
            why = f"not for {unfit}" if unfit else f"{', '.join(lacking[FUSED])} cannot run GroupQueryAttention"
            return TRACED, why
        asked = FUSED  # a runtime that runs the fused graph only: as if it were asked for
    if asked == FUSED and unfit is not None:
        runtimes = f" (needed by {', '.join(lacking[TRACED])})" if lacking[TRACED] else ""
        raise BadInputError(f"task_options.decoder_graph: the fused graph{runtimes} is not for {unfit}; use 'traced'")
    return asked, "asked for"


@dataclass(frozen=True)
class TextGeneration(Task):
    # its [task_options] (in [validate] until 0.x: read from there for one release, with a warning)
    stride: int = field(default=0, metadata={"min": 0})  # perplexity windows start every stride tokens (0: half)
    decode_contexts: tuple[int, ...] = field(
        default=(128, 512), metadata={"min": 1, "nonempty": True}
    )  # the decode step is timed at these past lengths
    prompts: str = field(default="", metadata={"path": True})  # greedy_agreement's prompts ("" = none)
    prompt_field: str = "prompt"  # the prompt field of a .jsonl/.csv prompts file
    generation_tokens: int = field(default=32, metadata={"min": 1})  # greedy new tokens per prompt
    # "traced": torch.onnx's graph of the family's code (every family, every runtime); "fused": Llama / Qwen2 /
    # Qwen3 written with ONNX Runtime's fused operators (GroupQueryAttention, in-place cache; export.fused_decoder);
    # "auto": fused where the model takes it and every runtime of validate.runtimes runs it, else traced
    decoder_graph: str = field(default=AUTO_GRAPH, metadata={"choices": (AUTO_GRAPH, TRACED, FUSED)})
    # what "auto" decided and why (the report's task_config; a run's decision, not an option)
    decoder_graph_why: str = field(default="", metadata={"decided": True})

    name: ClassVar[str] = "text-generation"
    auto: ClassVar[task_match.AutoSpec] = task_match.AutoSpec(architectures=("ForCausalLM", "LMHeadModel"))
    modality: ClassVar[str] = "causal-text"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    output_name: ClassVar[str] = "logits"
    metrics: ClassVar[Mapping[str, str]] = {
        "perplexity_ratio": LOWER,
        "perplexity": LOWER,
        "next_token_agreement": HIGHER,
        "mean_kl": LOWER,
        "greedy_agreement": HIGHER,
    }
    conditional_metrics: ClassVar[Mapping[str, str]] = {"greedy_agreement": "prompts"}
    eval_record: ClassVar[str] = "modelpress.tasks.text_generation:LMEvalSet"
    batch_payload: ClassVar[str] = "modelpress.modalities.causal_text:ScoredBatch"
    eval_formats: ClassVar[tuple[str, ...]] = ("text",)
    distill: ClassVar[DistillSpec] = DistillSpec(
        output="token_logits", losses=frozenset({"kl", "hidden_mse"}), defaults={"kl": 1.0}
    )
    api: ClassVar[tuple[str, ...]] = ("generate",)
    unit: ClassVar[str] = "windows"
    length_keys: ClassVar[tuple[str, ...]] = ("decode_contexts",)
    moved_from_validate: ClassVar[tuple[str, ...]] = (
        "stride",
        "decode_contexts",
        "prompts",
        "prompt_field",
        "generation_tokens",
    )
    engines: ClassVar[bool] = False  # a KV cache needs a profile per input; no GPU here to build one
    runs_back_to_back: ClassVar[bool] = True  # generate(): one run per new token

    def check_runtimes(self, runners: Mapping[str, Any]) -> None:
        if self.decoder_graph == AUTO_GRAPH:
            return  # decided with the model (for_model): every runtime runs one of the graphs at least
        lacking = [name for name, runs in _graphs_run(runners).items() if self.decoder_graph not in runs]
        if lacking:
            fused = self.decoder_graph == FUSED
            why = " (ONNX Runtime's com.microsoft GroupQueryAttention)" if fused else ""
            raise BadInputError(
                f"validate.runtimes: {', '.join(lacking)} cannot run task_options.decoder_graph = "
                f'"{self.decoder_graph}"{why}; use "{TRACED if fused else FUSED}" or "auto", '
                f"or leave {', '.join(lacking)} out"
            )

    def for_model(self, model_config: Any, runners: Mapping[str, Any]) -> "TextGeneration":
        graph, why = choose_decoder_graph(self.decoder_graph, model_config, runners)
        if self.decoder_graph == AUTO_GRAPH:
            log.info("decoder graph: %s (auto: %s)", graph, why)
            why = f"auto: {why}"
        return dataclasses.replace(self, decoder_graph=graph, decoder_graph_why=why)

    # -- model and export -------------------------------------------------------------------
    @property
    def exporter(self) -> str:  # type: ignore[override]  # the decoder graph option picks it
        """A decoder with its KV cache and onnxruntime-genai's config beside it (``modelpress.export.exporters``):
        traced by torch.onnx, or written with ONNX Runtime's fused operators (``decoder_graph = "fused"``)."""
        return "causal-lm-fused" if self.decoder_graph == FUSED else "causal-lm"  # "auto": decided by for_model

    def torch_module(self, model: Any) -> Any:
        from modelpress.tasks.causal_lm_torch import FeedStep

        return FeedStep(model)

    def torch_output(self, model_output: Any) -> Any:
        return model_output  # FeedStep's named outputs, as the graph's

    def torch_target(self, model_output: Any, inputs: Mapping[str, Any]) -> Any:
        return model_output.logits

    # -- inference ------------------------------------------------------------------------------
    def postprocess(self, outputs: Mapping[str, np.ndarray], batch: Any) -> list:
        logits, ids = outputs["logits"], batch.feed["input_ids"]
        return [score_window(logits[r], ids[r], pos) for r, pos in enumerate(batch.positions)]

    # -- evaluation -------------------------------------------------------------------------------
    def read_eval(self, path: str | Path, cfg: Any, *, model_config: Any = None, preprocessor: Any = None) -> Any:
        if not Path(path).exists():
            raise BadInputError(f"{path}: evaluation data not found")
        if preprocessor is None:
            raise BadInputError("text-generation: the eval text needs the model's tokenizer")
        stride = self.stride or max(1, cfg.max_length // 2)
        if stride > cfg.max_length:
            raise BadInputError(f"task_options.stride: {stride} is more than validate.max_length ({cfg.max_length})")
        texts = load_texts(path, text_field=cfg.text_field)
        found = list(windows(token_stream(texts, preprocessor), max_length=cfg.max_length, stride=stride))
        if cfg.num_samples:
            found = found[: cfg.num_samples]
        prompts = None
        if self.prompts:
            prompts = read_prompts(self.prompts, preprocessor, field=self.prompt_field)
            if model_config is not None:  # the longest prompt and its new tokens must fit the positions
                get_modality(self.modality).check_lengths(
                    model_config,
                    preprocessor,
                    {
                        "task_options.prompts (longest prompt + generation_tokens)": max(map(len, prompts))
                        + self.generation_tokens
                    },
                )
        return LMEvalSet(texts=tuple(texts), windows=tuple(found), prompts=prompts, source=str(path), format="text")

    def eval_outputs(self, predictor: Any, es: Any, cfg: Any) -> "LMOutputs":
        windows = predictor.predict(list(es.examples), batch_size=cfg.batch_size)
        if not es.prompts:
            return LMOutputs(tuple(windows))

        return LMOutputs(
            tuple(windows),
            continue_greedily(predictor, es.prompts, new_tokens=self.generation_tokens, batch_size=cfg.batch_size),
        )

    def reference_metrics(self, teacher_out: Any, es: Any) -> dict[str, float]:
        t = LMOutputs.of(teacher_out)
        metrics = lm_metrics(window_sums(t.windows, t.windows, kl=False), reference=True)
        return {**metrics, "greedy_agreement": 1.0} if t.continuations is not None else metrics

    def fidelity(self, teacher_out: Any, candidate_out: Any, es: Any) -> dict[str, float]:
        t, c = LMOutputs.of(teacher_out), LMOutputs.of(candidate_out)
        metrics = lm_metrics(window_sums(t.windows, c.windows))
        if t.continuations is not None and c.continuations is not None:
            metrics["greedy_agreement"] = greedy_agreement(t.continuations, c.continuations)
        return metrics

    def reduce_outputs(self, teacher_out: Any, candidate_out: Any) -> "LMOutputs":
        """Each window's KL sum instead of its full-vocabulary distribution (``against_teacher``)."""
        t, c = LMOutputs.of(teacher_out), LMOutputs.of(candidate_out)
        return LMOutputs(against_teacher(t.windows, c.windows), c.continuations)

    def paired_units(self, metric: str, teacher_out: Any, candidate_out: Any, es: Any):
        t, c = LMOutputs.of(teacher_out), LMOutputs.of(candidate_out)
        if metric == "greedy_agreement":
            if t.continuations is None or c.continuations is None:
                return None

            return U.PairedUnits(agreement_counts(t.continuations, c.continuations), U.ratio_complement(), "prompts")
        s = window_sums(t.windows, c.windows, kl=metric == "mean_kl")  # KL: the costly pass
        if metric == "perplexity_ratio":
            return U.PairedUnits((s["nll_t"], s["nll_c"], s["n"]), _perplexity_rise(relative=True), self.unit)
        if metric == "perplexity":
            return U.PairedUnits((s["nll_t"], s["nll_c"], s["n"]), _perplexity_rise(relative=False), self.unit)
        if metric == "next_token_agreement":
            return U.PairedUnits((s["same"], s["n"]), U.ratio_complement(), self.unit)
        if metric == "mean_kl":
            return U.PairedUnits((s["kl"], s["n"]), U.ratio_rise(), self.unit)
        return None

    @classmethod
    def primary_metric(cls, available: set[str]) -> str:
        return "perplexity_ratio"

    def extra_latency(self, predictors: Sequence[Any], examples: Sequence[Any], cfg: Any) -> dict[str, dict[str, list]]:
        from modelpress.measures.decode_latency import decode_latency

        return {
            name: {"decode_latency": rows}
            for name, rows in decode_latency(predictors, examples, cfg, contexts=self.decode_contexts).items()
        }

    @classmethod
    def extra_ratios(cls, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, float]:
        rows = zip(reference.get("decode_latency") or (), candidate.get("decode_latency") or ())
        return {f"decode_b{r['batch_size']}xc{r['context']}_p50": round(c["p50_ms"] / r["p50_ms"], 3) for r, c in rows}

    @classmethod
    def report_sections(cls, models: Mapping[str, Mapping[str, Any]]) -> list[str]:
        if not any(m.get("decode_latency") for m in models.values()):
            return []
        lines = [
            "",
            "## Decode (ms per step of one new token per row, after a prefill of `context` tokens)",
            "",
            "| model | batch × context | p50 | p95 | tokens/s |",
            "|---|---|---|---|---|",
        ]
        for name, m in models.items():
            for row in m.get("decode_latency") or ():
                lines.append(
                    f"| {name} | {row['batch_size']} × {row['context']} | {row['p50_ms']:.2f} | "
                    f"{row['p95_ms']:.2f} | {row['tokens_per_s']:.1f} |"
                )
        return lines

    # -- the bundle ---------------------------------------------------------------------------
    @classmethod
    def bundle_class(cls) -> type:
        class GeneratorBundle(Bundle):
            def generate(
                self,
                prompts: str | Sequence[str],
                *,
                max_new_tokens: int | None = None,
                stream: bool = False,
                chat: bool = False,
                truncate: bool = False,
                **options: Any,
            ):
                """Text from the bundle's model: a str for one prompt, a list for several (an empty
                list for none), an iterator of pieces with ``stream=True``. A prompt and its new
                tokens must fit the model's positions: ``max_new_tokens`` (default 32, cut to what
                fits) past them is refused, and so is a longer prompt unless ``truncate=True`` keeps
                its last tokens. ``options``: ``do_sample``, ``temperature`` (> 0), ``top_k`` (≥ 0),
                ``top_p`` (in (0, 1]), ``seed``, ``stop_token_ids`` (``modelpress.generation``)."""
                return self.generator.generate(
                    prompts, max_new_tokens=max_new_tokens, stream=stream, chat=chat, truncate=truncate, **options
                )

            @property
            def generator(self):
                if self.__dict__.get("_generator") is None:
                    self._generator = TextGenerator(
                        self.runner,
                        self.encoder.tokenizer,
                        layout=self.encoder.layout,
                        max_positions=self.max_positions,
                    )
                return self._generator

            @property
            def max_positions(self) -> int | None:
                """The positions the model takes (a prompt and its new tokens share them)."""
                return self.meta.get("max_positions") or get_modality(self.task.modality).position_limit(
                    None, self.encoder.tokenizer
                )

        return GeneratorBundle


@dataclass(frozen=True)
class LMOutputs:
    """A model's outputs on a text-generation eval set: its scored windows and, with eval prompts,
    its greedy continuations (``tasks.greedy_agreement.Continuations``)."""

    windows: tuple = ()
    continuations: Any = None

    @classmethod
    def of(cls, outputs: Any) -> "LMOutputs":
        """``outputs`` as LMOutputs (a bare list of scored windows: no continuations)."""
        return outputs if isinstance(outputs, LMOutputs) else cls(tuple(outputs))


def _perplexity_rise(*, relative: bool, scale: float = 100.0):
    """drop = scale · (ppl_c / ppl_t − 1) (relative: percent) or scale · (ppl_c − ppl_t), from
    per-window NLL sums and token counts."""

    def stat(nll_t, nll_c, n, axis=-1):
        total = np.sum(n, axis=axis)
        pt, pc = np.exp(np.sum(nll_t, axis=axis) / total), np.exp(np.sum(nll_c, axis=axis) / total)
        return scale * (pc / pt - 1.0) if relative else scale * (pc - pt)

    return stat
