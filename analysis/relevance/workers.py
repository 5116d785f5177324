"""The data-set job kind ``crp``: per-image channel relevance at one layer, for
relevance-maximisation reference galleries (Achtibat et al. 2023).

Registered by path (``"analysis.relevance.workers:CRPWorker"``) in the executor's worker
table (:data:`analysis.dataset.workers.WORKERS`), so the kind is known in every process
(a Ray actor imports this module only when it runs a ``crp`` job) and
``run(JobSpec("crp", model, dataset, {"layer": ...}))`` runs it in-process or on Ray like
the built-in kinds, stores Parquet parts keyed by model hash + data hash +
parameters (the cache) and resumes after a Stop.

Columns (besides ``index``, ``path``, ``label``, ``pred``, ``confidence``): ``target`` (the
class explained: the prediction, or the label with ``target="label"``), ``score`` (its
logit), ``channel_relevance`` (n, C) float32 (the relevance each channel of the layer passes
on, summed over positions), ``channel_max_relevance`` (n, C) (its largest value at one
position), ``channel_activation`` (n, C) (mean activation, for the activation-maximisation
comparison) and ``channel_argmax`` (n, C) int32 (the flat position of the largest relevance
in the layer's h x w grid, to crop the reference at).
"""
from __future__ import annotations

import numpy as np
import torch

from analysis.core.errors import ParameterError
from analysis.dataset.workers import Worker, logits_of
from analysis.relevance.crp import layer_condition
from analysis.relevance.lrp import COMPOSITES, lrp_batch, lrp_plan


class CRPWorker(Worker):
    """Channel relevance of every image at one layer, batched (one LRP pass per batch) on a
    private copy of the model built once per worker."""

    kind = "crp"
    defaults = {"layer": "", "composite": "epsilon_plus_flat", "target": "pred"}

    @classmethod
    def normalize(cls, params, bundle):
        """The job's parameters completed and checked: ``layer`` defaults to the model's last
        conv block and must give (C, H, W) maps, ``composite`` is a key of ``COMPOSITES``,
        ``target`` is "pred" or "label"; the model must be one LRP can explain (checked before
        any image is read). Errors are ``ParameterError`` (or the LRP plan's ``RelevanceError``).

        Args:
            params: the job's parameters as given (unknown keys refused).
            bundle: the model the job runs on.
        """
        from analysis.core.layers import check_layer, last_conv_block, layer_table
        p = super().normalize(params, bundle)
        infos = layer_table(bundle)
        p["layer"] = str(p["layer"] or last_conv_block(infos))
        info = check_layer(infos, p["layer"])
        if not info.spatial:
            raise ParameterError(f"CRP galleries need a layer with (C, H, W) maps; {p['layer']} gives {info.output_shape}.")
        if p["composite"] not in COMPOSITES:
            raise ParameterError(f"Unknown LRP composite {p['composite']!r}; choose from {', '.join(COMPOSITES)}.")
        if p["target"] not in ("pred", "label"):
            raise ParameterError("target must be 'pred' or 'label'")
        lrp_plan(bundle.model)            # refuse unsupported models before any image is read
        return p

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model = self.bundle.copy_model()
        self.lo, self.hi = self.bundle.preprocess.valid_range()

    def compute(self, batch: dict) -> dict:
        """Per-channel relevance of one batch (see the class docstring for the columns).

        Args:
            batch: the batch (see :mod:`analysis.dataset.workers`).
        """
        x = self.inputs(batch)
        with torch.inference_mode():
            logits = logits_of(self.model(x))
        pred = logits.argmax(1)
        if self.params["target"] == "label":
            targets = torch.as_tensor(np.asarray(batch["label"], np.int64), device=x.device)
            if int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]:
                raise ParameterError("A label is not one of the model's classes; explain the prediction instead.")
        else:
            targets = pred
        sink, acts = [], []
        res = lrp_batch(self.model, x, targets.cpu(), self.params["composite"], lo=self.lo, hi=self.hi,
                        layer_hooks=layer_condition(self.params["layer"], None, sink, acts))
        r = sink[-1].float().cpu()                       # (n, C, h, w)
        a = acts[-1].float().cpu()
        flat = r.flatten(2)
        out = self.base_columns(batch)
        probs = logits.float().softmax(1)
        out["pred"] = pred.cpu().numpy().astype(np.int64)
        out["confidence"] = probs.max(1).values.cpu().numpy().astype(np.float32)
        out["target"] = targets.cpu().numpy().astype(np.int64)
        out["score"] = res.scores.astype(np.float32)
        out["channel_relevance"] = flat.sum(2).numpy().astype(np.float32)
        out["channel_max_relevance"] = flat.max(2).values.numpy().astype(np.float32)
        out["channel_activation"] = a.mean(dim=(2, 3)).numpy().astype(np.float32)
        out["channel_argmax"] = flat.argmax(2).numpy().astype(np.int32)
        return out



def reference_gallery(result, channel: int, n: int = 8, by: str = "relevance") -> list[dict]:
    """The ``n`` images where ``channel`` is most relevant (``by="relevance"``: summed
    relevance, ``"max_relevance"``: largest at one position) or most active
    (``by="activation"``), from a finished ``crp`` job result.

    Args:
        result: :class:`analysis.dataset.executor.JobResult` of a ``crp`` job.
        channel: channel index of the job's layer.
        n: how many images.
        by: ranking column.
    """
    col = {"relevance": "channel_relevance", "max_relevance": "channel_max_relevance",
           "activation": "channel_activation"}.get(by)
    if col is None:
        raise ParameterError("by must be relevance, max_relevance or activation")
    values = result.array(col)
    if not 0 <= channel < values.shape[1]:
        raise ParameterError(f"The layer has {values.shape[1]} channels; no channel {channel}.")
    df = result.to_pandas(["index", "path", "label", "target"])
    argmax = result.array("channel_argmax")[:, channel]
    order = np.argsort(-values[:, channel], kind="stable")[:n]
    return [{"index": int(df["index"].iloc[i]), "path": str(df["path"].iloc[i]), "label": int(df["label"].iloc[i]),
             "target": int(df["target"].iloc[i]), "value": float(values[i, channel]), "argmax": int(argmax[i])}
            for i in order]
