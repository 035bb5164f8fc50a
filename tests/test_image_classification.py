"""image-classification: the image modality (image processor, streamed images, eval formats), Conv
quantization (per-channel Q/DQ), and tiny random ViT, DeiT,
Swin, ResNet, ConvNeXt and MobileNetV2 classifiers through ``modelpress run`` to a bundle."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import cli, write_recipe

from modelpress.errors import BadInputError
from modelpress.testing import VISION_FAMILIES, make_tiny_vision_model, write_images

LABELS = ("cat", "dog", "bird")
FAST_IMAGE_VALIDATE = {"latency_runs": 1, "warmup_runs": 0, "batch_sizes": [2], "real_workload": False, "threads": 1}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 calibration images (RGB jpg/png, grayscale, RGBA) and a 3-class imagefolder of 30 (the fewest an
    image-classification gate decides on)."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "calib", 24, seed=1)
    write_images(root / "eval", 30, seed=2, classes=LABELS)
    return root


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return make_tiny_vision_model(tmp_path_factory.mktemp("vit"), family="vit", labels=LABELS)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    return make_tiny_vision_model(tmp_path_factory.mktemp("resnet"), family="resnet", labels=LABELS)


def _torch_logits(model_dir, paths):
    """The transformers model on images preprocessed by its own processor, independently of modelpress."""
    import torch
    import transformers
    from PIL import Image

    from transformers.image_transforms import convert_to_rgb

    processor = transformers.AutoImageProcessor.from_pretrained(str(model_dir), backend="pil")
    model = transformers.AutoModelForImageClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        rgb = [convert_to_rgb(Image.open(p), return_numpy=True) for p in paths]
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        return model(pixel_values=pixels).logits.numpy()


# -- data -------------------------------------------------------------------------------------------
def test_imagefolder_jsonl_and_flat_folder_eval_sets(images, tmp_path):
    from modelpress.tasks.images import load_image_eval

    label2id = {n: i for i, n in enumerate(LABELS)}
    es = load_image_eval(images / "eval", label2id=label2id)
    assert len(es.examples) == 30 and es.format == "images"
    assert [LABELS[i] for i in es.labels] == [p.parent.name for p in es.examples]
    lines = [
        json.dumps({"image": str(p.relative_to(images)), "label": LABELS[i] if k % 2 else i})
        for k, (p, i) in enumerate(zip(es.examples, es.labels))
    ]
    (images / "eval.jsonl").write_text("\n".join(lines) + "\n")
    from_jsonl = load_image_eval(images / "eval.jsonl", label2id=label2id)
    assert from_jsonl.labels == es.labels and [p.resolve() for p in from_jsonl.examples] == [
        p.resolve() for p in es.examples
    ]
    flat = load_image_eval(images / "calib", label2id=label2id)
    assert flat.labels is None and len(flat.examples) == 24


def test_a_class_folder_the_model_does_not_have_is_refused(images, tmp_path):
    from modelpress.tasks.images import load_image_eval

    write_images(tmp_path / "eval", 4, classes=("cat", "zebra"))
    with pytest.raises(BadInputError, match="label 'zebra' is not a class of the model"):
        load_image_eval(tmp_path / "eval", label2id={n: i for i, n in enumerate(LABELS)})


def test_images_are_processed_as_transformers_does_and_one_batch_at_a_time(tiny_vit, images):
    from modelpress.modalities import get_modality

    image = get_modality("image")
    processor = image.load_preprocessor(str(tiny_vit))
    paths = sorted((images / "calib").iterdir())[:5]
    batch = image.encoder(processor, input_names=("pixel_values",)).encode(paths)
    import transformers
    from PIL import Image

    ref = transformers.ViTImageProcessorPil.from_pretrained(str(tiny_vit))
    # RGBA is composited onto white and grayscale broadcast to RGB, as transformers' convert_to_rgb does
    from transformers.image_transforms import convert_to_rgb

    want = ref(images=[convert_to_rgb(Image.open(p), return_numpy=True) for p in paths], return_tensors="np")[
        "pixel_values"
    ]
    assert batch.feed["pixel_values"].shape == (5, 3, 32, 32)
    np.testing.assert_allclose(batch.feed["pixel_values"], want, atol=1e-6)


def test_a_corrupt_image_names_the_file_and_an_empty_folder_is_refused(tiny_vit, images, tmp_path):
    from modelpress.modalities import get_modality

    image = get_modality("image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        image.load_examples(tmp_path / "empty", field="image", num_samples=None)
    bad = tmp_path / "bad"
    write_images(bad, 4, modes=("RGB",))  # png and jpg
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInputError, match="broken.png: not a readable image"):  # at load, before any work
        image.load_examples(bad, field="image", num_samples=None)
    # damage past the header (a cut-off JPEG) is found when the batch is decoded
    (bad / "broken.png").unlink()
    jpg = next(p for p in bad.iterdir() if p.suffix == ".jpg")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    examples = image.load_examples(bad, field="image", num_samples=None)
    encoder = image.encoder(image.load_preprocessor(str(tiny_vit)), input_names=("pixel_values",))
    with pytest.raises(BadInputError, match=f"{jpg.name}: not a readable image"):
        encoder.encode(examples)


# -- Conv quantization ---------------------------------------------------------------------------------
def test_conv_int8_has_per_channel_weights_and_tracks_fp32(tiny_resnet, images, tmp_path):
    """Every Conv reads a quantized input and a per-output-channel (axis 0) int8 weight; BatchNorm
    is folded into Conv by the export; the int8 logits are those of the Q/DQ arithmetic computed
    here in numpy for the first Conv."""
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.export.onnx_export import export_onnx
    from modelpress.modalities import get_modality
    from modelpress.models import load_model_and_preprocessor
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import plan_quantization, write_quantized
    from modelpress.tasks import configure_task

    task = configure_task("image-classification")
    model, processor = load_model_and_preprocessor(str(tiny_resnet), task)
    export_onnx(model, processor, tmp_path / "model.onnx", task=task)
    fp32 = onnx.load(str(tmp_path / "model.onnx"))
    ops = Counter(n.op_type for n in fp32.graph.node)
    assert ops["Conv"] > 0 and ops["BatchNormalization"] == 0
    image = get_modality("image")
    feed = ExampleFeed(
        image.load_examples(images / "calib", field="image", num_samples=None),
        image.encoder(processor, input_names=("pixel_values",)),
        batch_size=8,
    )
    plan = plan_quantization(tmp_path / "model.onnx", feed, QuantizeConfig())
    summary = write_quantized(plan, tmp_path / "ort.onnx")
    assert len(summary.quantized_nodes) == ops["Conv"] + ops["Gemm"] + ops["MatMul"]
    q = onnx.load(str(tmp_path / "ort.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == ops["Conv"]
    for conv in convs:
        x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        w = inits[w_dq.input[0]]
        assert w.dtype == np.int8 and inits[w_dq.input[1]].shape == (w.shape[0],)
        assert {a.name: a.i for a in w_dq.attribute}.get("axis") == 0
    import onnxruntime as ort

    batch = next(iter(feed))
    run = {
        k: ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"]).run(None, batch)[0]
        for k in ("model", "ort")
    }
    assert 0 < np.abs(run["ort"] - run["model"]).max() < 0.1 * np.abs(run["model"]).max()
    # the first Conv's weight, dequantized, is the fp32 weight to within half a step per channel
    first = convs[0]
    w_dq = producers[first.input[1]]
    w, scale = inits[w_dq.input[0]].astype(np.float32), inits[w_dq.input[1]]
    original = next(
        onnx.numpy_helper.to_array(i)
        for i in fp32.graph.initializer
        if i.name == next(n for n in fp32.graph.node if n.name == first.name).input[1]
    )
    assert np.all(np.abs(w * scale[:, None, None, None] - original) <= scale[:, None, None, None] / 2 + 1e-7)


def test_the_openvino_form_quantizes_residual_adds_and_pooling_as_nncf_places_them(
    tiny_resnet, tiny_vit, images, tmp_path
):
    """Issue #23: NNCF's int8 ResNet IR quantizes the residual Adds' and the pooling nodes' inputs
    beside the Convs'; ours did the Convs' only. The Q/DQ form OpenVINO reads now carries them too (a
    tensor a Conv's pair already quantizes is read through that pair), ONNX Runtime's graph does not,
    and a ViT (a Conv patch embedding, Adds feeding norms) has no such site."""
    import onnxruntime as ort

    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.export.onnx_export import export_onnx
    from modelpress.modalities import get_modality
    from modelpress.models import load_model_and_preprocessor
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import plan_quantization, write_quantized
    from modelpress.quantize.targets import POOLING, find_eltwise_inputs, find_targets
    from modelpress.tasks import configure_task

    task = configure_task("image-classification")
    image = get_modality("image")
    for folder, name in ((tiny_vit, "vit"), (tiny_resnet, "resnet")):
        model, processor = load_model_and_preprocessor(str(folder), task)
        export_onnx(model, processor, tmp_path / f"{name}.onnx", task=task)
    vit = onnx.load(str(tmp_path / "vit.onnx"))
    ops = QuantizeConfig().op_types
    assert any(n.op_type == "Conv" for n in vit.graph.node)
    assert find_eltwise_inputs(vit, find_targets(vit, op_types=ops)) == []
    fp32 = onnx.load(str(tmp_path / "resnet.onnx"))
    produced = {o for n in fp32.graph.node for o in n.output}
    residual = [n for n in fp32.graph.node if n.op_type == "Add" and all(x in produced for x in n.input)]
    pools = [n for n in fp32.graph.node if n.op_type in POOLING or n.op_type == "ReduceMean"]
    sites = find_eltwise_inputs(fp32, find_targets(fp32, op_types=ops))
    assert residual and pools and len(sites) == 2 * len(residual) + len(pools)
    feed = ExampleFeed(
        image.load_examples(images / "calib", field="image", num_samples=None),
        image.encoder(processor, input_names=("pixel_values",)),
        batch_size=8,
    )
    plan = plan_quantization(tmp_path / "resnet.onnx", feed, QuantizeConfig(format="qdq"))
    write_quantized(plan, tmp_path / "plain.onnx")
    write_quantized(plan, tmp_path / "openvino.onnx", eltwise=True)
    for path, quantized in (("plain", False), ("openvino", True)):
        q = onnx.load(str(tmp_path / f"{path}.onnx"))
        producers = {o: n for n in q.graph.node for o in n.output}
        readers = {n.name: n for n in q.graph.node}
        for site in sites:
            source = producers[next(x for x in readers[site.reader].input if x.startswith(site.tensor))]
            assert (source.op_type == "DequantizeLinear") == quantized, (path, site)
    q = onnx.load(str(tmp_path / "openvino.onnx"))
    targets = {t.activation for t in plan.targets}  # the Convs' inputs and the classifier's
    own = {s.tensor for s in sites} - targets  # a Conv input among the sites reads the Conv's pair
    assert own and len(own) < len(sites)
    acts = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert len(acts) == len(targets) + len(own)
    batch = next(iter(feed))
    out = {
        k: ort.InferenceSession(str(tmp_path / f"{k}.onnx"), providers=["CPUExecutionProvider"]).run(None, batch)[0]
        for k in ("resnet", "plain", "openvino")
    }
    assert 0 < np.abs(out["openvino"] - out["resnet"]).max() < 0.1 * np.abs(out["resnet"]).max()


# -- every family through `modelpress run` ------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(VISION_FAMILIES))
def test_a_tiny_vision_model_goes_through_run_to_a_bundle(family, images, tmp_path):
    from modelpress.bundle import load
    from modelpress.pipeline import run_recipe
    from modelpress.recipe import load_recipe
    from modelpress.runtimes.tensorrt.checker import check_trt_qdq

    teacher = make_tiny_vision_model(tmp_path / family, family=family, labels=LABELS)
    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": family, "teacher": str(teacher), "task": "image-classification"},
        {
            "calibration": {"data": str(images / "calib"), "num_samples": 16, "batch_size": 8},
            "validate": {"eval_data": str(images / "eval"), **FAST_IMAGE_VALIDATE},
            "gate": {"max_drop": 100.0},
        },
    )
    outcome = run_recipe(load_recipe(recipe), tmp_path / "out")
    root = outcome.bundle
    report = json.loads((root / "report.json").read_text())
    assert report["task"] == "image-classification" and report["gate"]["metric"] == "accuracy"
    teacher_acc = report["models"]["teacher"]["metrics"]["accuracy"]
    paths = sorted((images / "eval").rglob("*.*"))
    logits = _torch_logits(teacher, paths)
    gold = [LABELS.index(p.parent.name) for p in paths]
    assert teacher_acc == pytest.approx(float(np.mean(logits.argmax(1) == gold)), abs=1e-6)
    assert report["models"]["int8"]["metrics"]["top1_agreement"] >= 0.8
    with load(root) as bundle:
        from PIL import Image

        probs = bundle.classify([paths[0], Image.open(paths[1]), np.asarray(Image.open(paths[2]).convert("RGB"))])
        assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert bundle.labels == list(LABELS)
        assert bundle.classify(paths[0]).shape == (1, 3)
        _check_images_as_people_have_them(bundle, root)
    # the tensorrt preset's graph of the same model passes TensorRT's explicit-quantization rules
    from modelpress.calibration_data.feeds import ExampleFeed
    from modelpress.modalities import get_modality
    from modelpress.quantize.config import QuantizeConfig
    from modelpress.quantize.static import quantize_static

    image = get_modality("image")
    encoder = image.encoder(image.load_preprocessor(str(root / "image_processor")), input_names=("pixel_values",))
    feed = ExampleFeed(image.load_examples(images / "calib", field="image", num_samples=8), encoder, batch_size=8)
    quantize_static(root / "model.onnx", tmp_path / "trt.onnx", feed, QuantizeConfig(preset="tensorrt"))
    assert check_trt_qdq(tmp_path / "trt.onnx", require_per_channel_weights=True).ok


def _check_images_as_people_have_them(bundle, root):
    """issue 21 case 6 through the bundle's ``classify``: a 16-bit array scores as its by-value 8-bit
    scaling, a 3-pixel-high array as the processor makes it from a PIL image (never transposed), and
    a 1-pixel-high one is one BadInputError."""
    import transformers
    from PIL import Image

    from modelpress.tasks.text_classification import softmax

    sixteen = np.random.default_rng(0).integers(0, 65536, (24, 20), dtype=np.uint16)
    eight = np.round(sixteen / 257).astype(np.uint8)
    np.testing.assert_allclose(
        bundle.classify(sixteen), bundle.classify(Image.fromarray(eight).convert("RGB")), atol=1e-6
    )
    strip = np.random.default_rng(1).integers(0, 256, (3, 40, 3), dtype=np.uint8)
    ref = transformers.AutoImageProcessor.from_pretrained(str(root / "image_processor"), backend="pil")
    pixels = ref(images=[Image.fromarray(strip)], return_tensors="np")["pixel_values"].astype(np.float32)
    logits = next(iter(bundle.runner.run({"pixel_values": pixels}).values()))
    np.testing.assert_allclose(bundle.classify(strip), softmax(logits), atol=1e-5)
    with pytest.raises(BadInputError, match="an image needs at least 2x2"):
        bundle.classify(np.zeros((1, 40, 3), np.uint8))


def test_image_recipe_errors_are_one_line_and_exit_2(tiny_vit, images, tmp_path):
    bad = tmp_path / "bad"
    write_images(bad, 2)
    (bad / "x.jpg").write_bytes(b"not a jpeg")
    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "v", "teacher": str(tiny_vit), "task": "image-classification"},
        {
            "calibration": {"data": str(bad), "num_samples": 8},
            "validate": {"eval_data": str(images / "eval"), **FAST_IMAGE_VALIDATE},
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "x.jpg: not a readable image" in proc.stderr.strip().splitlines()[-1]
