"""Saliency from the attention of vision transformers.

* **Attention rollout** (Abnar & Zuidema 2020): the attention of every block, averaged
  (or max / min) over heads, plus the identity for the residual path, rows renormalised,
  multiplied from the first block to the last; the class token's row over the patch
  tokens is the map. It does not depend on the target class.
* **Gradient-weighted attention relevance** (Chefer, Gur & Wolf 2021, the generic rule of
  "Generic Attention-model Explainability"): ``R = I``; for every block ``Ā = mean_h
  (∇A ⊙ A)⁺`` with the gradient of the target's score, ``R ← R + Ā R``; the class token's
  row over the patch tokens is the map. It is class-specific.

Supported: timm ``VisionTransformer`` family (ViT, DeiT incl. distilled, register tokens),
torchvision ``VisionTransformer`` and Hugging Face ViT-like classifiers (through
``output_attentions``). Attention probabilities are captured inside context managers on a
*copy* of the model (timm's fused attention never returns them, so the copy has it turned
off; torchvision's MultiheadAttention is asked for per-head weights on the copy); the
shared model is never changed. Models with windowed attention (Swin) have no global class
token attention; they are refused with a reason.

Methods have the signature ``(bundle, x, target, **params) -> torch map (1, 1, H, W)``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.errors import ParameterError
from analysis.core.hooks import forward_hooks
from analysis.core.models.bundle import ModelBundle

HEAD_FUSIONS = ("mean", "max", "min")
ATTENTION_METHODS = ("attention_rollout", "attention_relevance")   # names in the saliency table


class _TorchvisionMHA(nn.Module):
    """Replaces a copy's nn.MultiheadAttention (torchvision's EncoderBlock: batch first,
    self-attention, no mask) by the same computation written out, so that the per-head
    attention probabilities are tensors of the graph (the weights MultiheadAttention
    returns are a view made after their use, which gradients never reach). Hands them to
    the active recorder."""

    def __init__(self, mha: nn.MultiheadAttention, sink: list):
        super().__init__()
        if not mha.batch_first or mha.in_proj_weight is None:
            raise ParameterError("Unsupported MultiheadAttention layout (expected batch_first with one in-projection).")
        self.mha, self.sink = mha, sink

    def forward(self, q, k, v, need_weights=False, **kw):
        m = self.mha
        n, t, c = q.shape
        h = m.num_heads
        qq, kk, vv = F.linear(q, m.in_proj_weight, m.in_proj_bias).chunk(3, dim=-1)
        qq, kk, vv = (z.reshape(n, t, h, c // h).transpose(1, 2) for z in (qq, kk, vv))
        attn = ((qq * (c // h) ** -0.5) @ kk.transpose(-2, -1)).softmax(-1)
        if self.sink and self.sink[-1] is not None:
            self.sink[-1].append(attn)
        out = (attn @ vv).transpose(1, 2).reshape(n, t, c)
        return m.out_proj(out), None


def _family(model: nn.Module) -> str | None:
    from analysis.core.models.hf_source import HFImageClassifier
    if isinstance(model, HFImageClassifier):
        cfg = model.hf.config
        return "hf" if getattr(cfg, "patch_size", None) and getattr(cfg, "image_size", None) else None
    try:
        from timm.models.vision_transformer import Attention as TimmAttention
        from timm.models.vision_transformer import VisionTransformer as TimmViT
        if isinstance(model, TimmViT) and any(isinstance(m, TimmAttention) for m in model.modules()):
            return "timm"
    except ImportError:  # pragma: no cover - timm is a requirement
        pass
    from torchvision.models.vision_transformer import VisionTransformer as TvViT
    if isinstance(model, TvViT):
        return "torchvision"
    return None


def supports_attention(bundle: ModelBundle) -> bool:
    """True when the bundle's model is a ViT-like model whose attention maps can be read."""
    return _family(bundle.model) is not None


def _require(bundle: ModelBundle) -> str:
    fam = _family(bundle.model)
    if fam is None:
        raise ParameterError(
            f"{bundle.architecture} has no global self-attention with a class token that convlens can read "
            "(supported: timm ViT/DeiT, torchvision vit_*, Hugging Face ViT-like classifiers; windowed "
            "attention such as Swin's has no class-token row). Use Grad-CAM or a gradient method instead.")
    return fam


class _AttentionCopy:
    """A copy of the bundle's model that records attention probabilities (per thread)."""

    def __init__(self, bundle: ModelBundle, family: str):
        self.family = family
        self.model = bundle.copy_model()
        self.sink: list = []                  # stack: the recording list of the active call
        if family == "timm":
            from timm.models.vision_transformer import Attention as TimmAttention
            self.attn = [m for m in self.model.modules() if isinstance(m, TimmAttention)]
            for m in self.attn:
                m.fused_attn = False          # on the copy only: the shared model keeps its fused kernel
        elif family == "torchvision":
            for layer in self.model.encoder.layers:
                layer.self_attention = _TorchvisionMHA(layer.self_attention, self.sink)

    @contextlib.contextmanager
    def recording(self):
        """Yield a list that fills with (N, heads, T, T) attention tensors of one forward,
        in block order. timm: forward hooks on each block's ``attn_drop`` (the softmax
        output), removed on exit even on error."""
        store: list[torch.Tensor] = []
        timm = ([(m.attn_drop, lambda mod, i, o: store.append(o)) for m in self.attn]
                if self.family == "timm" else [])
        with forward_hooks(timm, this_thread_only=False):
            try:
                if self.family == "torchvision":
                    self.sink.append(store)
                yield store
            finally:
                if self.family == "torchvision" and self.sink:
                    self.sink.pop()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, attention probabilities of every block)."""
        if self.family == "hf":
            logits, atts = self.model.attentions(x)
            return logits, list(atts)
        with self.recording() as store:
            logits = self.model(x)
        return logits, list(store)

    def prefix_tokens(self, n_tokens: int, x: torch.Tensor) -> tuple[int, tuple[int, int]]:
        """(number of class/register tokens, patch grid (h, w)) for ``n_tokens`` tokens."""
        m = self.model
        if self.family == "timm":
            grid = tuple(int(g) for g in m.patch_embed.dynamic_feat_size(x.shape[-2:])) \
                if getattr(m.patch_embed, "dynamic_img_size", False) else tuple(m.patch_embed.grid_size)
            return int(m.num_prefix_tokens), grid
        if self.family == "torchvision":
            g = x.shape[-1] // m.patch_size
            return 1, (x.shape[-2] // m.patch_size, g)
        p = int(m.hf.config.patch_size)
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        return n_tokens - grid[0] * grid[1], grid


def _attention_copy(bundle: ModelBundle) -> _AttentionCopy:
    fam = _require(bundle)
    with bundle.lock:
        cached = bundle.derived.get("attention_copy")
        if cached is None:
            cached = bundle.derived["attention_copy"] = _AttentionCopy(bundle, fam)
    return cached


def _to_map(row: torch.Tensor, prefix: int, grid: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """Class-token row (T,) -> (1, 1, H, W) map on the input, bilinear from the patch grid."""
    patches = row[prefix:]
    if patches.numel() != grid[0] * grid[1]:
        raise ParameterError(f"{patches.numel()} patch tokens do not fill a {grid[0]}×{grid[1]} grid.")
    m = patches.reshape(1, 1, *grid).float()
    return F.interpolate(m, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False).detach()


def _check_attn(atts: list[torch.Tensor]) -> None:
    if not atts:
        raise ParameterError("No attention probabilities were recorded in the forward pass.")
    t = atts[0].shape[-1]
    for a in atts:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2] or a.shape[-1] != t:
            raise ParameterError(f"Unexpected attention shape {tuple(a.shape)}; expected (N, heads, T, T).")


def attention_rollout(bundle: ModelBundle, x: torch.Tensor, target: int | None = None, *,
                      head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of the first image of ``x``.

    Args: bundle (a ViT-like model); x (model input, N,C,H,W; the first image is used);
    target (ignored: rollout is class-agnostic, accepted for the common signature);
    head_fusion ("mean" | "max" | "min" over heads); discard_ratio (fraction in [0, 0.99]
    of the lowest attentions set to zero per block, never the class token's own, as in
    the widely used implementation). Returns a (1, 1, H, W) map on the input.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ParameterError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}.")
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) \
            or not 0 <= discard_ratio <= 0.99:
        raise ParameterError("discard_ratio must be a number in [0, 0.99].")
    ac = _attention_copy(bundle)
    x1 = x[:1].detach()
    with bundle.lock, torch.inference_mode():
        _, atts = ac.forward(x1)
    _check_attn(atts)
    t = atts[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64, device=x1.device)
    rollout = eye.clone()
    for a in atts:
        a = a[0].double()
        fused = {"mean": a.mean(0), "max": a.amax(0), "min": a.amin(0)}[head_fusion]
        if discard_ratio > 0:
            flat = fused.flatten().clone()
            k = int(flat.numel() * discard_ratio)
            if k:
                idx = flat.topk(k, largest=False).indices
                idx = idx[idx != 0]                       # keep the class token's self-attention
                flat[idx] = 0
            fused = flat.view_as(fused)
        fused = 0.5 * fused + 0.5 * eye
        fused = fused / fused.sum(-1, keepdim=True)
        rollout = fused @ rollout
    prefix, grid = ac.prefix_tokens(t, x1)
    return _to_map(rollout[0], prefix, grid, x1)


def attention_relevance(bundle: ModelBundle, x: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, generic rule) of
    ``target`` for the first image of ``x``.

    Args: bundle (a ViT-like model); x (model input, N,C,H,W); target (class index).
    Returns a (1, 1, H, W) map on the input (≥ 0).
    """
    ac = _attention_copy(bundle)
    x1 = x[:1].detach().clone().requires_grad_(True)
    with bundle.lock, torch.enable_grad():
        logits, atts = ac.forward(x1)
        _check_attn(atts)
        if not 0 <= int(target) < logits.shape[-1]:
            raise ParameterError(f"target {target} is outside 0..{logits.shape[-1] - 1}.")
        grads = torch.autograd.grad(logits[0, int(target)], atts, allow_unused=True)
    t = atts[0].shape[-1]
    rel = torch.eye(t, dtype=torch.float64, device=x1.device)
    for a, g in zip(atts, grads):
        if g is None:
            continue
        cam = (g[0].double() * a[0].detach().double()).clamp(min=0).mean(0)
        rel = rel + cam @ rel
    prefix, grid = ac.prefix_tokens(t, x1)
    row = rel[0].clone()
    return _to_map(row, prefix, grid, x1)


# ------------------------------------------------------------------ guided backprop notes

SMOOTH_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.Softplus, nn.Tanh, nn.Sigmoid)


def unguided_activations(model: nn.Module) -> dict[str, int]:
    """Counts of non-rectifier activation modules (GELU, SiLU, ...) by type name: guided
    backprop has no rule for them and passes their gradients unchanged.

    Args:
        model: the model whose modules are counted.
    """
    out: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, SMOOTH_ACTIVATIONS):
            out[type(m).__name__] = out.get(type(m).__name__, 0) + 1
    return out


def guided_note(model: nn.Module) -> str | None:
    """The warning guided backprop owes its user on models with smooth activations, or None.

    Args:
        model: the model guided backprop runs on.
    """
    smooth = unguided_activations(model)
    if not smooth:
        return None
    what = ", ".join(f"{n} {k}" for k, n in sorted(smooth.items()))
    return (f"This model has smooth activations ({what}) that guided backprop has no rule for: only "
            "ReLU-like rectifiers are guided, and through these it passes the ordinary gradient, so where "
            "they dominate the map is close to the vanilla gradient.")



# ------------------------------------------------------------------ registration (saliency table)

def _register() -> None:
    from analysis.core.schema import Param
    from analysis.saliency.registry import MapOutput, as_map, register

    @register("attention_rollout", "Attention rollout",
              "Vision transformers: the attention of every block, plus the residual path, multiplied "
              "through the network; the class token's attention to each patch. Not class-specific "
              "(Abnar & Zuidema 2020).", reference="Abnar & Zuidema 2020",
              params=(Param("head_fusion", "choice", "mean", choices=HEAD_FUSIONS,
                            help="How the heads of a block are combined."),
                      Param("discard_ratio", "float", 0.0, 0.0, 0.99, step=0.05,
                            help="Fraction of the weakest attentions dropped in every block.")))
    def _rollout_map(bundle, x, target, *, progress=None, head_fusion="mean", discard_ratio=0.0) -> MapOutput:
        return MapOutput(map=as_map(attention_rollout(bundle, x, target, head_fusion=head_fusion,
                                                      discard_ratio=discard_ratio)[0, 0]))

    @register("attention_relevance", "Attention relevance",
              "Vision transformers: each block's attention weighted by its gradient for the class (positive "
              "part, mean over heads), accumulated through the blocks; the class token's relevance of each "
              "patch (Chefer, Gur & Wolf 2021).", reference="Chefer, Gur & Wolf 2021")
    def _relevance_map(bundle, x, target, *, progress=None) -> MapOutput:
        return MapOutput(map=as_map(attention_relevance(bundle, x, target)[0, 0]))


_register()
