"""The LLM peers of the LM benches (issue #24 item 5): what people press and run decoders with, each
built from the same Hugging Face folder and timed in the bench's process beside our model.

* **onnxruntime-genai's model builder**, int4 and int8, CPU (``python -m onnxruntime_genai.models.builder
  -i HF -o OUT -p int4 -e cpu``), built in its own process (wall time, sampled peak RSS), run with
  ``onnxruntime_genai.Generator``. It refuses architectures it has no builder for (GPT-2).
* **OpenVINO GenAI with NNCF int4**: NNCF's data-aware weight compression (``INT4_ASYM``, AWQ + scale
  estimation, calibrated on prefill feeds of the calibration text) of OpenVINO's IR of our fp32
  export, made an ``LLMPipeline`` folder by ``runtimes.openvino_genai_runner.write_genai_folder``;
  timed through ``LLMPipeline.generate`` (its own time to first token and time per output token).
* **llama.cpp** through llama-cpp-python (the ``llama-cpp`` extra): the GGUF written by llama.cpp's
  ``convert_hf_to_gguf.py`` (from llama-cpp-python's sdist, ``vendor/llama.cpp``; ``LLAMA_CONVERT``
  names it) at Q8_0, and Q4_0 quantized from its f16 GGUF with ``llama_model_quantize``; batch 1
  only (the high-level API holds one sequence). The converter refuses a BPE tokenizer whose
  pre-tokenizer it does not know by hash, as the benches' tokenizers (trained here); they are
  byte-level BPE with GPT-2's pre-tokenizer, and the converter is told so (``_CONVERT``).

Every peer gives the same rows: the build (seconds, peak RSS, or why it was refused), the deployed
size, the RSS its ``load`` adds to the process, prefill ms at each length (batch 1) and decode ms
per step after a prefill of 128 tokens (batch 1, and 8 where the peer batches), medians of
interleaved rounds; ``greedy`` gives greedy new tokens for agreement, ``scores`` next-token logits
for perplexity where the peer exposes them (llama.cpp). A peer that cannot be built on a model
says so (``error``) and the bench moves on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

#: where llama.cpp's converter is looked for when ``LLAMA_CONVERT`` does not say
LLAMA_CONVERT = Path(os.environ.get("LLAMA_CONVERT", "/tmp/lmpeers_build/llama_cpp_python-0.3.36/vendor/llama.cpp"))


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def run_measured(
    cmd: Sequence[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``cmd`` in its own process: exit code, wall seconds, peak RSS sampled every 0.2 s."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        rc = proc.wait()
        done.set()
        watcher.join()
    out = {"exit_code": rc, "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak[0] >> 20}
    if rc:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        out["error"] = (lines[-1] if lines else f"exit {rc}")[:300]
    return out


def packed_feeds(ids: np.ndarray, layout: Any, count: int, length: int = 128) -> list[dict[str, np.ndarray]]:
    """``count`` consecutive ``length``-token windows of ``ids`` as batch-1 feeds with an empty KV cache (the
    calibration feeds NNCF's data-aware int4 reads)."""
    from modelpress.kv_cache import position_ids

    mask = np.ones((1, length), np.int64)
    return [
        {
            "input_ids": ids[i * length : (i + 1) * length][None],
            "attention_mask": mask,
            "position_ids": position_ids(mask, length),
            **layout.empty(1),
        }
        for i in range(count)
    ]


def size_mb(path: Path) -> float:
    """A folder's files, or a file with its external data (``<name>.data``) when it has some."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    data = path.with_name(path.name + ".data")
    if path.is_file() and data.is_file():
        files.append(data)
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


class Peer:
    """One peer's model, loaded: ``prefill`` and ``decode`` time it, ``greedy`` generates."""

    name: str = "peer"
    batches: tuple[int, ...] = (1,)

    def prefill_ms(self, rows: np.ndarray) -> float:
        raise NotImplementedError

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        """ms per new token of a row after a prefill of ``rows`` (the prefill not counted)."""
        raise NotImplementedError

    def greedy(self, ids: list[int], new: int) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- onnxruntime-genai's builder ------------------------------------------------------------------
def build_ort_genai(hf: Path, out: Path, precision: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
    cmd += ["-p", precision, "-e", "cpu", "-c", str(out / "cache")]
    built = run_measured(cmd, out.parent / f"{out.name}.log")
    if not built.get("error") and not (out / "genai_config.json").is_file():
        built["error"] = "the builder wrote no genai_config.json"
    if not built.get("error"):
        built["file_mb"] = size_mb(out / "model.onnx")  # with model.onnx.data
    return built


class OrtGenAIPeer(Peer):
    batches = (1, 8)

    def __init__(self, name: str, folder: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og, self.name = og, name
        config = og.Config(str(folder))
        config.clear_providers()
        # the builder's config names no threads: onnxruntime-genai's default decoded the 0.5 B int4 model at
        # 43.5 tokens/s here against 72.2 with 2 intra-op threads (the peers before this ran so)
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def _generator(self, rows: np.ndarray, total: int):
        params = self.og.GeneratorParams(self.model)
        # min_length: no end-of-sequence stop, so every round times the same number of steps
        params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=len(rows))
        gen = self.og.Generator(self.model, params)
        return gen

    def prefill_ms(self, rows: np.ndarray) -> float:
        gen = self._generator(rows, rows.shape[1] + 2)
        t0 = time.perf_counter()
        gen.append_tokens(rows.astype(np.int32))
        return (time.perf_counter() - t0) * 1e3

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        gen = self._generator(rows, rows.shape[1] + steps + 1)
        gen.append_tokens(rows.astype(np.int32))
        t0 = time.perf_counter()
        for made in range(steps):
            if gen.is_done():  # a step after the end does nothing: it would time nothing
                raise RuntimeError(f"the generator stopped after {made} of {steps} steps")
            gen.generate_next_token()
        return (time.perf_counter() - t0) * 1e3 / steps

    def greedy(self, ids: list[int], new: int) -> list[int]:
        gen = self._generator(np.array([ids]), len(ids) + new)
        gen.append_tokens(np.array([ids], np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        return [int(t) for t in gen.get_sequence(0)[len(ids) :]][:new]


# -- OpenVINO GenAI + NNCF int4 --------------------------------------------------------------------
def build_ov_nncf_int4(
    fp32_onnx: Path, tokenizer_dir: Path, out: Path, feeds: list[dict[str, np.ndarray]], *, group_size: int = 128
) -> dict[str, Any]:
    """NNCF int4 (AWQ + scale estimation on ``feeds``) of the IR of ``fp32_onnx``: the stateless IR
    (``out/stateless/model.xml``, for fidelity through our OpenVINO runner) and the GenAI folder."""
    import nncf
    import openvino as ov

    from modelpress.runtimes.openvino_genai_folder import write_genai_folder
    from modelpress.runtimes.openvino_runner import convert_to_ir

    start, rss0 = time.perf_counter(), _rss()
    model = ov.Core().read_model(str(convert_to_ir(fp32_onnx, out / "fp32" / "model.xml")))
    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT4_ASYM,
        group_size=group_size,
        ratio=1.0,
        awq=True,
        scale_estimation=True,
        dataset=nncf.Dataset(feeds),
        subset_size=len(feeds),
    )
    stateless = out / "stateless" / "model.xml"
    stateless.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(compressed, str(stateless), compress_to_fp16=False)
    del model, compressed
    for leftover in (out / "fp32").iterdir():
        leftover.unlink()
    folder = write_genai_folder(stateless, out / "genai", tokenizer_dir)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "rss_growth_mb": (_rss() - rss0) >> 20,
        "file_mb": size_mb(folder / "openvino_model.bin") + size_mb(folder / "openvino_model.xml"),
        "stateless": str(stateless),
        "folder": str(folder),
    }


class OVGenAIPeer(Peer):
    batches = (1, 8)

    def __init__(self, name: str, folder: Path, threads: int) -> None:
        import openvino as ov
        import openvino_genai as og

        from modelpress.runtimes.openvino_genai_runner import PIPELINE_PROPERTIES

        self.ov, self.og, self.name = ov, og, name
        self.pipe = og.LLMPipeline(
            str(folder), "CPU", INFERENCE_NUM_THREADS=threads, NUM_STREAMS=1, **PIPELINE_PROPERTIES
        )

    def _generate(self, rows: np.ndarray, new: int):
        cfg = self.pipe.get_generation_config()
        cfg.max_new_tokens = cfg.min_new_tokens = new
        cfg.do_sample = False
        cfg.ignore_eos = True
        inputs = self.og.TokenizedInputs(
            self.ov.Tensor(np.ascontiguousarray(rows, np.int64)), self.ov.Tensor(np.ones(rows.shape, np.int64))
        )
        return self.pipe.generate(inputs, cfg)

    def prefill_ms(self, rows: np.ndarray) -> float:
        return float(self._generate(rows, 1).perf_metrics.get_ttft().mean)

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        # GenAI's time per output token divides each step by the batch's rows: a step is rows × TPOT
        return float(self._generate(rows, steps + 1).perf_metrics.get_tpot().mean) * rows.shape[0]

    def greedy(self, ids: list[int], new: int) -> list[int]:
        return [int(t) for t in self._generate(np.array([ids]), new).tokens[0]]


# -- llama.cpp ---------------------------------------------------------------------------------------
#: llama.cpp's converter, told that a BPE tokenizer whose pre-tokenizer hash it does not know (the
#: benches' tokenizers are trained here: byte-level BPE with GPT-2's pre-tokenizer) is GPT-2's
_CONVERT = """
import runpy, sys
sys.path.insert(0, {root!r})
import conversion.base as base
known = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"
base.TextModel.get_vocab_base_pre = pre
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def build_gguf(hf: Path, out: Path, qtype: str) -> dict[str, Any]:
    """GGUF of ``hf`` at ``qtype`` (``q8_0``: the converter's own; ``q4_0``: quantized from f16)."""
    script = LLAMA_CONVERT / "convert_hf_to_gguf.py"
    if not script.is_file():
        return {"error": f"{script}: not found (llama-cpp-python's sdist, vendor/llama.cpp; set LLAMA_CONVERT)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    outtype = "q8_0" if qtype == "q8_0" else "f16"
    first = out.with_name(f"{out.stem}.{outtype}.gguf") if qtype != "q8_0" else out
    argv = [str(script), str(hf), "--outfile", str(first), "--outtype", outtype]
    built = run_measured(
        [sys.executable, "-c", _CONVERT.format(root=str(LLAMA_CONVERT), argv=argv)], out.with_suffix(".log")
    )
    built["pre_tokenizer"] = "gpt-2 where llama.cpp does not know the tokenizer's hash"
    if built.get("error"):
        return built
    if qtype == "q4_0":
        try:
            import llama_cpp
        except ImportError:
            return {**built, "error": "llama-cpp-python is not installed (pip install 'modelpress[llama-cpp]')"}
        t0 = time.perf_counter()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = os.cpu_count() or 1
        if llama_cpp.llama_model_quantize(str(first).encode(), str(out).encode(), params) != 0:
            return {**built, "error": "llama_model_quantize failed"}
        built["seconds"] = round(built["seconds"] + time.perf_counter() - t0, 1)
        first.unlink()
    built["file_mb"] = size_mb(out)
    return built


class LlamaCppPeer(Peer):
    def __init__(self, name: str, gguf: Path, threads: int, *, n_ctx: int = 1024, logits_all: bool = False) -> None:
        from llama_cpp import Llama

        self.name = name
        # logits_all: every position's logits (perplexity), else the last one's
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )

    def prefill_ms(self, rows: np.ndarray) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(rows[0].tolist())
        return (time.perf_counter() - t0) * 1e3

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        self.llm.reset()
        self.llm.eval(rows[0].tolist())
        t0 = time.perf_counter()
        for _ in range(steps):
            self.llm.eval([int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))])
        return (time.perf_counter() - t0) * 1e3 / steps

    def greedy(self, ids: list[int], new: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out = []
        for _ in range(new):
            out.append(int(np.argmax(self.llm.scores[self.llm.n_tokens - 1])))
            self.llm.eval([out[-1]])
        return out


# -- ours, timed the same way --------------------------------------------------------------------------
class RunnerPeer(Peer):
    """One of our runners (any of the registry's) on a KV-cache graph, with the peers' protocol."""

    batches = (1, 8)

    def __init__(self, name: str, runner: Any, layout: Any) -> None:
        self.name, self.runner, self.layout = name, runner, layout

    def _prefill(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        from modelpress.kv_cache import position_ids

        mask = np.ones(rows.shape, np.int64)
        feed = {
            "input_ids": rows.astype(np.int64),
            "attention_mask": mask,
            "position_ids": position_ids(mask, rows.shape[1]),
        }
        return self.runner.run({**feed, **self.layout.empty(rows.shape[0])})

    def prefill_ms(self, rows: np.ndarray) -> float:
        t0 = time.perf_counter()
        self._prefill(rows)
        return (time.perf_counter() - t0) * 1e3

    def _steps(self, rows: np.ndarray, steps: int, keep: Callable[[np.ndarray], None] | None = None) -> float:
        from modelpress.kv_cache import past_from_present, position_ids

        out = self._prefill(rows)
        mask = np.ones(rows.shape, np.int64)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
            if keep is not None:
                keep(nxt)
            mask = np.concatenate([mask, np.ones((rows.shape[0], 1), np.int64)], axis=1)
            feed = {"input_ids": nxt, "attention_mask": mask, "position_ids": position_ids(mask, 1)}
            out = self.runner.run({**feed, **past_from_present(out)})
        return (time.perf_counter() - t0) * 1e3 / steps

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        return self._steps(rows, steps)

    def greedy(self, ids: list[int], new: int) -> list[int]:
        made: list[int] = []
        self._steps(np.array([ids]), new, keep=lambda t: made.append(int(t[0, 0])))
        return made

    def close(self) -> None:
        self.runner.close()


class GeneratorPeer(Peer):
    """Our int4/int8 decoder file as ``modelpress.bundle.load(dir).generate`` runs it: ONNX Runtime with
    spinning threads, the KV cache updated in place (``TextGenerator``), greedy, no stop token."""

    batches = (1, 8)

    def __init__(self, name: str, path: Path, threads: int) -> None:
        from modelpress.fileio import graph_input_shapes
        from modelpress.generation import TextGenerator
        from modelpress.kv_cache import KVLayout
        from modelpress.runtimes.registry import RUNTIMES, create_runner

        class _NoStop:
            eos_token_id = None
            pad_token_id = 0

        self.name = name
        options = RUNTIMES.get("onnxruntime").back_to_back_options  # as load() opens it
        self.runner = create_runner("onnxruntime", path, threads=threads, **options).__enter__()
        layout = KVLayout.from_shapes(graph_input_shapes(path))
        self.generator = TextGenerator(self.runner, _NoStop(), layout=layout)

    def _timed(self, rows: np.ndarray, new: int) -> tuple[float, float]:
        steps = self.generator.steps(rows.tolist(), max_new_tokens=new + 1, stop_token_ids=[])
        t0 = time.perf_counter()
        next(steps)
        t1 = time.perf_counter()
        for _ in steps:
            pass
        return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3 / max(new, 1)

    def prefill_ms(self, rows: np.ndarray) -> float:
        return self._timed(rows, 0)[0]

    def decode_ms(self, rows: np.ndarray, steps: int) -> float:
        return self._timed(rows, steps)[1]

    def greedy(self, ids: list[int], new: int) -> list[int]:
        return [int(t[0]) for t in self.generator.steps([ids], max_new_tokens=new, stop_token_ids=[])]

    def close(self) -> None:
        self.runner.close()


def open_peer(make: Callable[[], Peer]) -> tuple[Peer | None, dict[str, Any]]:
    """``make()`` with the RSS it adds to the process and its load seconds (or why it failed)."""
    rss0, t0 = _rss(), time.perf_counter()
    try:
        peer = make()
    except Exception as exc:  # noqa: BLE001 (a peer that cannot load is a row that says why)
        return None, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    return peer, {"load_seconds": round(time.perf_counter() - t0, 2), "load_rss_mb": (_rss() - rss0) >> 20}


def time_peers(
    peers: Sequence[Peer],
    stream: np.ndarray,
    *,
    prefill: Sequence[int] = (128, 512),
    context: int = 128,
    steps: int = 16,
    rounds: int = 3,
) -> dict[str, dict[str, Any]]:
    """Prefill ms at each length (batch 1) and decode ms per step after ``context`` tokens (batch 1
    and 8 where the peer batches), medians over ``rounds`` rounds interleaved across the peers,
    after one untimed warm-up round; ``stream``: real token ids."""
    shapes = [("prefill", 1, n) for n in prefill] + [("decode", b, context) for b in (1, 8)]
    times: dict[tuple[str, str, int, int], list[float]] = {}
    for r in range(rounds + 1):
        for kind, b, n in shapes:
            rows = np.stack([stream[i * n : (i + 1) * n] for i in range(b)])
            for peer in peers:
                if b not in peer.batches:
                    continue
                try:
                    ms = peer.prefill_ms(rows) if kind == "prefill" else peer.decode_ms(rows, steps)
                except Exception as exc:  # noqa: BLE001 (a shape a peer cannot run is reported, not fatal)
                    times.setdefault((peer.name, kind, b, n), []).append(float("nan"))
                    print(f"{peer.name} {kind} b{b}x{n}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
                    continue
                if r:
                    times.setdefault((peer.name, kind, b, n), []).append(ms)
    out: dict[str, dict[str, Any]] = {p.name: {} for p in peers}
    for (name, kind, b, n), ms in times.items():
        p50 = float(np.median(ms))
        key = f"prefill_{n}_ms" if kind == "prefill" else f"decode_b{b}_c{n}"
        out[name][key] = (
            round(p50, 2) if kind == "prefill" else {"ms": round(p50, 2), "tokens_per_s": round(b * 1e3 / p50, 1)}
        )
    return out
