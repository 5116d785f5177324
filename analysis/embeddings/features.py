"""Feature vectors ("embeddings") of a data set at one layer, plus the model's predictions.

CS231n lecture 12, "last layer": the vector that feeds the final classifier is an
embedding of the image; images close in that space look alike to the model (nearest
neighbours, t-SNE). ``extract`` runs the data set through the model once and keeps, per
image, that layer's output and the model's prediction.

Rules (documented because they change what is shown):

* **Which layer** (``penultimate_layer``): the classifier is the last ``nn.Linear`` that
  runs in the forward (or, for fully convolutional heads without a Linear, such as
  SqueezeNet, the last convolution). The penultimate layer is the module that finishes
  (``LayerInfo.finish_order``) last before the classifier, skipping layers that do not
  change values at inference (Dropout, Identity, Flatten): EfficientNet-Lite0
  ``_avg_pooling``, resnet ``avgpool``, vgg ``classifier.4`` (fc7 after ReLU), digits CNN
  ``avgpool``. Containers that hold the classifier finish after it and are never picked.
* **Vectors**: a (C, H, W) output is global-average-pooled over H and W; an already flat
  (D,) output is kept. Any other rank is refused (LayerError). Stored as float32.
* **Predictions**: from the logits of the same forward: ``predictions`` = argmax,
  ``confidences`` = the largest softmax probability.
* **One full forward per batch** under ``torch.inference_mode()`` holding ``bundle.lock``,
  the layer captured with a thread-scoped hook (``hooks.capture``) registered and removed
  per batch. A module called several times in one forward is captured at its last call.

Long work is a generator (``extract``) yielding :class:`ExtractProgress` and returning the
:class:`FeatureSet` (``StopIteration.value``); ``run_extract`` drives it with a callback. The
result is stored on disk (``analysis.core.diskcache``, kind ``features``) under a key naming the
model weights, the layer, the data set's content and the preprocessing; a stopped
extraction stores nothing. The batch is halved after an out-of-memory error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generator, Sequence

import numpy as np
import torch
from torch import nn

import analysis.core.diskcache as diskcache
from analysis.core.batching import Chunks, JobProgress
from analysis.core.datasets import Dataset, image_count
from analysis.core.errors import LayerError, ParameterError
from analysis.core.fastops import fast_pooling
from analysis.core.hooks import capture, get_module
from analysis.core.jobs import drive
from analysis.core.layers import layer_layout
from analysis.core.layout import Layout
from analysis.core.layout import pool as layout_pool
from analysis.core.lru import LockedLRU
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import check_int

CACHE_KIND = "features"
_FORMAT = 1                      # bump when the stored layout or the extraction rules change

# Modules that do not change values at inference: never reported as the penultimate layer.
_PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout, nn.Identity, nn.Flatten)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------
# Which layer
# --------------------------------------------------------------------------------------
_PENULTIMATE = LockedLRU(32)   # (model, preprocessing, class) -> layer name


def penultimate_layer(bundle: ModelBundle) -> str:
    """Name of the layer whose output feeds the final classifier (see the module docstring).

    Found from the layer table's dry forward (cached per model and preprocessing).
    LayerError for TorchScript models (no layer hooks) and models without a Linear or
    convolution, or where nothing runs before the classifier.

    Args:
        bundle: the model.
    """
    key = (bundle.model_id, bundle.preprocess.spec_id, type(bundle.model).__qualname__)
    return _PENULTIMATE.get_or_compute(key, lambda: _find_penultimate(bundle))


def _find_penultimate(bundle: ModelBundle) -> str:
    from analysis.core.layers import layer_table  # lazy: layers imports the bundle only

    if isinstance(bundle.model, torch.jit.ScriptModule):
        raise LayerError("TorchScript models cannot be hooked layer by layer, so their feature "
                         "vectors cannot be read.")
    infos = [i for i in layer_table(bundle) if i.calls > 0 and i.finish_order >= 0]
    modules = dict(bundle.model.named_modules())
    linear = [i for i in infos if isinstance(modules[i.name], nn.Linear)]
    heads = linear or [i for i in infos if isinstance(modules[i.name], _CONV)]
    if not heads:
        raise LayerError("The model has no Linear or convolution layer: no classifier input to read.")
    head = max(heads, key=lambda i: i.finish_order)
    before = [i for i in infos if i.finish_order < head.finish_order and i.output_shape is not None
              and not isinstance(modules[i.name], _PASS_THROUGH)]
    if not before:
        raise LayerError(f"No layer runs before the classifier {head.name!r}.")
    return max(before, key=lambda i: i.finish_order).name


# --------------------------------------------------------------------------------------
# The feature set
# --------------------------------------------------------------------------------------
ExtractProgress = JobProgress    # done / total / seconds, yielded by the generator


@dataclass(eq=False)
class FeatureSet:
    """One vector per data-set image at ``layer`` plus the model's prediction for it.

    ``features`` (N, D) float32 (spatial maps global-average-pooled), ``predictions`` (N,)
    int64 argmax of the logits, ``confidences`` (N,) float32 largest softmax probability,
    ``labels`` (N,) int64 the data set's labels.
    """

    layer: str
    model_id: str
    dataset_hash: str
    preprocess_id: str
    features: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    labels: np.ndarray
    n: int
    seconds: float

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def accuracy(self) -> float:
        """Fraction of images whose prediction equals the data-set label (meaningful only
        when the data set's classes are the model's classes)."""
        return float(np.mean(self.predictions == self.labels)) if self.n else float("nan")

    def same_as(self, other: "FeatureSet") -> bool:
        """Whether ``other`` holds the same features: the same identifying fields (layer, model,
        data set, preprocessing, size) and equal arrays (features, predictions, confidences, labels).

        Args:
            other: another feature set (e.g. one read back from the disk cache).
        """
        scalars = ("layer", "model_id", "dataset_hash", "preprocess_id", "n")
        return (all(getattr(self, a) == getattr(other, a) for a in scalars)
                and all(np.array_equal(getattr(self, a), getattr(other, a))
                        for a in ("features", "predictions", "confidences", "labels")))

    def check(self, bundle: ModelBundle, dataset: Dataset | None = None) -> None:
        """ParameterError unless this set was extracted with ``bundle`` (and ``dataset``)."""
        if self.model_id != bundle.model_id or self.preprocess_id != bundle.preprocess.spec_id:
            raise ParameterError("These feature vectors were extracted with another model or preprocessing.")
        if dataset is not None and (self.dataset_hash != dataset.content_hash or self.n != len(dataset)):
            raise ParameterError("These feature vectors were extracted from another data set.")


def _pool(a: torch.Tensor, layer: str, layout: Layout) -> torch.Tensor:
    """Layer output (N, ...) -> (N, D) float32 by its layout: the global average of a map
    (channels-first or channels-last), the class token of a token layer (the mean of the
    patch tokens when it has none), a vector as it is."""
    return layout_pool(a.float(), layout, f"Layer {layer!r}")


def _logits_tensor(out, layer: str) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise LayerError("The model's output is not a (batch, classes) tensor of logits.")
    return out


def _forward(bundle: ModelBundle, layer: str, x: torch.Tensor):
    """ONE full forward: (features (N, D), predictions (N,), confidences (N,)) on CPU."""
    model = bundle.model
    with torch.inference_mode():
        with bundle.lock, fast_pooling(model), capture(model, layer) as acts:   # same bits, faster pooling
            out = model(x)
        if layer not in acts:
            raise LayerError(f"Layer {layer!r} did not run in the model's forward pass.")
        feats = _pool(acts[layer], layer, layer_layout(bundle, layer))
        logits = _logits_tensor(out, layer).float()
        conf, pred = logits.softmax(dim=1).max(dim=1)
    return feats.cpu().numpy(), pred.cpu().numpy().astype(np.int64), conf.cpu().numpy().astype(np.float32)


def _check_batch(batch_size) -> int:
    return check_int("batch_size", batch_size, 1)


def features_key(bundle: ModelBundle, dataset: Dataset, layer: str) -> str:
    """Disk-cache key of the feature set of ``layer`` over ``dataset``.

    Args:
        bundle: the model (its ``model_id`` and preprocessing id enter the key).
        dataset: the data set (its content hash enters the key).
        layer: the layer's qualified name.
    """
    return diskcache.cache_key("features", bundle.model_id, layer, dataset.content_hash,
                               bundle.preprocess.spec_id)


def _meta(fs: FeatureSet) -> dict:
    return {"format": _FORMAT, "layer": fs.layer, "model_id": fs.model_id,
            "dataset_hash": fs.dataset_hash, "preprocess_id": fs.preprocess_id,
            "n": fs.n, "dim": fs.dim, "seconds": fs.seconds}


def save_features(fs: FeatureSet, cache_dir=None) -> None:
    """Store a feature set in the disk cache (found again by ``load_features``).

    Args:
        fs: the feature set.
        cache_dir: the cache root (default the configuration's).
    """
    key = diskcache.cache_key("features", fs.model_id, fs.layer, fs.dataset_hash, fs.preprocess_id)
    diskcache.save_arrays(CACHE_KIND, key, {"features": fs.features, "predictions": fs.predictions,
                                            "confidences": fs.confidences, "labels": fs.labels},
                          _meta(fs), cache_dir=cache_dir)


def load_features(bundle: ModelBundle, dataset: Dataset, layer: str | None = None,
                  cache_dir=None) -> FeatureSet | None:
    """The stored feature set for exactly this model, layer, data set and preprocessing;
    None if there is none (or it does not match / cannot be read).

    Args:
        bundle: the model.
        dataset: the data set the features were extracted from.
        layer: the layer's qualified name; None for ``penultimate_layer``.
        cache_dir: disk-cache root; None for the configured one.
    """
    layer = penultimate_layer(bundle) if layer is None else layer
    got = diskcache.load_arrays(CACHE_KIND, features_key(bundle, dataset, layer), cache_dir=cache_dir)
    if got is None:
        return None
    arrays, meta = got
    n = len(dataset)
    expect = {"format": _FORMAT, "layer": layer, "model_id": bundle.model_id,
              "dataset_hash": dataset.content_hash, "preprocess_id": bundle.preprocess.spec_id, "n": n}
    try:
        if any(meta.get(a) != v for a, v in expect.items()):
            return None
        d = int(meta["dim"])
        f = arrays["features"]
        if f.shape != (n, d) or any(arrays[a].shape != (n,) for a in ("predictions", "confidences", "labels")):
            return None
        labels = arrays["labels"].astype(np.int64, copy=False)
        if not np.array_equal(labels, dataset.labels):
            return None
        return FeatureSet(layer=layer, model_id=bundle.model_id, dataset_hash=dataset.content_hash,
                          preprocess_id=bundle.preprocess.spec_id,
                          features=f.astype(np.float32, copy=False),
                          predictions=arrays["predictions"].astype(np.int64, copy=False),
                          confidences=arrays["confidences"].astype(np.float32, copy=False),
                          labels=labels, n=n, seconds=float(meta["seconds"]))
    except (KeyError, TypeError, ValueError):
        return None


def extract(bundle: ModelBundle, dataset: Dataset, layer: str | None = None, *, batch_size: int = 64,
            should_stop: Callable[[], bool] | None = None, save: bool = True,
            cache_dir=None) -> Generator[ExtractProgress, None, FeatureSet | None]:
    """Feature vectors of ``layer`` (default: ``penultimate_layer``) and predictions for
    every image of ``dataset``, one full forward per batch.

    Yields :class:`ExtractProgress` (first ``done=0``, then after every batch) and returns
    the :class:`FeatureSet`, saved to the disk cache when ``save``; returns None (saving
    nothing) when ``should_stop()`` turns true (checked before every batch). LayerError for
    an unknown layer or one whose output is neither a map nor a vector. The batch is halved
    after an out-of-memory error.

    Args:
        bundle: the model (held under ``bundle.lock`` for each forward).
        dataset: the images.
        layer: the layer's qualified name; None for ``penultimate_layer``. A map is mean-pooled
            over its positions.
        batch_size: images per forward.
        should_stop: polled before every batch; None never stops.
        save: store the finished set in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    bs = _check_batch(batch_size)
    layer = penultimate_layer(bundle) if layer is None else layer
    if not isinstance(layer, str):
        raise ParameterError(f"layer must be a layer name, got {layer!r}")
    get_module(bundle.model, layer)          # LayerError before any work for a bad name
    n = image_count(dataset)
    t0 = time.perf_counter()
    yield ExtractProgress(0, n, 0.0)

    feats = preds = confs = None
    chunks = Chunks(n, bs, lambda start, stop: _forward(bundle, layer, bundle.inputs(dataset.get_many(range(start, stop)))),
                    should_stop)     # the batch halves after an out-of-memory error
    for start, stop, (f, p, c) in chunks:
        if feats is None:
            feats = np.empty((n, f.shape[1]), dtype=np.float32)
            preds = np.empty(n, dtype=np.int64)
            confs = np.empty(n, dtype=np.float32)
        feats[start:stop], preds[start:stop], confs[start:stop] = f, p, c
        yield ExtractProgress(stop, n, time.perf_counter() - t0)
    if chunks.stopped:
        return None

    fs = FeatureSet(layer=layer, model_id=bundle.model_id, dataset_hash=dataset.content_hash,
                    preprocess_id=bundle.preprocess.spec_id, features=feats, predictions=preds,
                    confidences=confs, labels=np.array(dataset.labels, dtype=np.int64), n=n,
                    seconds=time.perf_counter() - t0)
    if save:
        save_features(fs, cache_dir=cache_dir)
    return fs


def run_extract(bundle: ModelBundle, dataset: Dataset, layer: str | None = None, *, batch_size: int = 64,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, save: bool = True,
                cache_dir=None) -> FeatureSet | None:
    """``extract`` driven to the end: ``progress(done, total)`` after every batch; None if stopped.

    Args:
        bundle: the model.
        dataset: the images.
        layer: the layer's qualified name; None for ``penultimate_layer``.
        batch_size: images per forward.
        progress: ``progress(done, total)`` in images, or None.
        should_stop: polled before every batch; None never stops.
        save: store the finished set in the disk cache.
        cache_dir: disk-cache root; None for the configured one.
    """
    gen = extract(bundle, dataset, layer, batch_size=batch_size, should_stop=should_stop,
                  save=save, cache_dir=cache_dir)
    return drive(gen, None if progress is None else (lambda step: progress(step.done, step.total)))


def features_for_images(bundle: ModelBundle, images: np.ndarray | Sequence[np.ndarray],
                        layer: str | None = None, *, batch_size: int = 64
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw RGB uint8 image(s) outside any data set (e.g. the sidebar image) ->
    ``(features (N, D) float32, predictions (N,) int64, confidences (N,) float32)``,
    computed exactly as ``extract`` does, so they can be compared with a FeatureSet.

    Args:
        bundle: the model.
        images: one RGB uint8 image (H, W, 3), or a sequence / (N, H, W, 3) array of them.
        layer: the layer's qualified name; None for ``penultimate_layer``.
        batch_size: images per forward.
    """
    bs = _check_batch(batch_size)
    layer = penultimate_layer(bundle) if layer is None else layer
    get_module(bundle.model, layer)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    images = list(images)
    if not images:
        raise ParameterError("features_for_images needs at least one image.")
    out = [o for _, _, o in Chunks(len(images), bs,
                                   lambda start, stop: _forward(bundle, layer, bundle.inputs(images[start:stop])))]
    return (np.concatenate([o[0] for o in out]).astype(np.float32, copy=False),
            np.concatenate([o[1] for o in out]), np.concatenate([o[2] for o in out]))
