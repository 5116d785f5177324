"""Images in, images out: safe decoding of uploads, hashing, PNG export, sample gallery.

``load_image`` turns untrusted uploaded bytes into an RGB ``uint8`` array ``(H, W, 3)``:

* only JPEG, PNG, WebP, BMP, TIFF and GIF are accepted (Pillow is restricted to these
  decoders, so e.g. EPS - which would run Ghostscript - is never tried);
* byte and pixel limits are enforced *before* decoding (decompression bombs are refused
  from the header alone), and so is the aspect ratio (strips over MAX_ASPECT:1 are refused:
  resizing them for a model would blow them up); larger-than-``max_image_side`` images are
  decoded with reduction (JPEG draft, then an integer box reduce before any mode conversion),
  so the work after decoding is bounded by the output size;
* TIFFs Pillow cannot decode (5 samples, float RGB, 64-bit) get a message that says so;
* EXIF orientation is applied, the first frame of animations is used, every Pillow mode
  is converted to RGB correctly (transparency composited on white, 16-bit and float
  images rescaled instead of clipped);
* every failure is a typed :class:`~analysis.core.errors.ConvlensError` with a message meant
  for the user; no raw Pillow/OS error escapes.

The gallery (``GALLERY``, ``gallery_image``) offers sample images bundled with
scikit-image and scikit-learn, so the app works offline.
"""
from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from analysis.core.config import Limits, MiB, get_config
from analysis.core.errors import ConvlensError, ImageLoadError, LimitError, ParameterError

#: Pillow format ids we let Pillow try, in the order it tries them.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: Human-readable names of the accepted formats (for messages and upload widgets).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")
_SUPPORTED_TEXT = ", ".join(SUPPORTED_FORMATS)

_GRAY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})

# A few signatures of things people upload by mistake, for a more helpful message.
_HINTS = (
    (lambda d: d[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"),
     "it looks like a HEIC/HEIF photo; export it as JPEG or PNG first"),
    (lambda d: d[4:12] in (b"ftypavif", b"ftypavis"),
     "it looks like an AVIF image; export it as JPEG or PNG first"),
    (lambda d: d.startswith(b"PK\x03\x04"), "it looks like a ZIP archive"),
    (lambda d: d.startswith(b"%PDF"), "it looks like a PDF document"),
    (lambda d: d.lstrip()[:1] == b"<" and b"<svg" in d[:1024].lower(),
     "it looks like an SVG drawing; vector images must be rasterised (PNG) first"),
)


MAX_ASPECT = 16          # longer side / shorter side; beyond it an image is a strip, refused


def _tiff_layout(data: bytes) -> tuple[int, int, str] | None:
    """(samples per pixel, bits per sample, sample format) from a classic TIFF's first IFD,
    read from the header only; None if ``data`` is no TIFF or the header is unreadable."""
    import struct
    if len(data) < 8 or data[:4] not in (b"II*\0", b"MM\0*"):
        return None
    e = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(e + "I", data, 4)
        (n,) = struct.unpack_from(e + "H", data, ifd)
        tags = {}
        for i in range(min(n, 512)):
            tag, typ, count, value = struct.unpack_from(e + "HHI4s", data, ifd + 2 + 12 * i)
            if tag in (258, 277, 339):
                size = {3: 2, 4: 4}.get(typ, 2)
                fmt = e + ("H" if size == 2 else "I")
                raw = value if count * size <= 4 else data[struct.unpack(e + "I", value)[0]:][:size]
                tags[tag] = struct.unpack_from(fmt, raw)[0]
    except (struct.error, IndexError):
        return None
    kind = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}.get(tags.get(339, 1), "unknown")
    return tags.get(277, 1), tags.get(258, 1), kind


def _tiff_message(label: str, data: bytes) -> str | None:
    layout = _tiff_layout(data)
    if layout is None:
        return None
    spp, bits, kind = layout
    return (f"{label} is a TIFF with {spp} sample{'s' if spp != 1 else ''} per pixel of {bits}-bit {kind} "
            "values, which this app cannot decode (it reads TIFFs with 1, 3 or 4 samples of 8- or 16-bit "
            "integers, or one 32-bit floating-point plane). Export it as an 8-bit RGB or greyscale "
            "image (PNG or TIFF) and try again.")


def _fmt_mb(n: int) -> str:
    """``n`` bytes as megabytes (MiB), with enough digits to tell small values apart."""
    return f"{n / MiB:.1f} MB" if n >= MiB // 10 else f"{n / MiB:.4f} MB"


def _label(name: str) -> str:
    return f"'{name}'" if name else "The image"


# --------------------------------------------------------------------------- loading

def load_image(data: bytes, *, limits: Limits | None = None, name: str = "") -> np.ndarray:
    """Decode uploaded image bytes into a C-contiguous RGB ``uint8`` array ``(H, W, 3)``.

    ``limits`` defaults to ``get_config().limits``; ``name`` (the file name) is only used
    in messages. Raises :class:`ImageLoadError` (empty, unknown format, truncated or
    corrupt data), :class:`LimitError` (too many bytes or pixels) or
    :class:`ParameterError` (``data`` is not bytes).
    """
    limits = limits if limits is not None else get_config().limits
    label = _label(name)
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise ParameterError(f"load_image expects the file's bytes, got {type(data).__name__}.")
    if not data:
        raise ImageLoadError(f"{label} is an empty file (0 bytes). Choose another file "
                             "or upload it again.")
    if len(data) > limits.max_upload_bytes:
        raise LimitError(
            f"{label} is {_fmt_mb(len(data))} ({len(data):,} bytes), more than the upload "
            f"limit of {_fmt_mb(limits.max_upload_bytes)} ({limits.max_upload_bytes:,} "
            "bytes). Use a smaller or more compressed image.")

    # Pillow's own bomb check warns (above Image.MAX_IMAGE_PIXELS) before it errors (at
    # twice that): make the warning an error so neither ever lets a bomb be decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Damaged EXIF blocks are common and harmless to us; Pillow warns about them.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        try:
            im = _open(data, label, limits)
            with im:
                w, h = im.size
                target = _target_size(w, h, limits.max_image_side)
                if target != (w, h) and im.format in ("JPEG", "MPO"):
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below target).
                    im.draft(im.mode, target)
                try:
                    im.load()
                except Exception as e:
                    raise _corrupt(label, e) from e
                try:
                    oriented = ImageOps.exif_transpose(im)
                except Exception:  # noqa: BLE001 - unreadable EXIF must not cost the user the picture
                    oriented = im
                if oriented.size != im.size:  # 90-degree orientation swaps the target
                    target = target[::-1]
                oriented = _reduce_towards(oriented, target)
                arr = to_rgb_array(oriented)
        except ConvlensError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise LimitError(f"{label} was refused as a possible decompression bomb: {e} "
                             "Use a smaller image.") from e
        except Exception as e:  # any other decoder trouble: never let it escape raw
            raise ImageLoadError(f"{label} could not be read as an image "
                                 f"({type(e).__name__}: {e}).") from e

    if (arr.shape[1], arr.shape[0]) != target:
        arr = _resize(arr, target)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _open(data: bytes, label: str, limits: Limits) -> Image.Image:
    """``Image.open`` restricted to our formats, with the pixel limit checked on the header."""
    try:
        im = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        tiff = _tiff_message(label, data)
        if tiff:
            raise ImageLoadError(tiff) from None
        hint = next((text for test, text in _HINTS if test(data[:1024])), None)
        raise ImageLoadError(
            f"{label} is not a recognised image format (supported: {_SUPPORTED_TEXT})"
            + (f"; {hint}." if hint else ". Convert it to JPEG or PNG and try again.")
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as e:  # header recognised but unreadable (e.g. truncated WebP)
        raise _corrupt(label, e) from e
    w, h = im.size
    if w * h > limits.max_image_pixels:
        im.close()
        raise LimitError(
            f"{label} is {w}x{h} pixels ({w * h / 1e6:.1f} megapixels), more than the "
            f"limit of {limits.max_image_pixels / 1e6:.1f} megapixels; it was refused "
            "before decoding. Use a smaller image.")
    if w <= 0 or h <= 0:
        im.close()
        raise ImageLoadError(f"{label} has no pixels ({w}x{h}).")
    if max(w, h) > MAX_ASPECT * min(w, h):
        im.close()
        raise LimitError(
            f"{label} is {w}x{h} pixels, a strip (aspect ratio over {MAX_ASPECT}:1): resized for a model "
            f"it would become {MAX_ASPECT}x longer than wide or more. Crop it to a less extreme shape.")
    return im


def _corrupt(label: str, e: Exception) -> ImageLoadError:
    return ImageLoadError(
        f"{label} could not be decoded: the file looks truncated or corrupt "
        f"({type(e).__name__}: {e}). Upload it again or re-save it with an image editor.")


def _target_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the longer side is at most ``max_side``, aspect kept."""
    if max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, min(max_side, round(w * s))), max(1, min(max_side, round(h * s)))


def _reduce_towards(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Shrink a decoded image by an integer box factor towards ``target`` = (w, h) (never
    below it) before any conversion, so 16-bit and float conversions work on the output
    size instead of the full decoded size. Modes Pillow cannot reduce are left as they are."""
    w, h = im.size
    factor = min(w // max(target[0], 1), h // max(target[1], 1))
    if factor < 2:
        return im
    try:
        if im.mode.startswith("I;16"):       # Pillow reduces 32-bit "I", not the 16-bit modes
            info = im.info
            im = im.convert("I")
            im.info.update(info)             # keeps a tRNS grey level for _gray16_to_rgb
        return im.reduce(factor)
    except (ValueError, NotImplementedError):
        return im


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of an RGB uint8 array to ``size`` = (w, h)."""
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS)).copy()


# --------------------------------------------------------------------------- modes

def _has_transparency(im: Image.Image) -> bool:
    flag = getattr(im, "has_transparency_data", None)  # Pillow >= 10.1
    if flag is not None:
        return bool(flag)
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA uint8 -> RGB uint8 over a white background (rounded)."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _gray16_to_rgb(im: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit integer) grayscale -> RGB uint8, scaling instead of clipping.

    Values within 0..65535 are mapped linearly onto 0..255 (32768 -> 128); mode ``I``
    images with values outside that range are min-max scaled.
    """
    raw = np.array(im, dtype=np.int64)
    lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    if lo >= 0 and hi <= 65535:
        gray = (raw * 255 + 32767) // 65535
    elif hi > lo:
        gray = ((raw - lo) * 255 + (hi - lo) // 2) // (hi - lo)
    else:
        gray = np.zeros_like(raw)
    rgb = _gray_to_rgb(gray.astype(np.uint8))
    trns = im.info.get("transparency")
    if isinstance(trns, int):  # e.g. a 16-bit PNG with a tRNS grey level
        rgb[raw == trns] = 255
    return rgb


def _float_to_rgb(im: Image.Image) -> np.ndarray:
    """Mode ``F`` -> RGB uint8: values in 0..1 are scaled by 255, others min-max scaled.

    NaN and -inf become the darkest value, +inf the brightest.
    """
    a = np.array(im, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape + (3,), np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    return _gray_to_rgb(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow image (already decoded) -> RGB uint8 array ``(H, W, 3)``.

    Transparency (alpha channels, palette or colour-key transparency) is composited on
    white; 16-bit and float images are rescaled rather than clipped; CMYK, YCbCr, LAB,
    HSV, palette and bilevel images are colour-converted by Pillow.

    Args:
        im: the decoded Pillow image, any mode.
    """
    mode = im.mode
    if mode in _GRAY16_MODES:
        return _gray16_to_rgb(im)
    if mode == "F":
        return _float_to_rgb(im)
    if mode == "La":  # premultiplied; Pillow converts it to nothing but LA
        im, mode = im.convert("LA"), "LA"
    if mode in _ALPHA_MODES or _has_transparency(im):
        return _composite_on_white(np.array(im.convert("RGBA"), dtype=np.uint8))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


# --------------------------------------------------------------------------- helpers

def image_hash(arr: np.ndarray) -> str:
    """Content address of an array: sha256 hex of its dtype, shape and bytes.

    Args:
        arr: any array (e.g. RGB uint8 pixels).
    """
    arr = np.asarray(arr)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def to_png_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` as PNG bytes.

    Args:
        arr: uint8 grey, RGB or RGBA pixels, not empty.
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ParameterError(f"to_png_bytes needs a uint8 array, got {arr.dtype}.")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ParameterError(f"to_png_bytes needs shape (H, W), (H, W, 3) or (H, W, 4), "
                             f"got {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ParameterError(f"to_png_bytes got an empty image of shape {arr.shape}.")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- gallery

@dataclass(frozen=True)
class GalleryItem:
    """A bundled sample image. ``kind`` is ``"photo"`` or ``"texture"``."""
    name: str
    kind: str
    description: str
    loader: Callable[[], np.ndarray] = field(repr=False, compare=False)


def _skimage(func: str, filename: str | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        if filename is not None and (arr := _skimage_file(filename)) is not None:
            return arr
        import skimage.data
        return getattr(skimage.data, func)()
    return load


def _skimage_file(filename: str) -> np.ndarray | None:
    """A sample image that scikit-image ships in ``skimage/data``, decoded by Pillow
    without importing ``skimage.io`` (which costs about a second at start-up, on the way
    to the default image). None when the file or its mode is not the expected one; the
    caller then asks ``skimage.data``, as before."""
    import importlib.util
    from pathlib import Path
    try:
        spec = importlib.util.find_spec("skimage")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / filename
        with Image.open(path) as im:
            if im.mode not in ("RGB", "RGBA", "L"):
                return None
            return np.asarray(im)
    except (AttributeError, TypeError, StopIteration, OSError, UnidentifiedImageError):
        return None


def _motorcycle() -> np.ndarray:
    import skimage.data
    return skimage.data.stereo_motorcycle()[0]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image
        return load_sample_image(filename)
    return load


_ITEMS = (
    GalleryItem("chelsea", "photo", "Chelsea the cat (scikit-image)", _skimage("chelsea", "chelsea.png")),
    GalleryItem("coffee", "photo", "A cup of coffee (scikit-image)", _skimage("coffee", "coffee.png")),
    GalleryItem("astronaut", "photo", "Astronaut Eileen Collins, NASA portrait (scikit-image)",
                _skimage("astronaut", "astronaut.png")),
    GalleryItem("rocket", "photo", "A rocket launch (scikit-image)", _skimage("rocket", "rocket.jpg")),
    GalleryItem("motorcycle", "photo", "A motorcycle, left view of a stereo pair "
                "(scikit-image)", _motorcycle),
    GalleryItem("hubble_deep_field", "photo", "Hubble eXtreme Deep Field galaxies "
                "(scikit-image)", _skimage("hubble_deep_field", "hubble_deep_field.jpg")),
    GalleryItem("immunohistochemistry", "photo", "Immunohistochemically stained tissue "
                "under a microscope (scikit-image)", _skimage("immunohistochemistry")),
    GalleryItem("china", "photo", "A Chinese temple (scikit-learn)", _sklearn("china.jpg")),
    GalleryItem("flower", "photo", "A flower close-up (scikit-learn)", _sklearn("flower.jpg")),
    GalleryItem("brick", "texture", "Brick wall texture, grayscale (scikit-image)",
                _skimage("brick", "brick.png")),
    GalleryItem("grass", "texture", "Grass texture, grayscale (scikit-image)",
                _skimage("grass", "grass.png")),
    GalleryItem("gravel", "texture", "Gravel texture, grayscale (scikit-image)",
                _skimage("gravel", "gravel.png")),
)

#: Sample images by name, in display order (photos first).
GALLERY: dict[str, GalleryItem] = {item.name: item for item in _ITEMS}
#: The image shown before the user picks or uploads one.
DEFAULT_IMAGE = "chelsea"
_KINDS = ("photo", "texture")


def gallery_names(kind: str | None = None) -> list[str]:
    """Names of the gallery images, optionally only those of one ``kind``."""
    if kind is not None and kind not in _KINDS:
        raise ParameterError(f"Unknown gallery kind {kind!r}; use one of {', '.join(_KINDS)}.")
    return [n for n, item in GALLERY.items() if kind is None or item.kind == kind]


def gallery_image(name: str) -> np.ndarray:
    """The gallery image ``name`` as a read-only RGB uint8 array (cached)."""
    if not isinstance(name, str) or name not in GALLERY:
        raise ParameterError(f"Unknown gallery image {name!r}; valid names are: "
                             f"{', '.join(GALLERY)}.")
    return _load_gallery(name)


@functools.lru_cache(maxsize=None)
def _load_gallery(name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = np.asarray(GALLERY[name].loader())
    if raw.dtype != np.uint8:
        from skimage.util import img_as_ubyte
        raw = img_as_ubyte(raw)
    if raw.ndim == 2:
        raw = _gray_to_rgb(raw)
    elif raw.shape[2] == 4:
        raw = _composite_on_white(raw)
    arr = np.array(raw[..., :3], dtype=np.uint8, order="C")  # own, contiguous copy
    arr.setflags(write=False)
    return arr


def colormap_rgb(values: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Values in [0, 1] (clipped) through a matplotlib colormap -> RGB uint8 (..., 3), rounded.

    Args:
        values: an array of any shape, 0 = the colormap's first colour, 1 = its last.
        cmap: a matplotlib colormap name ("inferno", "RdBu_r", ...).
    """
    from matplotlib import colormaps
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return (colormaps[cmap](v)[..., :3] * 255 + 0.5).astype(np.uint8)
