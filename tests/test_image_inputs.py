"""Images as people have them (issue 21 case 6): 16-bit, palette, CMYK, LA/RGBA, 1-bit and grayscale
images made RGB the way Pillow / transformers users expect; the channel layout given to the
processor so no size is misread; images too small and decompression bombs refused in one line naming
the file, wherever images are read (calibration, eval, the bundle's ``classify``)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import cli, write_recipe

from modelpress.errors import BadInputError
from modelpress.testing import make_tiny_vision_model, write_images

LABELS = ("cat", "dog")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return make_tiny_vision_model(tmp_path_factory.mktemp("vit"), family="vit", labels=LABELS)


def _ramp16(height: int = 12, width: int = 20) -> np.ndarray:
    """uint16 values over the whole 0..65535 range, every row different."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    values[0, :3] = (0, 65535, 32896)  # the ends and 32896 / 257 = 128 exactly
    return values


def _scaled(values: np.ndarray) -> np.ndarray:
    """The reference 16 → 8 bit mapping, by value: x * 255 / 65535, rounded (x / 257)."""
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def _bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit gray PNG, all black, written chunk by chunk: a few tens of KB for 20000×20000."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture()
def pillow_limit_restored(monkeypatch):
    """Pillow's global limit put back whatever a test does (the env var is monkeypatched too)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.delenv("MODELPRESS_MAX_IMAGE_PIXELS", raising=False)
    return monkeypatch


# -- 16-bit -------------------------------------------------------------------------------------------
def test_16_bit_png_is_scaled_by_value_not_clipped(tmp_path):
    """issue 21 case 6: a 16-bit gray PNG (Pillow mode I;16) was clipped to white by convert("RGB")."""
    from PIL import Image

    from modelpress.calibration_data.images import open_image

    values = _ramp16()
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        clipped = np.asarray(image.convert("RGB"))
    assert (clipped == 255).mean() > 0.95  # what plain conversion does: the measured case
    rgb = open_image(path)
    assert rgb.shape == (12, 20, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], _scaled(values))
    assert tuple(rgb[0, :3, 0]) == (0, 255, 128)


@pytest.mark.parametrize("kind", ["I;16B", "I", "16-bit PGM", "uint16 array", "uint16 HxWx3 array"])
def test_other_16_bit_images_are_scaled_by_value(kind, tmp_path):
    """issue 21 case 6: big-endian I;16B, 32-bit I (what Pillow makes of a 16-bit PGM, and older
    Pillow of a 16-bit PNG) and uint16 arrays."""
    from PIL import Image

    from modelpress.calibration_data.images import open_image

    values = _ramp16()
    want = np.repeat(_scaled(values)[..., None], 3, -1)
    if kind == "I;16B":
        example = Image.fromarray(values.astype(">u2"))
        assert example.mode == "I;16B"
    elif kind == "I":
        example = Image.fromarray(values.astype(np.int32))
        assert example.mode == "I"
    elif kind == "16-bit PGM":
        example = tmp_path / "gray16.pgm"
        example.write_bytes(b"P5\n20 12\n65535\n" + values.astype(">u2").tobytes())
        with Image.open(example) as image:
            assert image.mode == "I"
    elif kind == "uint16 array":
        example = values
    else:
        example = np.stack([values, values[::-1], 65535 - values], axis=-1)
        want = _scaled(example)
    np.testing.assert_array_equal(open_image(example), want)


def test_a_16_bit_png_with_a_transparent_gray_value_is_composited_onto_white(tmp_path):
    from PIL import Image

    from modelpress.calibration_data.images import open_image

    values = _ramp16()
    values[5, 5] = values[7, 2] = 1234
    path = tmp_path / "trns16.png"
    Image.fromarray(values).save(path, transparency=1234)
    with Image.open(path) as image:
        assert image.mode == "I;16" and image.info.get("transparency") == 1234
    rgb = open_image(path)
    want = np.repeat(_scaled(values)[..., None], 3, -1)
    want[values == 1234] = 255
    np.testing.assert_array_equal(rgb, want)


def test_an_int_image_outside_16_bits_and_float_arrays_follow_transformers_rules():
    from PIL import Image

    from modelpress.calibration_data.images import open_image

    with pytest.raises(BadInputError, match=r"outside 0\.\.65535"):
        open_image(Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)))
    fractions = np.linspace(0, 1, 4 * 5 * 3).reshape(4, 5, 3)
    np.testing.assert_array_equal(open_image(fractions), np.round(fractions * 255).astype(np.uint8))
    whole = np.arange(60, dtype=np.int64).reshape(4, 5, 3) * 4  # integers 0..236: taken as they are
    np.testing.assert_array_equal(open_image(whole), whole.astype(np.uint8))
    with pytest.raises(BadInputError, match=r"neither 0\.\.255 nor 0\.\.1"):
        open_image(np.full((4, 4, 3), 2.5))


# -- palette, CMYK, alpha, 1-bit, gray -------------------------------------------------------------------
def _rgba_reference(image) -> np.ndarray:
    """Alpha compositing onto white, in numpy: a * rgb + (1 - a) * 255."""
    rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
    alpha = rgba[..., 3:] / 255.0
    return np.round(alpha * rgba[..., :3] + (1 - alpha) * 255).astype(np.uint8)


def _colour_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    alpha = Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8))
    palette = rgb.quantize(16)
    made = {
        "P": palette,
        "CMYK": rgb.convert("CMYK"),
        "1": rgb.convert("1"),
        "L": rgb.convert("L"),
        "LA": Image.merge("LA", (rgb.convert("L"), alpha)),
        "RGBA": Image.merge("RGBA", (*rgb.split(), alpha)),
    }
    paths = {}
    for mode, image in made.items():
        paths[mode] = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        image.save(paths[mode], **({"quality": 95} if mode == "CMYK" else {}))
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    paths["P+transparency"] = tmp_path / "Pt.png"
    transparent.save(paths["P+transparency"], transparency=3)
    return paths


@pytest.mark.parametrize("mode", ["P", "P+transparency", "CMYK", "1", "L", "LA", "RGBA"])
def test_palette_cmyk_alpha_1_bit_and_gray_files_match_pillows_conversion(mode, tmp_path):
    """Opaque modes equal Pillow's own ``convert("RGB")``; transparency is composited onto white
    (as transformers' ``convert_to_rgb``), checked against the compositing done in numpy."""
    from PIL import Image

    from modelpress.calibration_data.images import open_image

    path = _colour_images(tmp_path)[mode]
    rgb = open_image(path)
    with Image.open(path) as image:
        assert image.mode == mode.split("+")[0]
        if mode in ("LA", "RGBA", "P+transparency"):
            want = _rgba_reference(image)
            np.testing.assert_allclose(rgb.astype(int), want.astype(int), atol=1)
            if mode == "P+transparency":
                index = np.asarray(image)
                assert (index == 3).any() and (rgb[index == 3] == 255).all()
                opaque = np.asarray(image.convert("RGB"))[index != 3]
                np.testing.assert_array_equal(rgb[index != 3], opaque)
        else:
            np.testing.assert_array_equal(rgb, np.asarray(image.convert("RGB")))


def test_exif_orientation_is_applied_as_transformers_load_image_does(tmp_path):
    from PIL import Image, ImageOps

    from modelpress.calibration_data.images import open_image

    pixels = np.random.default_rng(4).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    rgb = open_image(tmp_path / "turned.png")
    assert rgb.shape == (10, 6, 3)
    with Image.open(tmp_path / "turned.png") as image:
        np.testing.assert_array_equal(rgb, np.asarray(ImageOps.exif_transpose(image).convert("RGB")))


# -- sizes: the layout, too small, too large ------------------------------------------------------------
def test_a_3_pixel_high_image_is_read_channels_last(tiny_vit, tmp_path):
    """issue 21 case 6: a 3-pixel-high image was taken for channels first and scored transposed.
    The reference: the processor on a PIL image (whose layout it never has to guess)."""
    import transformers
    from PIL import Image

    from modelpress.modalities import get_modality

    pixels = np.random.default_rng(5).integers(0, 256, (3, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "strip.png")
    image = get_modality("image")
    encoder = image.encoder(image.load_preprocessor(str(tiny_vit)), input_names=("pixel_values",))
    ref = transformers.AutoImageProcessor.from_pretrained(str(tiny_vit), backend="pil")
    want = ref(images=[Image.fromarray(pixels)], return_tensors="np")["pixel_values"]
    for example in (tmp_path / "strip.png", pixels, Image.fromarray(pixels)):
        got = encoder.encode([example]).feed["pixel_values"]
        assert got.shape == (1, 3, 32, 32)
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("size", [(40, 1), (1, 40), (1, 1)])
def test_an_image_with_a_1_pixel_side_is_one_line_naming_it(size, tiny_vit, tmp_path):
    """issue 21 case 6: a 1-pixel-high image ended in a 73-line traceback (``mean must have 1 elements``)."""
    from PIL import Image

    from modelpress.calibration_data.images import check_readable
    from modelpress.modalities import get_modality

    path = tmp_path / "thin.png"
    Image.new("RGB", size, (10, 20, 30)).save(path)
    message = rf"thin.png: {size[0]}x{size[1]} pixels; an image needs at least 2x2"
    with pytest.raises(BadInputError, match=message):
        check_readable([path])
    image = get_modality("image")
    encoder = image.encoder(image.load_preprocessor(str(tiny_vit)), input_names=("pixel_values",))
    for example in (path, np.zeros((size[1], size[0], 3), np.uint8)):
        with pytest.raises(BadInputError, match=r"an image needs at least 2x2"):
            encoder.encode([example])
    # the smallest accepted image goes through
    assert encoder.encode([np.zeros((2, 2, 3), np.uint8)]).feed["pixel_values"].shape == (1, 3, 32, 32)


def test_a_channels_first_array_is_refused_not_misread():
    from modelpress.calibration_data.images import open_image

    with pytest.raises(BadInputError, match=r"shape \(3, 20, 30\).*channels last"):
        open_image(np.zeros((3, 20, 30), np.uint8))


def test_a_decompression_bomb_png_is_refused_from_its_header(tmp_path, pillow_limit_restored):
    """issue 21 case 6: a ~50 KB 20000×20000 PNG ended in a ``DecompressionBombError`` traceback."""
    from modelpress.calibration_data.images import check_readable, open_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(20000, 20000))
    assert bomb.stat().st_size < 100_000
    message = r"bomb.png: 20000x20000 = 400,000,000 pixels, more than the limit of 89,478,485 pixels"
    with pytest.raises(BadInputError, match=message):
        check_readable([bomb])
    with pytest.raises(BadInputError, match=message):
        open_image(bomb)


def test_concurrent_image_reads_leave_pillows_bomb_limit_as_they_found_it():
    """Pillow's limit is one process-wide value that reading an image swaps and puts back. Two
    threads (a server's classify() calls) interleaving the swap left it None: the decompression-bomb
    check off for the rest of the process. Here thread B reads while A is inside, and leaves after A."""
    import threading

    from PIL import Image

    from modelpress.calibration_data.images import pillow_limit

    before = Image.MAX_IMAGE_PIXELS
    a_inside, a_go, b_inside, b_go = (threading.Event() for _ in range(4))

    def a():
        with pillow_limit(None):
            a_inside.set()
            a_go.wait(5)

    def b():
        with pillow_limit(None):
            b_inside.set()
            b_go.wait(5)

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    try:
        ta.start()
        assert a_inside.wait(5)
        tb.start()
        b_inside.wait(0.3)  # unguarded, B is inside now; guarded, it waits for A
        a_go.set()
        ta.join(5)
        b_go.set()
        tb.join(5)
        assert b_inside.is_set() and not ta.is_alive() and not tb.is_alive()
        assert Image.MAX_IMAGE_PIXELS == before
    finally:
        a_go.set()
        b_go.set()
        Image.MAX_IMAGE_PIXELS = before


class _DecodingRows:
    """Rows of a datasets ``Image`` column as ``datasets`` gives them: opened and decoded on access
    (``datasets.features.Image.decode_example``: ``PIL.Image.open`` then ``load``)."""

    def __init__(self, paths):
        self.paths = paths

    def __getitem__(self, row):
        from PIL import Image

        image = Image.open(self.paths[row])
        image.load()
        return {"image": image}


def test_the_pixel_limit_is_settable_and_guards_dataset_rows_too(tmp_path, pillow_limit_restored):
    from PIL import Image

    from modelpress.calibration_data.images import DatasetImage, check_readable, open_image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path)
    pillows_own = Image.MAX_IMAGE_PIXELS
    pillow_limit_restored.setenv("MODELPRESS_MAX_IMAGE_PIXELS", "3000")
    with pytest.raises(BadInputError, match=r"photo.png: 64x48 = 3,072 pixels, more than the limit of 3,000"):
        check_readable([path])
    row = DatasetImage(str(tmp_path / "ds"), 0, "image", _DecodingRows([path]))
    with pytest.raises(BadInputError, match=r"row 1: more than the limit of 3,000 pixels"):
        open_image(row)
    assert Image.MAX_IMAGE_PIXELS == pillows_own  # the setting applies to modelpress's reading only
    pillow_limit_restored.setenv("MODELPRESS_MAX_IMAGE_PIXELS", "3072")
    assert check_readable([path]) == [path]
    assert open_image(row).shape == (48, 64, 3) and open_image(path).shape == (48, 64, 3)
    pillow_limit_restored.setenv("MODELPRESS_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(BadInputError, match="MODELPRESS_MAX_IMAGE_PIXELS='lots': not a positive whole number"):
        open_image(path)


# -- through the CLI -----------------------------------------------------------------------------------
def test_a_bomb_in_the_eval_data_is_one_line_and_exit_2(tiny_vit, tmp_path):
    """issue 21 case 6 through ``modelpress run``: one line naming the file, exit 2, no traceback."""
    write_images(tmp_path / "calib", 4, modes=("RGB",))
    write_images(tmp_path / "eval", 4, classes=LABELS, modes=("RGB",))
    (tmp_path / "eval" / "cat" / "bomb.png").write_bytes(_bomb_png(20000, 20000))
    recipe = write_recipe(
        tmp_path / "r.toml",
        {"name": "v", "teacher": str(tiny_vit), "task": "image-classification"},
        {
            "calibration": {"data": str(tmp_path / "calib"), "num_samples": 4},
            "validate": {
                "eval_data": str(tmp_path / "eval"),
                "latency_runs": 1,
                "warmup_runs": 0,
                "batch_sizes": [2],
                "real_workload": False,
                "threads": 1,
            },
        },
    )
    proc = cli("run", recipe, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "DecompressionBomb" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "bomb.png: 20000x20000 = 400,000,000 pixels, more than the limit of 89,478,485 pixels" in last
