"""One Worker class per data-set job kind; the same class runs in-process and on Ray.

``Worker(model_spec, params)`` builds the model once from its JSON-able spec
(:func:`analysis.core.models.loaders.load_bundle`; never a pickled user object) and
``worker(batch)`` runs one batch. ``batch`` is a dict of equal-length numpy arrays:
``index`` (int64, position in the data set), ``path`` (str, the image id), ``label``
(int64), ``image`` (object array of RGB uint8 (H, W, 3) arrays, already decoded; the runner
fills it only for workers whose ``raw_images`` is true, else it holds None) and ``mask``
(object array of bool (H, W) arrays or None), and optionally ``crop`` ((n, S, S, 3) uint8,
the model's view of each image) and ``x``, the crops already preprocessed into the model's
input tensor (the runner does both ahead of the model, in helper threads). The result is a dict of numpy arrays
with one row per input row; columns with more than one dimension are stored as
fixed-size-list columns (shape in the job's meta data).

Columns by kind (all have ``index``, ``path``, ``label``, ``pred``, ``confidence``):

* ``predict``: ``top_ids`` (n, k) int64 and ``top_probs`` (n, k) float32, best first;
  ``logits`` (n, classes) float32 when ``params["logits"]``.
* ``features``: ``features`` (n, D) float32 at ``params["layer"]`` (default: the layer
  that feeds the classifier; (C, H, W) maps global-average-pooled).
* ``saliency``: ``target`` int64 (the predicted class, or the label with
  ``target="label"``), ``map`` (n, H, W) float32 on the model's input crop (Grad-CAM
  stores ``cam`` (n, h, w) at the layer's resolution instead and ``map`` is upsampled from
  it when read: :meth:`SaliencyWorker.stored`), ``map_sum``,
  ``map_max``, ``mass_centre`` (share of the positive saliency mass inside the central box
  of side ``centre`` x the crop, so a uniform map gives ``centre**2``), ``mass_mask`` (share
  inside the data set's mask; NaN without one) and ``flat`` (bool: constant map).
* ``trust``: the saliency columns except the map, plus ``deletion_auc``,
  ``insertion_auc`` (float64), ``random_deletion_auc`` / ``random_insertion_auc``
  (n, n_random) for ``n_random`` seeded uniform random maps (seed = ``seed`` + 1009 *
  index + r, so a run on any backend draws the same maps), and ``deletion_scores`` /
  ``insertion_scores`` (n, steps + 1) of the method's curves.

Grad-CAM and the vanilla gradient run batched (one forward + one backward for the whole
batch, each image with its own target); the other saliency methods run image by image
through :func:`analysis.saliency.methods.attribute`.
"""
from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from analysis.core.errors import ModelLoadError, ParameterError
from analysis.core.fastops import fast_pooling
from analysis.core.hooks import capture, graph_from
from analysis.core.models.bundle import ModelBundle
from analysis.core.models.loaders import ModelSpec, load_bundle, select_device

__all__ = ["Worker", "PredictWorker", "FeaturesWorker", "SaliencyWorker", "TrustWorker", "WORKERS",
           "WorkerRegistry", "resolve_worker", "worker_path", "model_spec_from", "model_spec_dict"]


def model_spec_from(spec) -> ModelSpec:
    """A ModelSpec from a ModelSpec, its dict, or a short name (``digits``, ``default``,
    ``resnet18`` = torchvision pretrained, ``random:resnet18`` = random weights).

    Args:
        spec: a ModelSpec (returned as it is), a dict of its fields, or a short name (str).

    Raises:
        ParameterError: ``spec`` has an unknown field or is none of these.
    """
    if isinstance(spec, ModelSpec):
        return spec
    if isinstance(spec, dict):
        bad = set(spec) - set(ModelSpec.__dataclass_fields__)
        if bad:
            raise ParameterError(f"Unknown model spec field(s): {', '.join(sorted(bad))}")
        return ModelSpec(**spec)
    if isinstance(spec, str):
        s = spec.strip()
        if s in ("default", "digits"):
            return ModelSpec(kind=s)
        if s.startswith("random:"):
            return ModelSpec(kind="random", arch=s.split(":", 1)[1])
        if s:
            return ModelSpec(kind="torchvision", arch=s)
    raise ParameterError(f"Not a model spec: {spec!r}")


def model_spec_dict(spec) -> dict:
    """The JSON-able dict of a model spec."""
    s = model_spec_from(spec)
    return {f: getattr(s, f) for f in ModelSpec.__dataclass_fields__}


_INFOS: dict[tuple, list] = {}


def _layer_infos(bundle: ModelBundle) -> list:
    """The bundle's layer table (one dry forward), memoised per weights and preprocessing."""
    from analysis.core.layers import layer_table
    key = (bundle.model_id, bundle.preprocess.spec_id, id(bundle.model))
    if key not in _INFOS:
        if len(_INFOS) > 8:
            _INFOS.clear()
        _INFOS[key] = layer_table(bundle)
    return _INFOS[key]


def _check_keys(kind: str, params: dict, allowed: set[str]) -> None:
    bad = set(params) - allowed
    if bad:
        raise ParameterError(f"The {kind} job has no parameter(s) {', '.join(sorted(bad))}; "
                             f"it takes {', '.join(sorted(allowed))}.")


def _int(params: dict, name: str, lo: int, hi: int) -> int:
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ParameterError(f"{name} must be an integer between {lo} and {hi}, got {v!r}")
    return int(v)


def concat_columns(outs: list[dict]) -> dict:
    """Concatenate worker outputs batch by batch.

    Args:
        outs: the column dicts of a chunk's batches, in order (each maps a column name to an
            array whose first axis is the batch); all have the keys of the first. A column
            that is None in any of them is left out. An empty list gives an empty dict.
    """
    if not outs:
        return {}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0] if all(o.get(k) is not None for o in outs)}


class Worker:
    """Base class: builds the bundle once; subclasses implement :meth:`__call__`.

    Args:
        model_spec: a ModelSpec, its dict or a short name (see :func:`model_spec_from`).
        params: the job parameters (missing ones take the class's ``defaults``).
        model_id: when given, the sha256 of the weights the job was planned with; a
            worker that builds different weights refuses to run (ModelLoadError).
        device: torch device (default: :func:`select_device`).
        bundle: an already built bundle of that spec (in-process reuse; never shipped).
    """

    kind: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    # Whether __call__ needs the decoded images themselves (``batch["image"]``), not only
    # their crops and the model input: then the runner decodes every image (no crop cache).
    raw_images: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:    # the runner calls compute() and finish(), never __call__
            raise TypeError(f"{cls.__name__} overrides __call__: a worker kind overrides compute() (the model "
                            "part) and finish() (numpy post-processing) instead.")

    def __init__(self, model_spec, params: dict | None = None, *, model_id: str = "",
                 device: str | torch.device | None = None, bundle: ModelBundle | None = None):
        self.model_spec = model_spec_from(model_spec)
        dev = torch.device(device) if device is not None else select_device()
        self.bundle = bundle if bundle is not None else load_bundle(self.model_spec, device=dev)
        if model_id and self.bundle.model_id != model_id:
            raise ModelLoadError(
                f"This worker built {self.model_spec.label()} with weights {self.bundle.short_id}, but the job "
                f"was planned with {model_id[:12]}: the weights differ between machines.")
        self.params = self.normalize(params or {}, self.bundle)

    @classmethod
    def normalize(cls, params: dict, bundle: ModelBundle) -> dict:
        """``params`` completed with the defaults, checked, and with bundle-dependent
        defaults (layers) resolved, so that equal jobs get equal parameter hashes."""
        p = dict(cls.defaults)
        p.update(params or {})
        _check_keys(cls.kind, p, set(cls.defaults))
        return p

    def __call__(self, batch: dict) -> dict:
        """One batch -> its output columns: ``finish(compute(batch))``.

        Args:
            batch: the batch (see the module docstring).
        """
        return self.finish(self.compute(batch))

    def compute(self, batch: dict):
        """The model part of one batch (the runner calls it on the model's thread).

        Args:
            batch: the batch (see the module docstring).
        """
        raise NotImplementedError

    def finish(self, staged) -> dict:
        """The rest of one batch after :meth:`compute`: numpy post-processing that does not
        need the model (the runner calls it on its writer thread, in batch order).

        Args:
            staged: what :meth:`compute` returned.
        """
        return staged

    def finish_many(self, staged: list) -> dict:
        """:meth:`finish` for every batch of a chunk, concatenated (the runner's writer calls
        this); a kind may finish them all at once when that gives the same bits.

        Args:
            staged: what :meth:`compute` returned for each batch of the chunk, in order.
        """
        return concat_columns([self.finish(st) for st in staged])

    def stored(self, columns: dict) -> dict:
        """The columns of :meth:`finish` that are written; the others are rebuilt from
        them when read (:meth:`derived`). By default all of them.

        Args:
            columns: what :meth:`finish` returned.
        """
        return columns

    @classmethod
    def derived(cls, params: dict, bundle: ModelBundle) -> dict:
        """Columns a result rebuilds when read instead of storing them: ``{column: {"from":
        stored column, "op": a name in :data:`DERIVED`, ...}}`` (recorded in ``meta.json``).
        None by default.

        Args:
            params: the job's normalised parameters.
            bundle: the job's model.
        """
        return {}

    # helpers --------------------------------------------------------------------
    def inputs(self, batch: dict) -> torch.Tensor:
        """The batch's model input: ``batch["x"]`` when the runner preprocessed it already,
        else the images -> normalised model input on the bundle's device."""
        x = batch.get("x")
        return x if x is not None else self.bundle.inputs(list(batch["image"]))

    @staticmethod
    def base_columns(batch: dict) -> dict:
        """The columns every kind writes: ``index`` (int64 data-set positions), ``path``
        (object array of str) and ``label`` (int64 true class).

        Args:
            batch: the batch (see the module docstring); its ``index``, ``path`` and
                ``label`` lists are used.
        """
        return {"index": np.asarray(batch["index"], np.int64), "path": np.asarray(batch["path"], dtype=object),
                "label": np.asarray(batch["label"], np.int64)}


def logits_of(out) -> torch.Tensor:
    """A model's output as float (batch, classes) logits: the first element of a tuple / list
    output; ParameterError for anything else.

    Args:
        out: what the model's forward returned.
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ParameterError("The model's output is not a (batch, classes) tensor of logits.")
    return out.float()


class PredictWorker(Worker):
    """Top-k predictions (and optionally the logits) of every image; one forward per batch."""

    kind = "predict"
    defaults = {"top_k": 5, "logits": False}

    @classmethod
    def normalize(cls, params, bundle):
        """Predict parameters completed and checked: ``top_k`` an int in [1, 1000], capped at
        the model's number of classes; ``logits`` a bool.

        Args:
            params: the job's parameters (dict; missing keys take :attr:`defaults`).
            bundle: the loaded model, for its number of classes.
        """
        p = super().normalize(params, bundle)
        p["top_k"] = min(_int(p, "top_k", 1, 1000), bundle.num_classes)
        p["logits"] = bool(p["logits"])
        return p

    def compute(self, batch: dict) -> dict:
        """Forward of the batch under ``torch.inference_mode``: its top-k columns.

        Args:
            batch: the batch (see the module docstring).
        """
        x = self.inputs(batch)
        with self.bundle.lock, fast_pooling(self.bundle.model), torch.inference_mode():
            logits = logits_of(self.bundle.model(x))
        return {"batch": self.base_columns(batch), "logits": logits}

    def finish(self, staged: dict) -> dict:
        """Softmax and top-k of the batch's logits, as numpy columns.

        Args:
            staged: what :meth:`compute` returned.
        """
        logits = staged["logits"]
        probs = logits.softmax(dim=1)
        top_p, top_i = probs.topk(self.params["top_k"], dim=1)
        out = dict(staged["batch"])
        out["pred"] = top_i[:, 0].cpu().numpy().astype(np.int64)
        out["confidence"] = top_p[:, 0].cpu().numpy().astype(np.float32)
        out["top_ids"] = top_i.cpu().numpy().astype(np.int64)
        out["top_probs"] = top_p.cpu().numpy().astype(np.float32)
        if self.params["logits"]:
            out["logits"] = logits.cpu().numpy().astype(np.float32)
        return out

    def finish_many(self, staged: list) -> dict:
        """One softmax / top-k for the whole chunk (row by row: the same bits as per batch).

        Args:
            staged: what :meth:`compute` returned for each batch of the chunk, in order.
        """
        if len(staged) < 2:
            return super().finish_many(staged)
        base = concat_columns([st["batch"] for st in staged])
        return self.finish({"batch": base, "logits": torch.cat([st["logits"] for st in staged])})


class FeaturesWorker(Worker):
    """Feature vectors at one layer plus the prediction, from one forward per batch."""

    kind = "features"
    defaults = {"layer": ""}

    @classmethod
    def normalize(cls, params, bundle):
        """Features parameters completed and checked: an empty ``layer`` becomes the model's
        penultimate layer, and the layer must exist.

        Args:
            params: the job's parameters (dict; missing keys take :attr:`defaults`).
            bundle: the loaded model, whose layers are checked.
        """
        from analysis.embeddings.features import penultimate_layer
        p = super().normalize(params, bundle)
        p["layer"] = str(p["layer"] or penultimate_layer(bundle))
        from analysis.core.layers import check_layer
        check_layer(_layer_infos(bundle), p["layer"])
        return p

    def compute(self, batch: dict) -> dict:
        """Forward of the batch capturing the layer: features and prediction columns.

        Args:
            batch: the batch (see the module docstring).
        """
        layer = self.params["layer"]
        x = self.inputs(batch)
        with self.bundle.lock, fast_pooling(self.bundle.model), torch.inference_mode(), \
                capture(self.bundle.model, layer) as acts:
            logits = logits_of(self.bundle.model(x))
        a = acts[layer]
        if a.dim() == 4:
            feats = a.float().mean(dim=(2, 3))
        elif a.dim() == 2:
            feats = a.float()
        else:
            raise ParameterError(f"Layer {layer!r} outputs shape {tuple(a.shape[1:])}; feature vectors need "
                                 "a (channels, height, width) map or a flat vector.")
        conf, pred = logits.softmax(dim=1).max(dim=1)
        out = self.base_columns(batch)
        out["pred"] = pred.cpu().numpy().astype(np.int64)
        out["confidence"] = conf.cpu().numpy().astype(np.float32)
        out["features"] = feats.cpu().numpy().astype(np.float32)
        return out


def upsample_cam(cam, size) -> torch.Tensor:
    """Grad-CAM maps at the layer's resolution -> the model input's: bilinear (half-pixel
    centres, like ``F.interpolate(mode="bilinear")``), as float32, one map per row.

    Done as two 1-D linear passes, over the height then the width: about 3x faster than the
    2-D kernel for many small maps (1,797 digits: 1.3 ms against 4.3 ms), equal to it up to
    rounding (a few 1e-7). Each output element depends on its own map only, so any batch of
    maps gives the same bits (the stored Grad-CAM statistics and the maps a result rebuilds
    both come from here).

    Args:
        cam: (n, h, w) float32 tensor or array.
        size: the output (height, width).
    """
    t = torch.as_tensor(cam, dtype=torch.float32)
    n, h, w = t.shape
    oh, ow = (int(v) for v in size)
    if n == 0:
        return t.new_zeros((0, oh, ow))
    cols = t.transpose(1, 2).reshape(n * w, 1, h)                        # each column of each map
    cols = F.interpolate(cols, size=oh, mode="linear").reshape(n, w, oh)
    rows = cols.transpose(1, 2).reshape(n * oh, 1, w)                    # each row of the taller maps
    return F.interpolate(rows, size=ow, mode="linear").reshape(n, oh, ow)


def _rebuild(upsample: Callable) -> Callable[[np.ndarray, tuple], np.ndarray]:
    def rebuild(stored: np.ndarray, size) -> np.ndarray:
        out = np.empty((len(stored), *size), np.float32)
        for a in range(0, len(stored), 4096):              # bounded temporary tensors
            with torch.inference_mode():
                out[a:a + 4096] = upsample(np.array(stored[a:a + 4096], np.float32), size).numpy()
        return out
    return rebuild


def _upsample_bilinear_2d(cam, size) -> torch.Tensor:
    # how results written before 2026-11-30 upsampled their maps (op "upsample_bilinear")
    t = torch.as_tensor(cam, dtype=torch.float32)
    return F.interpolate(t[:, None], size=tuple(int(v) for v in size), mode="bilinear")[:, 0]


# name -> rebuild(stored array, size) for the columns a result rebuilds when read; a result
# names the op its statistics were computed with, so it rebuilds exactly those maps
DERIVED = {"upsample_linear_hw": _rebuild(upsample_cam), "upsample_bilinear": _rebuild(_upsample_bilinear_2d)}


BATCHED_METHODS = ("gradcam", "gradient")


class SaliencyWorker(Worker):
    """One saliency map per image for its own target, plus where its mass lies."""

    kind = "saliency"
    defaults = {"method": "gradcam", "target": "pred", "layer": "", "centre": 0.5, "method_params": {}}

    @property
    def raw_images(self) -> bool:
        """Per-image methods explain the decoded image (``attribute`` preprocesses it); the
        batched ones need only the model input."""
        return self.params["method"] not in BATCHED_METHODS

    @classmethod
    def normalize(cls, params, bundle):
        """Saliency parameters completed and checked: ``method`` a registered method,
        ``target`` ``"pred"`` or ``"label"``, ``centre`` a fraction in (0, 1], ``method_params``
        a dict; for Grad-CAM methods ``layer`` (default: the last conv block) must have a
        spatial output, for other methods it is cleared.

        Args:
            params: the job's parameters (dict; missing keys take :attr:`defaults`).
            bundle: the loaded model, whose layers are checked.

        Raises:
            ParameterError: a value is out of range or unknown.
        """
        from analysis.core.layers import check_layer, last_conv_block
        from analysis.saliency import registry
        p = super().normalize(params, bundle)
        if p["method"] not in registry.names():
            raise ParameterError(f"Unknown saliency method {p['method']!r}; choose from {', '.join(registry.names())}.")
        if p["target"] not in ("pred", "label"):
            raise ParameterError("target must be 'pred' (the predicted class) or 'label' (the true class).")
        if not 0 < float(p["centre"]) <= 1:
            raise ParameterError("centre must be a fraction of the crop's side in (0, 1].")
        p["centre"] = float(p["centre"])
        if not isinstance(p["method_params"], dict):
            raise ParameterError("method_params must be an object of the method's parameters.")
        p["method_params"] = dict(p["method_params"])
        if p["method"] in ("gradcam", "guided_gradcam"):
            infos = _layer_infos(bundle)
            p["layer"] = str(p["layer"] or p["method_params"].pop("layer", "") or last_conv_block(infos))
            info = check_layer(infos, p["layer"])
            if not info.spatial:
                raise ParameterError(f"Grad-CAM needs a layer with a spatial feature map; {p['layer']} outputs "
                                     f"{info.output_shape}.")
        else:
            p["layer"] = ""
        return p

    # -- maps --------------------------------------------------------------------
    def _targets(self, batch: dict, pred: torch.Tensor) -> torch.Tensor:
        if self.params["target"] == "label":
            t = torch.as_tensor(np.asarray(batch["label"], np.int64), device=pred.device)
            if (t < 0).any() or (t >= self.bundle.num_classes).any():
                raise ParameterError("target='label' needs data-set labels that are model classes.")
            return t
        return pred

    def maps(self, batch: dict) -> dict:
        """pred, confidence, target (n,) and map (n, H, W) for the batch."""
        return self.complete(self._raw_maps(batch))

    def _raw_maps(self, batch: dict) -> dict:
        """What the model part must compute: pred, target and, per method, the maps or
        Grad-CAM's layer-resolution ``cam`` and the ``logits`` (:meth:`complete` does the
        rest, row by row)."""
        method = self.params["method"]
        x = self.inputs(batch)
        if method == "gradcam":
            return self._gradcam(batch, x)
        if method == "gradient":
            return self._gradient(batch, x)
        return self._per_image(batch, x)

    def complete(self, r: dict) -> dict:
        """Add what is computed per image from the model part's output: ``confidence`` (the
        top softmax probability of ``logits``) and Grad-CAM's input-size ``map`` (upsampled
        from ``cam``). Row by row, so a whole chunk at once gives the same bits as batch by
        batch.

        Args:
            r: :meth:`_raw_maps`'s output for one batch or several concatenated.
        """
        r = dict(r)
        if "confidence" not in r:
            r["confidence"] = r.pop("logits").softmax(dim=1).max(dim=1).values
        if "map" not in r:
            r["map"] = upsample_cam(r["cam"], (self.bundle.input_size,) * 2)
        return r

    def _gradcam(self, batch, x):
        layer, model = self.params["layer"], self.bundle.model
        if tuple(x.shape[-2:]) != (self.bundle.input_size,) * 2:       # the maps are rebuilt at that size
            raise ParameterError(f"Grad-CAM expected inputs of {self.bundle.input_size} pixels, got {tuple(x.shape)}")
        # the graph starts at the layer (graph_from): the network before it runs without one,
        # its max pooling through the faster kernel (fast_pooling; the same values)
        with self.bundle.lock, fast_pooling(model), graph_from(model, layer) as acts:
            logits = logits_of(model(x))
            if layer not in acts:
                raise ParameterError(f"{layer} did not run in the forward pass.")
            pred = logits.detach().argmax(dim=1)
            target = self._targets(batch, pred)
            score = logits.gather(1, target[:, None]).sum()
            if not score.requires_grad:
                raise ParameterError(f"The class scores do not depend on {layer}.")
            a = acts[layer]
            (g,) = torch.autograd.grad(score, a)
        with torch.no_grad():
            w = g.mean(dim=(2, 3), keepdim=True)
            low = F.relu((w * a).sum(dim=1)).float()
        return {"pred": pred, "logits": logits.detach(), "target": target, "cam": low}

    def _gradient(self, batch, x):
        model = self.bundle.model
        # detach() is a new tensor on the same memory: the batch's own tensor is not marked (no
        # copy needed: a model that wrote into its input in place fails on a grad leaf either way)
        x = x.detach().requires_grad_(True)
        with self.bundle.lock, torch.enable_grad():
            logits = logits_of(model(x))
            pred = logits.detach().argmax(dim=1)
            target = self._targets(batch, pred)
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        conf = logits.detach().softmax(dim=1).max(dim=1).values
        return {"pred": pred, "confidence": conf, "target": target, "map": g.abs().amax(dim=1).float()}

    def _per_image(self, batch, x):
        from analysis.saliency.methods import attribute
        with self.bundle.lock, fast_pooling(self.bundle.model), torch.inference_mode():
            logits = logits_of(self.bundle.model(x))
        conf, pred = logits.softmax(dim=1).max(dim=1)
        target = self._targets(batch, pred)
        params = dict(self.params["method_params"])
        if self.params["layer"]:
            params["layer"] = self.params["layer"]
        maps = [torch.from_numpy(attribute(self.bundle, img, int(t), self.params["method"], **params).map)
                for img, t in zip(batch["image"], target.tolist())]
        return {"pred": pred, "confidence": conf, "target": target, "map": torch.stack(maps)}

    # -- scalars -----------------------------------------------------------------
    def _masks(self, batch: dict, size: int) -> list[np.ndarray | None]:
        geo = self.bundle.preprocess.geometry
        out = []
        for m in batch.get("mask", [None] * len(batch["index"])):
            if m is None:
                out.append(None)
                continue
            rgb = np.repeat((np.asarray(m, bool).astype(np.uint8) * 255)[..., None], 3, axis=2)
            out.append(geo(rgb)[..., 0] >= 128)
        return out

    def scalars(self, batch: dict, maps: np.ndarray) -> dict:
        """Per-image numbers of the saliency maps: ``map_sum``, ``map_max``, ``mass_centre``
        (share of the positive mass in the central ``centre`` fraction of the crop),
        ``mass_mask`` (share inside the image's mask; NaN without a mask or positive mass)
        and ``flat`` (the map is constant).

        Args:
            batch: the batch (see the module docstring); its optional ``mask`` list is used.
            maps: the batch's maps, an (n, h, w) float array in model-input pixels.
        """
        n, h, w = maps.shape
        rows = maps.reshape(n, -1)
        hi, lo = rows.max(1), rows.min(1)
        map_sum = rows.sum(1, dtype=np.float64)          # summed in float64, without a float64 copy
        # the positive part (Grad-CAM's maps have no negative values: no copy); per row, the
        # same bits whichever other maps share the array
        pos = maps if (lo >= 0).all() else np.maximum(maps, 0)
        total = map_sum if pos is maps else pos.reshape(n, -1).sum(1, dtype=np.float64)
        c = self.params["centre"]
        ch, cw = max(1, int(round(h * c))), max(1, int(round(w * c)))
        t, l = (h - ch) // 2, (w - cw) // 2
        inside = pos[:, t:t + ch, l:l + cw].sum((1, 2), dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            centre = np.where(total > 0, inside / total, np.nan)
        mask_share = np.full(n, np.nan)
        for k, m in enumerate(self._masks(batch, h)):
            if m is not None and total[k] > 0:
                mask_share[k] = pos[k][m].sum(dtype=np.float64) / total[k]
        return {"map_sum": map_sum, "map_max": hi.astype(np.float32, copy=False),
                "mass_centre": centre.astype(np.float64), "mass_mask": mask_share.astype(np.float64),
                "flat": hi == lo}

    def compute(self, batch: dict) -> dict:
        """The maps of the batch (forward + backward for the batched methods), still as tensors.

        Args:
            batch: the batch (see the module docstring).
        """
        return {"batch": {k: batch[k] for k in ("index", "path", "label", "mask") if k in batch},
                "r": self._raw_maps(batch)}

    def finish(self, staged: dict) -> dict:
        """Maps to numpy and their mass statistics (no model needed).

        Args:
            staged: what :meth:`compute` returned.
        """
        batch, r = staged["batch"], self.complete(staged["r"])
        maps = r["map"].detach().cpu().numpy().astype(np.float32, copy=False)
        out = self.base_columns(batch)
        out["pred"] = r["pred"].cpu().numpy().astype(np.int64)
        out["confidence"] = r["confidence"].detach().cpu().numpy().astype(np.float32)
        out["target"] = r["target"].cpu().numpy().astype(np.int64)
        out["map"] = maps
        if "cam" in r:
            out["cam"] = r["cam"].detach().cpu().numpy().astype(np.float32, copy=False)
        out.update(self.scalars(batch, maps))
        return out

    def finish_many(self, staged: list) -> dict:
        """The maps and statistics of the whole chunk at once (every step is per map: the
        same bits as per batch).

        Args:
            staged: what :meth:`compute` returned for each batch of the chunk, in order.
        """
        if len(staged) < 2:
            return super().finish_many(staged)
        batch = concat_columns([st["batch"] for st in staged])
        r = {k: torch.cat([st["r"][k] for st in staged]) for k in staged[0]["r"]}
        return self.finish({"batch": batch, "r": r})

    def stored(self, columns: dict) -> dict:
        """Grad-CAM's maps are stored at the layer's resolution (``cam``) and upsampled when
        read (:data:`DERIVED`): the same bits, 16x less to write for the digits and about
        1000x less for a 224-pixel model's 7 x 7 map.

        Args:
            columns: what :meth:`finish` returned.
        """
        if "cam" in columns:
            return {k: v for k, v in columns.items() if k != "map"}
        return columns

    @classmethod
    def derived(cls, params: dict, bundle: ModelBundle) -> dict:
        """``{"map": {"from": "cam", "op": "upsample_linear_hw", "size": [S, S]}}`` for
        Grad-CAM jobs, else empty.

        Args:
            params: the job's normalised parameters.
            bundle: the job's model (its input size).
        """
        if params.get("method") == "gradcam":
            return {"map": {"from": "cam", "op": "upsample_linear_hw", "size": [bundle.input_size] * 2}}
        return {}


class TrustWorker(SaliencyWorker):
    """Deletion / insertion AUC of the method's map and of ``n_random`` random maps."""

    kind = "trust"
    # substrate "" and patch 0: the per-image check's measured defaults (black squares of 1/4
    # of the side; docs/saliency.md and docs/dataset_audit.md)
    defaults = {**SaliencyWorker.defaults, "steps": 16, "substrate": "", "patch": 0, "n_random": 3,
                "seed": 0}

    @classmethod
    def normalize(cls, params, bundle):
        """Trust parameters completed and checked: ``steps`` in [1, 1000], ``n_random`` in
        [0, 100], ``seed`` in [0, 2**31 - 1], ``substrate`` a known substrate (default
        :data:`DEFAULT_SUBSTRATE`), ``patch`` in pixels up to the input size (0: the default
        patch for that size).

        Args:
            params: the job's parameters (dict; missing keys take :attr:`defaults`).
            bundle: the loaded model, for its input size.
        """
        from analysis.saliency.trust import DEFAULT_SUBSTRATE, SUBSTRATES, default_patch
        p = super().normalize(params, bundle)
        p["steps"] = _int(p, "steps", 1, 1000)
        p["n_random"] = _int(p, "n_random", 0, 100)
        p["seed"] = _int(p, "seed", 0, 2**31 - 1)
        if not p["substrate"]:
            p["substrate"] = DEFAULT_SUBSTRATE
        if p["substrate"] not in SUBSTRATES:
            raise ParameterError(f"substrate must be one of {', '.join(SUBSTRATES)}.")
        p["patch"] = _int(p, "patch", 0, bundle.input_size)
        if p["patch"] == 0:
            p["patch"] = default_patch(bundle.input_size)
        return p

    def finish(self, staged: dict) -> dict:
        """Nothing left to do: :meth:`compute` returns the finished columns.

        Args:
            staged: what :meth:`compute` returned.
        """
        return staged

    def finish_many(self, staged: list) -> dict:
        """The finished columns of every batch, concatenated.

        Args:
            staged: what :meth:`compute` returned for each batch of the chunk, in order.
        """
        return Worker.finish_many(self, staged)

    def compute(self, batch: dict) -> dict:
        """Maps, then deletion / insertion curves of the maps and of the random maps.

        Args:
            batch: the batch (see the module docstring).
        """
        from analysis.saliency.trust import deletion_insertion, random_map
        r = self.maps(batch)
        maps = r["map"].detach().cpu().numpy().astype(np.float32, copy=False)
        targets = r["target"].cpu().numpy().astype(np.int64)
        geo = self.bundle.preprocess.geometry
        p = self.params
        n, R, S = len(maps), p["n_random"], p["steps"]
        res = {"deletion_auc": np.zeros(n), "insertion_auc": np.zeros(n),
               "random_deletion_auc": np.zeros((n, R)), "random_insertion_auc": np.zeros((n, R)),
               "deletion_scores": np.zeros((n, S + 1)), "insertion_scores": np.zeros((n, S + 1))}
        kw = {"steps": S, "substrate": p["substrate"], "patch": p["patch"], "batch_size": S + 1}
        crops = batch.get("crop")
        for k in range(n):
            crop = crops[k] if crops is not None else geo(batch["image"][k])
            tgt = int(targets[k])
            for kind in ("deletion", "insertion"):
                c = deletion_insertion(self.bundle, maps[k], crop, tgt, kind=kind, **kw)
                res[f"{kind}_auc"][k] = c.auc
                res[f"{kind}_scores"][k] = c.scores
            for j in range(R):
                rm = random_map(maps[k].shape, p["seed"] + 1009 * int(batch["index"][k]) + j)
                for kind in ("deletion", "insertion"):
                    res[f"random_{kind}_auc"][k, j] = deletion_insertion(self.bundle, rm, crop, tgt, kind=kind,
                                                                         **kw).auc
        out = self.base_columns(batch)
        out["pred"] = r["pred"].cpu().numpy().astype(np.int64)
        out["confidence"] = r["confidence"].detach().cpu().numpy().astype(np.float32)
        out["target"] = targets
        out.update(self.scalars(batch, maps))
        out.update(res)
        return out


def worker_path(cls: type) -> str:
    """The importable ``"module:Class"`` path of a Worker class.

    Args:
        cls: a :class:`Worker` subclass defined at module level (not inside a function).
    """
    path = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in path or cls.__module__ == "__main__":
        raise ParameterError(f"The worker class {cls.__qualname__} is not importable by path ({path}); define it "
                             "at module level of an importable module so that Ray workers can load it.")
    return path


def resolve_worker(path: str) -> type[Worker]:
    """Import a Worker class from its ``"package.module:Class"`` path.

    Args:
        path: module path and class name separated by a colon, as registered in :data:`WORKERS`
            (only paths the driver registered travel to Ray workers; never a user's string).

    Raises:
        ParameterError: the path is malformed, cannot be imported, or is not a Worker.
    """
    import importlib
    module, sep, name = str(path).partition(":")
    if not sep or not module or not name:
        raise ParameterError(f"A worker path is 'package.module:Class', got {path!r}")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ParameterError(f"Cannot load the worker {path}: {type(e).__name__}: {e}") from e
    if not (isinstance(obj, type) and issubclass(obj, Worker)):
        raise ParameterError(f"{path} is not a data-set Worker class.")
    return obj


class WorkerRegistry(MutableMapping):
    """Job kind -> Worker class, by module path, imported on first use.

    A kind is known wherever this module is imported (the driver, every Ray actor), not
    only where the module defining its class was imported: entries are ``"module:Class"``
    paths resolved lazily by :func:`resolve_worker`, and the Ray backend ships the path
    (:meth:`path`), never the class. ``WORKERS[kind] = cls_or_path`` registers a kind
    (e.g. a test-only worker); ``WORKERS[kind]`` returns the class.

    Args:
        entries: initial ``{kind: "module:Class" or class}``.
    """

    def __init__(self, entries: dict | None = None):
        self._paths: dict[str, str] = {}
        self._classes: dict[str, type[Worker]] = {}
        for kind, v in (entries or {}).items():
            self[kind] = v

    def __setitem__(self, kind: str, value) -> None:
        if isinstance(value, str):
            self._paths[kind] = value
            self._classes.pop(kind, None)
        elif isinstance(value, type) and issubclass(value, Worker):
            self._paths[kind] = f"{value.__module__}:{value.__qualname__}"
            self._classes[kind] = value
        else:
            raise ParameterError(f"A worker kind maps to a Worker class or its 'module:Class' path, not {value!r}")

    def __getitem__(self, kind: str) -> type[Worker]:
        if kind not in self._classes:
            self._classes[kind] = resolve_worker(self._paths[kind])
        return self._classes[kind]

    def __delitem__(self, kind: str) -> None:
        del self._paths[kind]
        self._classes.pop(kind, None)

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, kind) -> bool:
        return kind in self._paths

    def path(self, kind: str) -> str:
        """The ``"module:Class"`` path of ``kind`` (what a Ray actor imports).

        Args:
            kind: a registered job kind.
        """
        if kind not in self._paths:
            raise ParameterError(f"Unknown job kind {kind!r}; use one of {', '.join(self._paths)}.")
        if kind in self._classes:
            return worker_path(self._classes[kind])
        return self._paths[kind]


# Built-in kinds, by path: a kind is resolvable in any process (a Ray actor imports only
# this module and then the kind's own module, lazily).
WORKERS: WorkerRegistry = WorkerRegistry({
    "predict": "analysis.dataset.workers:PredictWorker",
    "features": "analysis.dataset.workers:FeaturesWorker",
    "saliency": "analysis.dataset.workers:SaliencyWorker",
    "trust": "analysis.dataset.workers:TrustWorker",
    "crp": "analysis.relevance.workers:CRPWorker",
})

