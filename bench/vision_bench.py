"""`python -m bench.vision_bench`: real image classifiers pressed by modelpress, beside their peers.

The two small real classifiers of ``bench.digits`` (a ViT and a ResNet trained on scikit-learn's bundled
handwritten digits, 1,197 train / 600 test) are each pressed with ``modelpress run`` (calibration: 256
training images; eval: the test imagefolder; gate: accuracy, max drop 0.5 points); when the plain run misses
the gate, the
accuracy-aware ``auto`` run is reported too. Then, interleaved round-robin at 2 threads on the same
test images: PyTorch fp32 eager, ORT fp32, ORT ``quantize_static`` with its defaults (the peer a
user tries first), ORT ``quantize_dynamic`` per-channel (MatMul models), OpenVINO fp32 and NNCF int8,
ours on both runtimes, and the selected artifact (the runs press for ONNX Runtime and OpenVINO with the
default ``[select]``; ``modelpress.bundle.load`` opens the shipped run's default: bench.selected), at b1
and b32, with accuracy and top-1 agreement with fp32 on the whole test split.
Writes ``bench/results/vision.json``; ``--quick`` is a smoke run (3 epochs, 3 rounds, no students).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench import ort_dynamic_int8, write_results  # noqa: E402
from bench.digits import train, write_digits  # noqa: E402
from bench.selected import SELECTED, open_selected, print_selected, selected_record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


#: the distilled students: half the ViT's layers (chosen by agreement), a ResNet of half the width
STUDENTS = {
    "vit": ["num_layers = 2"],
    "resnet": ["student_config = {embedding_size = 16, hidden_sizes = [16, 32, 64]}"],
}


def press(
    kind: str,
    teacher: Path,
    calib: Path,
    test: Path,
    work: Path,
    *,
    mode: str = "static",
    train_dir: Path | None = None,
    runtimes: tuple[str, ...] = ("onnxruntime",),
    max_drop: float = 0.5,
) -> dict:
    """``modelpress run`` of the teacher (or, with ``train_dir``, of its distilled student: KL + CE on
    the training imagefolder, 20 epochs)."""
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe

    name = f"{kind}-digits-{mode}" + ("-distilled" if train_dir else "")
    distill = (
        [
            "[distill]",
            f'data = "{train_dir}"',
            'label_field = "label"',
            *STUDENTS[kind],
            "epochs = 20",
            "batch_size = 64",
            "lr = 2e-3",
            "eval_fraction = 0.05",
            "layer_selection_texts = 256",
        ]
        if train_dir
        else []
    )
    recipe = work / f"{name}.toml"
    recipe.write_text(
        "\n".join(
            [
                f'name = "{name}"',
                f'teacher = "{teacher}"',
                'task = "image-classification"',
                *distill,
                "[calibration]",
                f'data = "{calib}"',
                "num_samples = 256",
                "[quantize]",
                f'mode = "{mode}"',
                "[validate]",
                f'eval_data = "{test}"',
                "batch_sizes = [1, 32]",
                "latency_budget_s = 10",
                f"runtimes = {json.dumps(list(runtimes))}",
                "threads = 2",
                "[gate]",
                f"max_drop = {max_drop}",
            ]
        )
        + "\n"
    )
    outcome = run_recipe(load_recipe(recipe), work / "out")
    report = json.loads((outcome.bundle / "report.json").read_text())
    metrics = {name: row["metrics"] for name, row in report["models"].items()}
    b32 = {
        name: next((r["p50_ms"] for r in row.get("latency", []) if r["batch_size"] == 32), None)
        for name, row in report["models"].items()
    }
    return {
        "bundle": str(outcome.bundle),
        "gate": report["gate"],
        "metrics": metrics,
        "b32_p50_ms": b32,
        "quantization": {
            "mode": report["quantization"]["mode"],
            "auto": report["quantization"]["auto"],
            "int8_nodes": len(report["quantization"]["quantized_nodes"]),
            "fp32_nodes": len(report["quantization"]["fp32_nodes"]),
        },
    }


def peers(
    kind: str,
    teacher: Path,
    bundle: Path,
    calib: Path,
    test: Path,
    work: Path,
    threads: int,
    *,
    shipped: Path | None = None,
    rounds: tuple[int, int] = (40, 10),
) -> tuple[dict, dict]:
    """Interleaved b1 / b32 latency and test accuracy of every variant, and the ``selected`` record of
    ``shipped`` (the bundle the runs ship: ``bundle`` unless its gate failed)."""
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from modelpress.bundle import load
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.calibration_data.images import load_images
    from modelpress.runtimes.cpu import int8_gemm_saturates
    from modelpress.tasks import configure_task
    from modelpress.tasks.images import load_image_eval
    from modelpress.validate.stage import open_predictor

    task = configure_task("image-classification")
    with load(bundle) as b:
        encoder = b.encoder
    fp32 = bundle / "model.onnx"
    feed = ExampleFeed(load_images(calib), encoder, batch_size=32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feed)

        def get_next(self):
            return next(self.it, None)

    files = {"ort-fp32": fp32, "modelpress-int8": bundle / "model.int8.onnx"}
    ov_files = openvino_peers(kind, fp32, bundle, feed, work)
    quantize_static(str(fp32), str(work / f"{kind}.ort-static.onnx"), Reader(), reduce_range=int8_gemm_saturates())
    files["ort-static-int8-defaults"] = work / f"{kind}.ort-static.onnx"
    if any(n.op_type == "MatMul" for n in onnx.load(str(fp32)).graph.node):
        ort_dynamic_int8(fp32, work / f"{kind}.ort-dyn.onnx")
        files["ort-dyn-int8-pc"] = work / f"{kind}.ort-dyn.onnx"
    torch.set_num_threads(threads)
    import transformers

    from bench.run_bench import interleaved

    model = transformers.AutoModelForImageClassification.from_pretrained(str(teacher)).eval()
    preds = {
        "pytorch-fp32": open_predictor("torch", model, task=task, encoder=encoder, threads=threads, name="pytorch-fp32")
    }
    for name, path in files.items():
        preds[name] = open_predictor("onnxruntime", path, task=task, encoder=encoder, threads=threads, name=name)
    for name, path in ov_files.items():
        preds[name] = open_predictor("openvino", path, task=task, encoder=encoder, threads=threads, name=name)
    preds[SELECTED] = open_selected(shipped or bundle, threads)
    es = load_image_eval(test, label2id=model.config.label2id)
    images = list(es.examples)
    t1 = interleaved(preds, [encoder.encode(images[:1])], rounds[0])
    t32 = interleaved(preds, [encoder.encode(images[:32])], rounds[1])
    record = selected_record(shipped or bundle, {"b1": t1, "b32": t32})
    ref = preds["pytorch-fp32"].predict(images).argmax(1)
    gold = np.asarray(es.labels)
    rows = {}
    for name, p in preds.items():
        top = p.predict(images).argmax(1)
        rows[name] = {
            "b1_median_ms": round(1e3 * float(np.median(t1[name])), 3),
            "b32_median_ms": round(1e3 * float(np.median(t32[name])), 2),
            "accuracy": round(100 * float(np.mean(top == gold)), 2),
            "top1_agreement_with_fp32": round(100 * float(np.mean(top == ref)), 2),
        }
    for name, row in rows.items():
        for key in ("b1_median_ms", "b32_median_ms"):
            row[f"{key.split('_')[0]}_vs_ort_fp32"] = round(row[key] / rows["ort-fp32"][key], 3)
    for p in preds.values():
        p.runner.close()
    return rows, record


def openvino_peers(kind: str, fp32: Path, bundle: Path, feed, work: Path) -> dict[str, Path]:
    """OpenVINO fp32 of our export, our bundle's IR (the same int8 plan), and NNCF 3.x int8 from the
    same 256 calibration images (MIXED; TRANSFORMER model type for the ViT); empty without openvino."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        print("note: openvino not installed: no OpenVINO rows", file=sys.stderr)
        return {}
    from modelpress.runtimes.openvino_runner import convert_to_ir

    files = {"openvino-fp32": work / f"{kind}.ov-fp32" / "model.xml"}
    convert_to_ir(fp32, files["openvino-fp32"])
    if (bundle / "openvino" / "model.xml").is_file():
        files["modelpress-int8-openvino"] = bundle / "openvino" / "model.xml"
    if importlib.util.find_spec("nncf") is not None:
        import nncf
        import onnx

        items = [
            {k: v[i : i + 1] for k, v in batch.items()}
            for batch in feed
            for i in range(len(next(iter(batch.values()))))
        ]
        extra = {"model_type": nncf.ModelType.TRANSFORMER} if kind == "vit" else {}
        quantized = nncf.quantize(
            onnx.load(str(fp32)),
            nncf.Dataset(items),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(items),
            **extra,
        )
        onnx.save(quantized, str(work / f"{kind}.nncf.onnx"))
        files["openvino-nncf-int8"] = work / f"{kind}.ov-nncf" / "model.xml"
        convert_to_ir(work / f"{kind}.nncf.onnx", files["openvino-nncf-int8"])
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit", "resnet"], choices=["vit", "resnet"])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-distill", dest="distill", action="store_false", help="skip the distilled students")
    ap.add_argument("--out", default=str(RESULTS / "vision.json"))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 epochs, no students, 3 rounds")
    ap.add_argument("--work", type=Path, help="keep the models, bundles and IRs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    rounds = (40, 10)
    if args.quick:
        args.epochs, args.distill, rounds = 3, False, (3, 3)
    from bench import machine

    result = {"machine": machine(), "data": "sklearn digits, 32x32 RGB, 1,197 train / 600 test", "models": {}}
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mp-vision-")))
        train_dir, test, calib = write_digits(work / "digits")
        for kind in args.models:
            print(f"[{kind}] training ...", file=sys.stderr)
            row = {"training": train(kind, train_dir, work / kind, epochs=args.epochs)}
            print(f"[{kind}] pressing ...", file=sys.stderr)
            row["static"] = press(kind, work / kind, calib, test, work, runtimes=("onnxruntime", "openvino"))
            shipped = Path(row["static"]["bundle"])
            if not row["static"]["gate"]["passed"]:
                both = ("onnxruntime", "openvino")
                row["auto"] = press(kind, work / kind, calib, test, work, mode="auto", runtimes=both)
                shipped = Path(row["auto"]["bundle"]) if row["auto"]["gate"]["passed"] else shipped
            if args.distill:
                print(f"[{kind}] distilling and pressing the student ...", file=sys.stderr)
                row["distilled"] = press(kind, work / kind, calib, test, work, train_dir=train_dir, max_drop=100.0)
            print(f"[{kind}] timing ...", file=sys.stderr)
            row["peers"], row["selected"] = peers(
                kind,
                work / kind,
                Path(row["static"]["bundle"]),
                calib,
                test,
                work,
                args.threads,
                shipped=shipped,
                rounds=rounds,
            )
            row["selected"]["gate_passed"] = (row.get("auto") or row["static"])["gate"]["passed"]
            result["models"][kind] = row
            print(json.dumps({kind: {k: v for k, v in row.items() if k not in ("peers", "selected")}}, indent=1))
            for name, r in row["peers"].items():
                print(
                    f"  {name:<26} b1 {r['b1_median_ms']:>8.2f} ms ({r['b1_vs_ort_fp32']:.3f}× ORT fp32)  "
                    f"b32 {r['b32_median_ms']:>9.1f} ms ({r['b32_vs_ort_fp32']:.3f}×)  acc {r['accuracy']:.2f}  "
                    f"agree {r['top1_agreement_with_fp32']:.2f}"
                )
            print_selected(row["selected"], f"  [{kind}] ")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
