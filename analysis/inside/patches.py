"""Maximally activating patches (CS231n lecture 12; Zeiler & Fergus 2014; Girshick 2014).

For every channel of a layer, find the data-set images whose activation map reaches the
highest values, and show the part of each image the unit at the maximum can see (its
receptive field). One pass over the data set indexes *all* channels of the layer, so any
channel is instant afterwards; the index is stored on disk (``analysis.core.diskcache``) under
a key naming the model weights, the layer, the data set's content, the preprocessing and
``k``, and is reused after a restart.

Rules of the scan (documented because they change what is shown):

* **One patch per image per channel.** Each image contributes its spatial maximum (and
  the position of that maximum) to each channel's ranking; an image cannot fill a
  channel's top-k with k overlapping patches of one texture.
* **Ties** are broken deterministically: among equal maxima in one map, the first
  position in row-major order; among equal values across images, the lower image index.
  (A stable sort is used for the running top-k instead of ``torch.topk``, whose order
  among ties is unspecified.) NaN activations rank below everything.
* The forward stops right after the layer (``hooks.truncate_after``); a module that is
  called several times in one forward is captured at its first call.
* ``k`` larger than the data set gives ``min(k, n_images)`` columns.

Long work is a generator (``scan``) yielding :class:`ScanProgress` and returning the
:class:`PatchIndex` (``StopIteration.value``); ``run_scan`` drives it with a callback. A
stopped scan stores nothing. The shared model is only ever run under ``bundle.lock``
with a thread-scoped hook registered and removed per batch, so nothing is left on the
model between batches, after an error or when the caller abandons the generator.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Generator

import numpy as np
import torch
from PIL import Image

import analysis.core.diskcache as diskcache
from analysis.core.batching import Chunks, JobProgress
from analysis.core.datasets import Dataset, image_count
from analysis.core.errors import LayerError, LimitError, ParameterError
from analysis.core.fastops import fast_pooling
from analysis.core.hooks import get_module, run_truncated, truncate_after
from analysis.core.jobs import drive
from analysis.core.layers import layer_layout
from analysis.core.layout import to_nchw
from analysis.core.lru import LockedLRU
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import check_int, is_int

CACHE_KIND = "patches"
_FORMAT = 1                      # bump when the stored layout or scan rules change
MAX_K = 100

# --------------------------------------------------------------------------------------
# The default data set of the ImageNet model: augmented crops of the gallery photos
# --------------------------------------------------------------------------------------
GALLERY_SCALE = (0.1, 1.0)       # fraction of the source image's area
GALLERY_RATIO = (3 / 4, 4 / 3)   # crop width / height
_GALLERY_TAG = b"convlens-gallery-crops-v1\0"


def _crop_params(height: int, width: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5) int64 rows ``top, left, h, w, flip``: torchvision's RandomResizedCrop
    sampling (10 tries, then a centre crop with the aspect clamped), plus a coin flip."""
    out = np.zeros((n, 5), dtype=np.int64)
    area = height * width
    lo, hi = math.log(GALLERY_RATIO[0]), math.log(GALLERY_RATIO[1])
    for j in range(n):
        for _ in range(10):
            target = area * rng.uniform(*GALLERY_SCALE)
            aspect = math.exp(rng.uniform(lo, hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                break
        else:  # fallback: central crop, aspect clamped to the allowed range
            ratio = width / height
            if ratio < GALLERY_RATIO[0]:
                w, h = width, int(round(width / GALLERY_RATIO[0]))
            elif ratio > GALLERY_RATIO[1]:
                h, w = height, int(round(height * GALLERY_RATIO[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        flip = int(rng.random() < 0.5)
        out[j] = (top, left, h, w, flip)
    return out


class _GalleryCrops:
    """Loader of crop i: cut and resize on demand from the (cached) gallery photo.
    Picklable (names and parameters only)."""

    def __init__(self, names: list[str], sources: np.ndarray, params: np.ndarray, size: int):
        self.names, self.sources, self.params, self.size = names, sources, params, size

    def __call__(self, i: int) -> np.ndarray:
        from analysis.core.images import gallery_image
        src = gallery_image(self.names[int(self.sources[i])])
        top, left, h, w, flip = (int(v) for v in self.params[i])
        im = Image.fromarray(src).resize((self.size, self.size), Image.BILINEAR,
                                         box=(left, top, left + w, top + h))
        if flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(im).copy()
        arr.setflags(write=False)
        return arr


def gallery_dataset(crops_per_image: int = 40, seed: int = 0, size: int = 256) -> Dataset:
    """Deterministic augmented crops of every gallery *photo*: the default data set of the
    ImageNet model for patch and feature pages.

    Each photo gives ``crops_per_image`` random-resized crops (area 10–100 % of the photo,
    aspect 3/4–4/3, torchvision's sampling) resized to ``size`` x ``size`` RGB uint8 and
    flipped horizontally with probability 1/2, drawn from ``numpy.random.default_rng([seed,
    photo index])`` (so the first n crops of a photo do not depend on ``crops_per_image``).
    Labels are the photo index, ``class_names`` the photo names, ids ``"chelsea/crop017"``.
    Crops are cut on demand (about a millisecond each), so the data set holds no pixels;
    ``content_hash`` covers the photos' pixels, the crop parameters, the seed and size.
    Cached: equal arguments return the same object.
    """
    for name, v, lo in (("crops_per_image", crops_per_image, 1), ("seed", seed, 0), ("size", size, 8)):
        if not is_int(v) or v < lo:
            raise ParameterError(f"{name} must be an integer >= {lo}, got {v!r}")
    if size > 1024:
        raise ParameterError(f"size must be at most 1024, got {size}")
    return _gallery_dataset(int(crops_per_image), int(seed), int(size))


@lru_cache(maxsize=8)
def _gallery_dataset(crops_per_image: int, seed: int, size: int) -> Dataset:
    from analysis.core.config import get_config
    from analysis.core.images import gallery_image, gallery_names, image_hash

    names = gallery_names("photo")
    total = len(names) * crops_per_image
    limit = get_config().limits.max_dataset_images
    if total > limit:
        raise LimitError(f"{total} crops exceed the limit of {limit} images per data set.")
    h = hashlib.sha256(_GALLERY_TAG)
    h.update(json.dumps({"names": names, "crops": crops_per_image, "seed": seed, "size": size,
                         "scale": GALLERY_SCALE, "ratio": GALLERY_RATIO,
                         "interpolation": "bilinear"}, sort_keys=True).encode())
    params, sources, ids = [], [], []
    for s, name in enumerate(names):
        src = gallery_image(name)
        p = _crop_params(src.shape[0], src.shape[1], crops_per_image, np.random.default_rng([seed, s]))
        h.update(bytes.fromhex(image_hash(src)))
        h.update(p.tobytes())
        params.append(p)
        sources.append(np.full(crops_per_image, s, dtype=np.int64))
        ids.extend(f"{name}/crop{j:03d}" for j in range(crops_per_image))
    sources_arr = np.concatenate(sources)
    loader = _GalleryCrops(list(names), sources_arr, np.concatenate(params), size)
    return Dataset(name=f"gallery crops ({crops_per_image} per photo, seed {seed})", source="gallery",
                   class_names=list(names), labels=sources_arr.copy(), ids=ids,
                   content_hash=h.hexdigest(), skipped=[], _loader=loader)


gallery_dataset.cache_clear = _gallery_dataset.cache_clear  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------
ScanProgress = JobProgress    # done / total / seconds, yielded by the generator


@dataclass(eq=False)
class PatchIndex:
    """Top-k images per channel of one layer over one data set.

    ``values[c, j]`` is the j-th largest spatial maximum of channel ``c`` (descending),
    reached in image ``image_idx[c, j]`` at position ``(ys[c, j], xs[c, j])`` of the
    layer's ``output_shape`` grid. Arrays have ``min(k, n_images)`` columns. The receptive
    field needed to crop is computed from the bundle when cropping (``patch_crops``).
    """

    layer: str
    model_id: str
    dataset_hash: str
    preprocess_id: str
    k: int
    channels: int
    values: np.ndarray            # (C, k) float32, descending per row
    image_idx: np.ndarray         # (C, k) int64
    ys: np.ndarray                # (C, k) int64
    xs: np.ndarray                # (C, k) int64
    output_shape: tuple[int, int]  # (H, W) of the layer's map
    n_images: int
    seconds: float

    @property
    def columns(self) -> int:
        return int(self.values.shape[1])

    def channel_ranking(self) -> np.ndarray:
        """Channels ordered by their strongest activation (descending; ties by index)."""
        top = np.nan_to_num(self.values[:, 0], nan=-np.inf) if self.columns else np.zeros(self.channels)
        return np.lexsort((np.arange(self.channels), -top))

    def same_as(self, other: "PatchIndex") -> bool:
        """Whether ``other`` holds the same index: the same identifying fields (layer, model,
        data set, preprocessing, k, shapes) and equal arrays (values, image indices, positions).

        Args:
            other: another index (e.g. one read back from the disk cache).
        """
        scalars = ("layer", "model_id", "dataset_hash", "preprocess_id", "k", "channels",
                   "output_shape", "n_images")
        return (all(getattr(self, a) == getattr(other, a) for a in scalars)
                and all(np.array_equal(getattr(self, a), getattr(other, a))
                        for a in ("values", "image_idx", "ys", "xs")))


def _check_k(k) -> int:
    return check_int("k", k, 1, MAX_K)


def index_key(bundle: ModelBundle, dataset: Dataset, layer: str, k: int) -> str:
    """Disk-cache key of the index of ``layer`` over ``dataset`` with top-``k``.

    Args:
        bundle: the model (its ``model_id`` and preprocessing id enter the key).
        dataset: the data set (its content hash enters the key).
        layer: the layer's qualified name.
        k: images kept per channel.
    """
    return diskcache.cache_key("patches", bundle.model_id, layer, dataset.content_hash,
                               bundle.preprocess.spec_id, int(k))


def _meta(index: PatchIndex) -> dict:
    return {"format": _FORMAT, "layer": index.layer, "model_id": index.model_id,
            "dataset_hash": index.dataset_hash, "preprocess_id": index.preprocess_id,
            "k": index.k, "channels": index.channels, "output_shape": list(index.output_shape),
            "n_images": index.n_images, "seconds": index.seconds}


def save_index(index: PatchIndex, cache_dir=None) -> None:
    """Store a patch index in the disk cache (found again by ``load_index``).

    Args:
        index: the index.
        cache_dir: the cache root (default the configuration's).
    """
    key = diskcache.cache_key("patches", index.model_id, index.layer, index.dataset_hash,
                              index.preprocess_id, index.k)
    diskcache.save_arrays(CACHE_KIND, key, {"values": index.values, "image_idx": index.image_idx,
                                            "ys": index.ys, "xs": index.xs},
                          _meta(index), cache_dir=cache_dir)


def load_index(bundle: ModelBundle, dataset: Dataset, layer: str, k: int = 9,
               cache_dir=None) -> PatchIndex | None:
    """The stored index for exactly this model, layer, data set, preprocessing and k;
    None if there is none (or the stored one does not match / cannot be read).

    Args:
        bundle: the model.
        dataset: the data set the index was built on.
        layer: the layer's qualified name.
        k: images kept per channel (checked as in ``scan``).
        cache_dir: disk-cache root; None for the configured one.
    """
    k = _check_k(k)
    got = diskcache.load_arrays(CACHE_KIND, index_key(bundle, dataset, layer, k), cache_dir=cache_dir)
    if got is None:
        return None
    arrays, meta = got
    expect = {"format": _FORMAT, "layer": layer, "model_id": bundle.model_id,
              "dataset_hash": dataset.content_hash, "preprocess_id": bundle.preprocess.spec_id,
              "k": k, "n_images": len(dataset)}
    try:
        if any(meta.get(a) != v for a, v in expect.items()):
            return None
        c, cols = int(meta["channels"]), min(k, len(dataset))
        out = {a: arrays[a] for a in ("values", "image_idx", "ys", "xs")}
        if any(v.shape != (c, cols) for v in out.values()):
            return None
        return PatchIndex(layer=layer, model_id=bundle.model_id, dataset_hash=dataset.content_hash,
                          preprocess_id=bundle.preprocess.spec_id, k=k, channels=c,
                          values=out["values"].astype(np.float32, copy=False),
                          image_idx=out["image_idx"].astype(np.int64, copy=False),
                          ys=out["ys"].astype(np.int64, copy=False), xs=out["xs"].astype(np.int64, copy=False),
                          output_shape=tuple(int(v) for v in meta["output_shape"]),
                          n_images=int(meta["n_images"]), seconds=float(meta["seconds"]))
    except (KeyError, TypeError, ValueError):
        return None


def _layer_maxima(bundle: ModelBundle, layer: str, x: torch.Tensor):
    """Spatial max and its flat position per image and channel: (N, C) each, plus (H, W)."""
    model = bundle.model
    with bundle.lock, fast_pooling(model), torch.inference_mode():   # same bits, faster pooling
        with truncate_after(model, layer) as acts:
            run_truncated(model, x)
    if layer not in acts:
        raise LayerError(f"Layer {layer!r} did not run in the model's forward pass.")
    layout = layer_layout(bundle, layer)
    if not layout.is_map:
        raise LayerError(f"Layer {layer!r} outputs shape {tuple(acts[layer].shape[1:])} ({layout}), not a "
                         "(channels, height, width) feature map; maximally activating patches need a "
                         "spatial layer.")
    a = to_nchw(acts[layer], layout, layer)     # channels-last maps and tokens on their channel axis
    n, c, h, w = a.shape
    with torch.inference_mode():
        # (N, H*W, C): a view for channels_last maps; max over positions keeps the first
        # maximal position (row-major) on ties.
        v, p = a.permute(0, 2, 3, 1).reshape(n, h * w, c).max(dim=1)
        v = v.float()
        v = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)
    return v.cpu(), p.cpu(), (h, w)


def scan(bundle: ModelBundle, dataset: Dataset, layer: str, *, k: int = 9, batch_size: int = 32,
         should_stop: Callable[[], bool] | None = None, save: bool = True,
         cache_dir=None) -> Generator[ScanProgress, None, PatchIndex | None]:
    """Index the top-``k`` images of every channel of ``layer`` in one pass over ``dataset``.

    Yields :class:`ScanProgress` (first ``done=0``, then after every batch) and returns the
    :class:`PatchIndex`, saved to the disk cache when ``save``; returns None (saving
    nothing) when ``should_stop()`` turns true (checked before every batch). LayerError
    for an unknown layer or one whose output is not a (C, H, W) map. The batch is halved
    after an out-of-memory error.

    Args:
        bundle: the model (held under ``bundle.lock`` for each forward).
        dataset: the images to index.
        layer: the layer's qualified name.
        k: images kept per channel (the top-k maxima, one per image).
        batch_size: images per forward (a positive integer).
        should_stop: polled before every batch; None never stops.
        save: store the finished index in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    k = _check_k(k)
    if not is_int(batch_size) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    get_module(bundle.model, layer)          # LayerError before any work for a bad name
    n = image_count(dataset)
    t0 = time.perf_counter()
    yield ScanProgress(0, n, 0.0)

    best_v = best_i = best_p = None          # (C, <=k) running top-k
    hw = None

    def maxima(start: int, stop: int):
        x = bundle.preprocess(dataset.get_many(np.arange(start, stop, dtype=np.int64))).to(bundle.device)
        return _layer_maxima(bundle, layer, x)

    chunks = Chunks(n, int(batch_size), maxima, should_stop)
    for start, stop, out in chunks:
        v, p, hw = out
        cand_v, cand_p = v.T, p.T                                   # (C, N)
        cand_i = torch.arange(start, stop, dtype=torch.int64).expand(cand_v.shape[0], -1)  # (C, N)
        if best_v is not None:
            # Running best first: it holds only lower image indices, already ordered by
            # (value desc, index asc), so a stable sort keeps the lower index on ties.
            cand_v = torch.cat([best_v, cand_v], dim=1)
            cand_i = torch.cat([best_i, cand_i], dim=1)
            cand_p = torch.cat([best_p, cand_p], dim=1)
        order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, :k]
        best_v = cand_v.gather(1, order)
        best_i = cand_i.gather(1, order)
        best_p = cand_p.gather(1, order)
        yield ScanProgress(stop, n, time.perf_counter() - t0)
    if chunks.stopped:
        return None

    h, w = hw
    pos = best_p.numpy().astype(np.int64)
    index = PatchIndex(layer=layer, model_id=bundle.model_id, dataset_hash=dataset.content_hash,
                       preprocess_id=bundle.preprocess.spec_id, k=k, channels=int(best_v.shape[0]),
                       values=best_v.numpy().astype(np.float32), image_idx=best_i.numpy().astype(np.int64),
                       ys=pos // w, xs=pos % w, output_shape=(int(h), int(w)), n_images=n,
                       seconds=time.perf_counter() - t0)
    if save:
        save_index(index, cache_dir=cache_dir)
    return index


def run_scan(bundle: ModelBundle, dataset: Dataset, layer: str, *, k: int = 9, batch_size: int = 32,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None, save: bool = True,
             cache_dir=None) -> PatchIndex | None:
    """``scan`` driven to the end: ``progress(done, total)`` after every batch; None if stopped.

    Args:
        bundle: the model.
        dataset: the images to index.
        layer: the layer's qualified name.
        k: images kept per channel.
        batch_size: images per forward.
        progress: ``progress(done, total)`` in images, or None.
        should_stop: polled before every batch; None never stops.
        save: store the finished index in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    gen = scan(bundle, dataset, layer, k=k, batch_size=batch_size, should_stop=should_stop,
               save=save, cache_dir=cache_dir)
    return drive(gen, None if progress is None else (lambda step: progress(step.done, step.total)))


# --------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------
@dataclass
class PatchCrop:
    """One maximally activating patch: ``image`` is display_size x display_size x 3 uint8;
    ``box`` = (top, left, bottom, right), bottom/right exclusive, in the coordinates of
    the model-input crop (``preprocess.geometry``), clipped at its borders."""
    image: np.ndarray
    value: float
    image_idx: int
    image_id: str
    label_name: str
    box: tuple[int, int, int, int]
    position: tuple[int, int] = (0, 0)    # (y, x) in the layer's output grid
    rank: int = 0


_RF_CACHE = LockedLRU(64)   # (model, preprocessing, layer) -> ReceptiveField | TokenField


@dataclass(frozen=True)
class TokenField:
    """The receptive field of a token layer's patch tokens, said as it is: before any
    attention a token sees its own patch; after one, every token may see the whole image,
    so its "field" is the whole image (no false box around the patch)."""
    layer: str
    grid: tuple[int, int]
    input_size: int
    whole: bool

    @property
    def size(self) -> tuple[float, float]:
        if self.whole:
            return float(self.input_size), float(self.input_size)
        return self.input_size / self.grid[0], self.input_size / self.grid[1]

    @property
    def note(self) -> str:
        if self.whole:
            return (f"{self.layer} comes after self-attention: each token can see the whole image, so "
                    "its receptive field is the whole image (the crop is the whole input).")
        return f"{self.layer} comes before any attention: each token sees exactly its own patch."

    def box(self, y: int, x: int, size: int) -> tuple[int, int, int, int]:
        """The pixel box (top, left, bottom, right), bottom / right exclusive, of one token on
        the displayed input; the whole image once attention has mixed the tokens.

        Args:
            y: the token's row on the patch grid.
            x: the token's column on the patch grid.
            size: side of the displayed (square) input in pixels.
        """
        if self.whole:
            return 0, 0, size, size
        ph, pw = size / self.grid[0], size / self.grid[1]
        return int(round(y * ph)), int(round(x * pw)), int(round((y + 1) * ph)), int(round((x + 1) * pw))


_ATTENTION = ("Attention", "MultiheadAttention", "SelfAttention")


def token_field(bundle: ModelBundle, layer: str) -> TokenField | None:
    """A :class:`TokenField` for a token layer (None for other layouts): whole-image once
    any attention module has run before the layer finishes.

    Args:
        bundle: the model.
        layer: the layer's qualified name (``LayerError`` if unknown).
    """
    from analysis.core.layers import check_layer, layer_table
    infos = layer_table(bundle)
    info = check_layer(infos, layer)
    if info.layout.kind != "tokens" or info.layout.grid is None:
        return None
    after_attention = any(any(a in i.type for a in _ATTENTION) and 0 <= i.finish_order < info.finish_order
                          for i in infos)
    return TokenField(layer, info.layout.grid, bundle.input_size, after_attention)


def _receptive_field(bundle: ModelBundle, layer: str):
    from analysis.inside.receptive import receptive_field  # lazy: optional dependency of this module

    key = (bundle.model_id, bundle.preprocess.spec_id, layer)
    return _RF_CACHE.get_or_compute(key, lambda: token_field(bundle, layer) or receptive_field(bundle, layer))


def _check_index(bundle: ModelBundle, dataset: Dataset, index: PatchIndex) -> None:
    if index.model_id != bundle.model_id or index.preprocess_id != bundle.preprocess.spec_id:
        raise ParameterError("This patch index was built for another model or preprocessing.")
    if index.dataset_hash != dataset.content_hash:
        raise ParameterError("This patch index was built for another data set.")


def _fill_colour(bundle: ModelBundle) -> np.ndarray:
    """What zero padding means at the input: the normalisation mean, as RGB uint8."""
    mean = list(bundle.preprocess.mean)
    if len(mean) == 1:
        mean = mean * 3
    return np.array([int(round(min(1.0, max(0.0, m)) * 255)) for m in mean], dtype=np.uint8)


def _pad_to_field(crop: np.ndarray, box, field_hw, image_size: int, fill: np.ndarray) -> np.ndarray:
    """Pad a border-clipped crop on its clipped sides back to the receptive field's extent
    (at most the image size), so all patches of a layer share one scale and aspect."""
    top, left, bottom, right = box
    th = min(int(round(field_hw[0])), image_size)
    tw = min(int(round(field_hw[1])), image_size)
    h, w = crop.shape[:2]
    if h >= th and w >= tw:
        return crop
    ph, pw = max(0, th - h), max(0, tw - w)
    pad_top = ph if (top == 0 and bottom < image_size) else 0
    pad_left = pw if (left == 0 and right < image_size) else 0
    out = np.empty((max(h, th), max(w, tw), 3), dtype=np.uint8)
    out[:] = fill
    out[pad_top:pad_top + h, pad_left:pad_left + w] = crop
    return out


def _resize(arr: np.ndarray, display_size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if (h, w) == (display_size, display_size):
        return np.ascontiguousarray(arr)
    # Enlarging by 2x or more: nearest (shows the pixels, e.g. 3x3 fields or 8x8 digits);
    # otherwise Lanczos (antialiased when shrinking).
    resample = Image.NEAREST if display_size >= 2 * max(h, w) else Image.LANCZOS
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((display_size, display_size), resample))


def patch_crops(bundle: ModelBundle, dataset: Dataset, index: PatchIndex, channel: int, *,
                display_size: int = 64, pad: bool = True) -> list[PatchCrop]:
    """The top-k patches of ``channel``: the receptive-field box of each maximum, cut from
    the model-input view of its image and resized to ``display_size``.

    With ``pad`` a box clipped at the image border is padded on its clipped side(s) with
    the normalisation mean colour (what zero padding means at the input) back to the
    field's extent, so every patch of a layer is shown at the same scale.

    Args:
        bundle: the model the index was built with.
        dataset: the data set the index was built on (its images are read again).
        index: the scan's index (checked against ``bundle`` and ``dataset``).
        channel: channel index, 0 to ``index.channels - 1``.
        display_size: side of each crop in pixels, 1-1024.
        pad: pad border-clipped boxes with the mean colour back to the field's extent.
    """
    _check_index(bundle, dataset, index)
    if not is_int(channel) or not 0 <= channel < index.channels:
        raise ParameterError(f"channel must be from 0 to {index.channels - 1}, got {channel!r}")
    if not is_int(display_size) or not 1 <= display_size <= 1024:
        raise ParameterError(f"display_size must be from 1 to 1024, got {display_size!r}")
    rf = _receptive_field(bundle, index.layer)
    size = bundle.input_size
    fill = _fill_colour(bundle)
    views: dict[int, np.ndarray] = {}
    out = []
    for j in range(index.columns):
        i, y, x = int(index.image_idx[channel, j]), int(index.ys[channel, j]), int(index.xs[channel, j])
        if i not in views:
            views[i] = bundle.preprocess.geometry(dataset.get(i))
        top, left, bottom, right = (int(v) for v in rf.box(y, x, size))
        crop = views[i][top:bottom, left:right]
        if crop.size == 0:  # a field entirely outside the image (cannot happen for a valid RF)
            crop = np.empty((1, 1, 3), np.uint8)
            crop[:] = fill
        if pad:
            crop = _pad_to_field(crop, (top, left, bottom, right), rf.size, size, fill)
        label = int(dataset.labels[i])
        out.append(PatchCrop(image=_resize(crop, int(display_size)), value=float(index.values[channel, j]),
                             image_idx=i, image_id=dataset.ids[i],
                             label_name=dataset.class_names[label] if 0 <= label < len(dataset.class_names) else str(label),
                             box=(top, left, bottom, right), position=(y, x), rank=j))
    return out


def patch_grid(bundle: ModelBundle, dataset: Dataset, index: PatchIndex, channels: list[int],
               display_size: int = 64, *, separator: int = 2, background: int = 255,
               pad: bool = True) -> np.ndarray:
    """One RGB uint8 image: a row per channel (in the given order), a column per rank,
    ``separator`` pixels of ``background`` between cells (for display and download).

    Args:
        bundle: the model the index was built with.
        dataset: the data set the index was built on.
        index: the scan's index.
        channels: the channels to show, one row each.
        display_size: side of each cell in pixels.
        separator: gap between cells in pixels.
        background: grey level (0-255) of the gaps.
        pad: pad border-clipped boxes back to the field's extent (see :func:`patch_crops`).
    """
    channels = list(channels)
    if not channels:
        raise ParameterError("patch_grid needs at least one channel.")
    cols, ds, sep = index.columns, int(display_size), int(separator)
    if cols == 0:
        raise ParameterError("The index has no patches.")
    h = len(channels) * ds + (len(channels) - 1) * sep
    w = cols * ds + (cols - 1) * sep
    grid = np.full((h, w, 3), background, dtype=np.uint8)
    for r, c in enumerate(channels):
        for j, pc in enumerate(patch_crops(bundle, dataset, index, c, display_size=ds, pad=pad)):
            y0, x0 = r * (ds + sep), j * (ds + sep)
            grid[y0:y0 + ds, x0:x0 + ds] = pc.image
    return grid
