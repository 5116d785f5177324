"""Tests of analysis.core.images: decoding uploads safely, hashing, PNG export, gallery.

Every fixture image is generated in memory with Pillow."""
from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageFile

import analysis.core.images as images
from analysis.core.config import Limits
from analysis.core.errors import ConvlensError, ImageLoadError, LimitError, ParameterError
from analysis.core.images import (
    DEFAULT_IMAGE,
    GALLERY,
    gallery_image,
    gallery_names,
    image_hash,
    load_image,
    to_png_bytes,
    to_rgb_array,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def quadrants(w: int = 64, h: int = 48) -> Image.Image:
    """RGB image: top-left red, top-right green, bottom-left blue, bottom-right white."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = RED
    a[: h // 2, w // 2:] = GREEN
    a[h // 2:, : w // 2] = BLUE
    a[h // 2:, w // 2:] = WHITE
    return Image.fromarray(a)


def noise(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def assert_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)
    assert arr.flags["C_CONTIGUOUS"]


def assert_close(pixel, expected, tol: int = 0) -> None:
    diff = np.abs(np.asarray(pixel, int) - np.asarray(expected, int))
    assert diff.max() <= tol, f"{tuple(pixel)} != {expected} (tol {tol})"


def check_quadrants(arr: np.ndarray, tol: int) -> None:
    h, w = arr.shape[:2]
    assert_close(arr[h // 4, w // 4], RED, tol)
    assert_close(arr[h // 4, 3 * w // 4], GREEN, tol)
    assert_close(arr[3 * h // 4, w // 4], BLUE, tol)
    assert_close(arr[3 * h // 4, 3 * w // 4], WHITE, tol)


# --------------------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt, kw, tol", [
    ("JPEG", {"quality": 95}, 40),
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
    ("GIF", {}, 0),   # 4 colours fit a palette exactly
])
def test_formats(fmt, kw, tol):
    arr = load_image(encode(quadrants(), fmt, **kw))
    assert_rgb(arr, 48, 64)
    check_quadrants(arr, tol)


def test_lossless_roundtrip_is_exact():
    src = noise()
    for fmt in ("PNG", "BMP", "TIFF"):
        assert np.array_equal(load_image(encode(src, fmt)), np.asarray(src)), fmt


def test_gif_uses_first_frame_of_animation():
    frames = [Image.new("RGB", (16, 12), RED), Image.new("RGB", (16, 12), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                  loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2  # the fixture really is animated
    arr = load_image(data)
    assert_rgb(arr, 12, 16)
    assert (arr == RED).all()


# --------------------------------------------------------------------------- EXIF

def _exif_jpeg(orientation: int) -> bytes:
    """Stored 40x20 (w x h): left half red, right half blue; EXIF orientation set."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = RED
    a[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_rotates_clockwise():
    arr = load_image(_exif_jpeg(6))
    assert_rgb(arr, 40, 20)             # width and height swapped
    # Rotating 90 degrees clockwise brings the stored left (red) side to the top.
    assert_close(arr[10, 10], RED, 40)
    assert_close(arr[30, 10], BLUE, 40)


def test_exif_orientation_8_rotates_counter_clockwise():
    arr = load_image(_exif_jpeg(8))
    assert_rgb(arr, 40, 20)
    assert_close(arr[10, 10], BLUE, 40)
    assert_close(arr[30, 10], RED, 40)


def test_no_exif_keeps_orientation():
    arr = load_image(_exif_jpeg(1))
    assert_rgb(arr, 20, 40)
    assert_close(arr[10, 10], RED, 40)


# --------------------------------------------------------------------------- modes

def test_mode_L_grayscale():
    a = np.array([[0, 100], [200, 255]], np.uint8)
    arr = load_image(encode(Image.fromarray(a), "PNG"))
    assert_rgb(arr, 2, 2)
    assert np.array_equal(arr, np.stack([a] * 3, axis=-1))


def test_mode_1_bilevel():
    im = Image.new("1", (8, 4), 0)
    im.putpixel((1, 2), 1)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    arr = load_image(data)
    assert_rgb(arr, 4, 8)
    assert tuple(arr[2, 1]) == WHITE
    assert tuple(arr[0, 0]) == (0, 0, 0)


def test_mode_P_palette():
    im = quadrants().quantize(4)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    check_quadrants(load_image(data), 0)


def test_mode_P_with_transparency_is_white():
    im = quadrants().quantize(4)
    red_index = im.getpixel((0, 0))
    data = encode(im, "PNG", transparency=red_index)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    arr = load_image(data)
    assert tuple(arr[5, 5]) == WHITE                # red was the transparent index
    assert tuple(arr[5, 60]) == GREEN


def test_gif_transparency_is_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 1)
    arr = load_image(encode(im, "GIF", transparency=1))
    assert tuple(arr[0, 0]) == WHITE
    assert tuple(arr[3, 3]) == RED


def test_mode_CMYK():
    im = Image.new("CMYK", (6, 4), (255, 0, 0, 0))   # pure cyan
    for fmt in ("JPEG", "TIFF"):
        data = encode(im, fmt)
        assert Image.open(io.BytesIO(data)).mode == "CMYK"
        arr = load_image(data)
        assert_rgb(arr, 4, 6)
        assert_close(arr[2, 3], (0, 255, 255), 8)


def test_mode_RGBA_composited_on_white():
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (0, 0, 0, 0)        # fully transparent black -> white
    a[0, 1] = (255, 0, 0, 128)    # half-transparent red -> pink
    a[1, 0] = (0, 0, 255, 255)    # opaque blue stays blue
    a[1, 1] = (0, 0, 0, 255)
    arr = load_image(encode(Image.fromarray(a, "RGBA"), "PNG"))
    assert_rgb(arr, 2, 2)
    assert tuple(arr[0, 0]) == WHITE
    assert_close(arr[0, 1], (255, 128, 128), 1)
    assert tuple(arr[1, 0]) == BLUE
    assert tuple(arr[1, 1]) == (0, 0, 0)


def test_mode_LA_composited_on_white():
    a = np.array([[[0, 0], [0, 128], [50, 255]]], np.uint8)
    data = encode(Image.fromarray(a, "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    arr = load_image(data)
    assert_rgb(arr, 1, 3)
    assert tuple(arr[0, 0]) == WHITE
    assert_close(arr[0, 1], (127, 127, 127), 1)
    assert tuple(arr[0, 2]) == (50, 50, 50)


def test_mode_PA_composited_on_white():
    im = Image.new("PA", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), (0, 0))      # red, fully transparent
    im.putpixel((1, 0), (1, 255))    # blue, opaque
    arr = to_rgb_array(im)
    assert tuple(arr[0, 0]) == WHITE
    assert tuple(arr[0, 1]) == BLUE


def test_premultiplied_modes():
    assert_close(to_rgb_array(Image.new("La", (1, 1), (64, 128)))[0, 0], (255 - 127 + 64,) * 3, 2)
    assert_close(to_rgb_array(Image.new("RGBa", (1, 1), (128, 0, 0, 128)))[0, 0],
                 (255, 127, 127), 2)


def test_16bit_png_scaled_not_clipped():
    a = np.array([[0, 32768, 65535, 256]], np.uint16)
    data = encode(Image.fromarray(a), "PNG")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode.startswith("I")
    assert opened.convert("RGB").getpixel((1, 0)) == WHITE  # Pillow itself clips
    arr = load_image(data)
    assert_rgb(arr, 1, 4)
    assert arr[0, :, 0].tolist() == [0, 128, 255, 1]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_tiff_modes(mode):
    im = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).convert(mode) \
        if mode == "I;16" else Image.new(mode, (3, 1))
    if mode == "I;16B":
        for x, v in enumerate((0, 32768, 65535)):
            im.putpixel((x, 0), v)
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert load_image(data)[0, :, 1].tolist() == [0, 128, 255]


def test_mode_I_32bit():
    in_range = Image.fromarray(np.array([[0, 32768, 65535]], np.int32))
    assert in_range.mode == "I"
    assert load_image(encode(in_range, "TIFF"))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))  # min-max scaled
    assert to_rgb_array(wide)[0, :, 0].tolist() == [0, 128, 255]


def test_mode_F_unit_range():
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert load_image(data)[0, :, 0].tolist() == [0, 128, 255]


def test_mode_F_min_max_and_non_finite():
    im = Image.fromarray(np.array([[10.0, 15.0, 20.0, np.nan, np.inf]], np.float32))
    assert to_rgb_array(im)[0, :, 2].tolist() == [0, 128, 255, 0, 255]


def test_mode_YCbCr():
    im = Image.new("RGB", (4, 4), RED).convert("YCbCr")
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    assert_close(load_image(data)[1, 1], RED, 3)


def test_mode_LAB():
    im = Image.new("RGB", (4, 4), RED).convert("LAB")
    data = encode(im, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "LAB"
    assert_close(load_image(data)[1, 1], RED, 12)


def test_mode_HSV():
    im = Image.new("HSV", (2, 2), (85, 255, 255))   # hue 120 degrees: green
    assert_close(to_rgb_array(im)[0, 0], GREEN, 2)


# --------------------------------------------------------------------------- refusals

def test_empty_file():
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(b"", name="x.png")


def test_too_many_bytes():
    data = encode(noise(), "PNG")
    limits = Limits(max_upload_bytes=1000)
    with pytest.raises(LimitError) as e:
        load_image(data, limits=limits, name="big.png")
    msg = str(e.value)
    assert "'big.png'" in msg and "MB" in msg and "limit" in msg
    assert f"{len(data):,}" in msg and "1,000" in msg


@pytest.mark.parametrize("data, fragment", [
    (b"hello, this is not an image\n" * 10, None),
    (None, "ZIP"),
    (b"%PDF-1.7\n" + b"0" * 100, "PDF"),
    (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100, "HEIC"),
])
def test_not_an_image(data, fragment):
    if data is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.txt", "hello")
        data = buf.getvalue()
    with pytest.raises(ImageLoadError) as e:
        load_image(data, name="notes.txt")
    msg = str(e.value)
    assert "'notes.txt' is not a recognised image format" in msg
    assert "supported: JPEG, PNG, WebP, BMP, TIFF, GIF" in msg
    if fragment:
        assert fragment in msg


def test_unsupported_image_format_refused():
    """A real image in a format outside the list (ICO) is not decoded."""
    data = encode(quadrants(), "ICO")
    assert Image.open(io.BytesIO(data)).format == "ICO"
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated(fmt):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encode(noise(), fmt)
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], name="half")


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    data = encode(Image.new("L", (10000, 10000)), "PNG")
    assert len(data) < 200_000  # tiny file, huge image

    def no_decoding(self, *a, **k):
        raise AssertionError("the bomb was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(LimitError) as e:
        load_image(data, limits=Limits(max_image_pixels=1_000_000), name="bomb.png")
    msg = str(e.value)
    # 1e8 pixels is also over Pillow's own MAX_IMAGE_PIXELS (~8.9e7), whose check runs
    # inside Image.open, before ours: either message is fine, both name the size.
    assert "'bomb.png'" in msg and ("10000x10000" in msg or "100000000 pixels" in msg)
    assert "smaller image" in msg


def test_pixel_limit_checked_on_header(monkeypatch):
    data = encode(Image.new("L", (2000, 1500)), "PNG")   # under Pillow's own limit

    def no_decoding(self, *a, **k):
        raise AssertionError("the image was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(LimitError) as e:
        load_image(data, limits=Limits(max_image_pixels=1_000_000), name="big.png")
    msg = str(e.value)
    assert "2000x1500" in msg and "3.0 megapixels" in msg and "1.0 megapixels" in msg
    assert "before decoding" in msg


def test_pillow_bomb_warning_becomes_error(monkeypatch):
    """Our limit is generous but Pillow's own MAX_IMAGE_PIXELS is not: still refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(Image.new("L", (12, 12)), "PNG")   # 144 px: Pillow warns (not errors)
    with pytest.raises(LimitError, match="decompression bomb"):
        load_image(data, limits=Limits(max_image_pixels=10**9))
    data = encode(Image.new("L", (20, 20)), "PNG")   # 400 px > 2x: Pillow errors
    with pytest.raises(LimitError, match="decompression bomb"):
        load_image(data, limits=Limits(max_image_pixels=10**9))


def test_unexpected_decoder_error_is_wrapped(monkeypatch):
    def boom(im):
        raise ValueError("weird decoder state")
    monkeypatch.setattr(images, "to_rgb_array", boom)
    with pytest.raises(ImageLoadError, match="weird decoder state") as e:
        load_image(encode(quadrants(), "PNG"))
    assert isinstance(e.value.__cause__, ValueError)


def test_corrupt_exif_does_not_lose_the_image(monkeypatch):
    data = encode(quadrants(), "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # Pillow's "Corrupt EXIF" warning is muted
        arr = load_image(data)
    assert_rgb(arr, 48, 64)
    check_quadrants(arr, 40)

    def broken(im):
        raise SyntaxError("bad EXIF")
    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    arr = load_image(data)                    # orientation skipped, picture kept
    assert_rgb(arr, 48, 64)


def test_bytes_type_checked():
    with pytest.raises(ParameterError):
        load_image("not bytes")  # type: ignore[arg-type]
    assert_rgb(load_image(bytearray(encode(quadrants(), "PNG"))), 48, 64)


def test_all_errors_are_convlens_errors():
    for bad in (b"", b"xx", encode(noise(), "PNG")[:50]):
        with pytest.raises(ConvlensError):
            load_image(bad)


# --------------------------------------------------------------------------- downscale

def test_downscale_keeps_aspect_ratio():
    arr = load_image(encode(quadrants(200, 100), "PNG"), limits=Limits(max_image_side=50))
    assert_rgb(arr, 25, 50)
    check_quadrants(arr, 10)


def test_downscale_jpeg_with_draft_and_exif():
    a = np.zeros((300, 600, 3), np.uint8)
    a[:, :300] = RED
    a[:, 300:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    arr = load_image(data, limits=Limits(max_image_side=64))
    assert_rgb(arr, 64, 32)                # 600x300 stored, rotated, long side 64
    assert_close(arr[16, 16], RED, 40)
    assert_close(arr[48, 16], BLUE, 40)


def test_no_downscale_at_limit():
    arr = load_image(encode(quadrants(50, 20), "PNG"), limits=Limits(max_image_side=50))
    assert_rgb(arr, 20, 50)


# --------------------------------------------------------------------------- helpers

def test_image_hash():
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    h = image_hash(a)
    assert len(h) == 64 and int(h, 16) >= 0
    assert image_hash(a.copy()) == h
    assert image_hash(np.asfortranarray(a)) == h             # layout does not matter
    assert image_hash(a.reshape(4, 2, 3)) != h               # shape does
    assert image_hash(a.astype(np.int8)) != h                # dtype does
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_hash(b) != h


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_to_png_bytes_roundtrip(shape):
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = to_png_bytes(a)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), a)


def test_to_png_bytes_rejects_bad_input():
    with pytest.raises(ParameterError):
        to_png_bytes(np.zeros((4, 4), np.float32))
    with pytest.raises(ParameterError):
        to_png_bytes(np.zeros((4, 4, 2), np.uint8))


# --------------------------------------------------------------------------- gallery

def test_gallery_contents():
    assert DEFAULT_IMAGE == "chelsea" and DEFAULT_IMAGE in GALLERY
    assert list(GALLERY)[0] == "chelsea"
    photos, textures = gallery_names("photo"), gallery_names("texture")
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle", "hubble_deep_field",
            "immunohistochemistry", "china", "flower"} == set(photos)
    assert textures == ["brick", "grass", "gravel"]
    assert gallery_names() == list(GALLERY) == photos + textures
    for name, item in GALLERY.items():
        assert item.name == name and item.kind in ("photo", "texture") and item.description
    with pytest.raises(ParameterError):
        gallery_names("video")


@pytest.mark.parametrize("name", list(GALLERY))
def test_gallery_image(name):
    arr = gallery_image(name)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    assert min(arr.shape[:2]) >= 256
    assert arr.std() > 5                      # a real picture, not a blank
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0, 0] = 1
    assert gallery_image(name) is arr         # cached
    if GALLERY[name].kind == "texture":
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_gallery_unknown_name():
    with pytest.raises(ParameterError) as e:
        gallery_image("dog")
    msg = str(e.value)
    assert "'dog'" in msg and "chelsea" in msg and "gravel" in msg
    with pytest.raises(ParameterError):
        gallery_image(["chelsea"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- odd images (issue 13)

def _png_bytes(im) -> bytes:
    import io
    buf = io.BytesIO()
    im.save(buf, format="PNG" if im.mode != "F" else "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 4096), (4096, 1), (100_000, 1), (2000, 100)])
def test_strips_are_refused_before_decoding(size):
    from PIL import Image

    from analysis.core.errors import LimitError
    from analysis.core.images import load_image
    data = _png_bytes(Image.new("L", size, 128))
    with pytest.raises(LimitError, match="strip"):
        load_image(data, name="strip.png")
    assert load_image(_png_bytes(Image.new("L", (1600, 100), 128))).shape == (100, 1600, 3)   # 16:1 is fine


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_large_16bit_and_float_images_convert_at_the_output_size(mode):
    """A 16-bit PNG / float TIFF far over max_image_side: the conversion to RGB works on
    the reduced image, so the numpy memory it takes is bounded by the output size (before:
    int64 / float64 copies of the full decode, ~1.3 GB and 2.3 GB at 49 megapixels)."""
    import tracemalloc

    from PIL import Image

    from analysis.core.config import Limits
    from analysis.core.images import load_image
    n = 3000
    ramp = (np.arange(n * n, dtype=np.float64).reshape(n, n) / (n * n))
    im = (Image.fromarray((ramp * 65535).astype(np.uint16)) if mode == "I;16"
          else Image.fromarray(ramp.astype(np.float32)))
    data = _png_bytes(im)
    limits = Limits(max_upload_bytes=200 * 2**20, max_image_side=512)
    tracemalloc.start()
    try:
        arr = load_image(data, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert arr.shape == (512, 512, 3)
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB traced"     # the full-size int64 copy alone is 72 MB
    assert abs(int(arr[256, 256, 0]) - 128) <= 3                       # values rescaled, not clipped


@pytest.mark.parametrize("shape,dtype,expect", [((8, 8, 5), np.uint8, "5 samples per pixel of 8-bit"),
                                                ((8, 8, 3), np.float32, "3 samples per pixel of 32-bit floating"),
                                                ((8, 8), np.float64, "1 sample per pixel of 64-bit floating")])
def test_tiffs_pillow_cannot_decode_get_an_accurate_message(shape, dtype, expect):
    import io

    import tifffile

    from analysis.core.errors import ImageLoadError
    from analysis.core.images import load_image
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros(shape, dtype), photometric="rgb" if shape[-1:] == (3,) else "minisblack",
                     planarconfig="contig" if len(shape) == 3 else None)
    with pytest.raises(ImageLoadError, match=expect) as e:
        load_image(buf.getvalue(), name="scan.tif")
    assert "not a recognised image format" not in str(e.value)
