"""The embedded digits CNN: trained by project code on scikit-learn's digits.

1,797 real 8x8 handwritten digits, upsampled to 32x32 grey. Training is deterministic
(seeded initialisation, shuffling and augmentation; fixed thread count), takes a few
seconds on 2 CPU cores, and the result is cached as safetensors in the user's cache
directory together with its held-out accuracy.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from analysis.core.config import get_config
from analysis.core.fsio import atomic_write
from analysis.core.models.bundle import ModelBundle, Preprocessing

DIGITS_PREPROCESS = Preprocessing(input_size=32, resize_size=32, mean=(0.25,), std=(0.35,),
                                  interpolation="bilinear", grayscale=True)


@dataclass(frozen=True)
class DigitsTrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift: int = 3          # random translation (pixels at 32x32) for augmentation
    test_fraction: float = 0.2
    seed: int = 0
    version: int = 1            # bump when the architecture or training code changes

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class DigitsCNN(nn.Module):
    """conv(16)-pool-conv(32)-pool-conv(64)-conv(64)-GAP-fc(10) on 32x32 grey; named layers."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv1", nn.Conv2d(1, 16, 3, padding=1))
        self.features.add_module("bn1", nn.BatchNorm2d(16))
        self.features.add_module("relu1", nn.ReLU())
        self.features.add_module("pool1", nn.MaxPool2d(2))
        self.features.add_module("conv2", nn.Conv2d(16, 32, 3, padding=1))
        self.features.add_module("bn2", nn.BatchNorm2d(32))
        self.features.add_module("relu2", nn.ReLU())
        self.features.add_module("pool2", nn.MaxPool2d(2))
        self.features.add_module("conv3", nn.Conv2d(32, 64, 3, padding=1))
        self.features.add_module("bn3", nn.BatchNorm2d(64))
        self.features.add_module("relu3", nn.ReLU())
        self.features.add_module("conv4", nn.Conv2d(64, 64, 3, padding=1))
        self.features.add_module("relu4", nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: model-space batch (N, 1, 32, 32) (other sizes work: the pooling is adaptive).

        Returns:
            (N, 10) logits.
        """
        return self.fc(self.avgpool(self.features(x)).flatten(1))


def _shift_batch(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=float(x.min()))
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = (offs[:, 0:1] + torch.arange(h))[:, None, :, None]          # N,1,H,1
    cols = (offs[:, 1:2] + torch.arange(w))[:, None, None, :]          # N,1,1,W
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def digits_tensors():
    """Model inputs (N,1,32,32), labels and the deterministic train/test split."""
    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    x = DIGITS_PREPROCESS([ds.get(i) for i in range(len(ds))])
    y = torch.from_numpy(ds.labels.astype(np.int64))
    return x, y, ds


def train_digits_cnn(config: DigitsTrainConfig = DigitsTrainConfig(), progress=None):
    """Train from scratch; returns (model, info) with held-out ``test_accuracy``.

    ``progress(epoch, epochs, loss)`` is called after each epoch.

    Args:
        config: epochs, batch size, learning rate, weight decay, augmentation shift, test
            fraction and seed.
        progress: the per-epoch callback above, or None.
    """
    from analysis.core.datasets import train_test_split_indices
    x, y, ds = digits_tensors()
    train_idx, test_idx = train_test_split_indices(ds.labels, config.test_fraction, config.seed)
    train_idx, test_idx = torch.from_numpy(np.asarray(train_idx)), torch.from_numpy(np.asarray(test_idx))
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * ((len(train_idx) + config.batch_size - 1) // config.batch_size))
    t0 = time.perf_counter()
    losses = []
    with torch.enable_grad():
        for epoch in range(config.epochs):
            model.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total = 0.0
            for s in range(0, len(perm), config.batch_size):
                idx = perm[s:s + config.batch_size]
                xb = _shift_batch(x[idx], config.max_shift, gen)
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(perm))
            if progress:
                progress(epoch + 1, config.epochs, losses[-1])
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode():
        pred = model(x[test_idx]).argmax(1)
    acc = float((pred == y[test_idx]).float().mean())
    info = {"test_accuracy": acc, "train_seconds": time.perf_counter() - t0, "losses": losses,
            "n_train": len(train_idx), "n_test": len(test_idx), "config": asdict(config)}
    return model, info


_TRAIN_LOCK = threading.Lock()


def digits_weights_path(config: DigitsTrainConfig = DigitsTrainConfig(), cache_dir: Path | None = None) -> Path:
    """Where the trained digits CNN of ``config`` is cached.

    Args:
        config: the training settings (part of the file name).
        cache_dir: the cache root (default the configuration's ``cache_dir``).
    """
    cache_dir = Path(cache_dir or get_config().cache_dir)
    return cache_dir / "models" / f"digits-cnn-{config.key}.safetensors"


def load_digits_model(config: DigitsTrainConfig = DigitsTrainConfig(), cache_dir: Path | None = None,
                      progress=None) -> tuple[DigitsCNN, dict]:
    """The trained digits CNN, from the cache or trained now (then cached atomically).

    Args:
        config: the training settings (part of the cache file name).
        cache_dir: the cache root; None for the configuration's ``cache_dir``.
        progress: ``progress(epoch, epochs, loss)`` while training, or None.
    """
    path = digits_weights_path(config, cache_dir)
    with _TRAIN_LOCK:
        if path.is_file():
            try:
                from safetensors import safe_open
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                model = DigitsCNN()
                model.load_state_dict(load_file(str(path)), strict=True)
                return model.eval(), json.loads(meta.get("info", "{}"))
            except Exception:  # noqa: BLE001 - any unreadable cache entry is retrained, never trusted
                path.unlink(missing_ok=True)
        model, info = train_digits_cnn(config, progress=progress)
        atomic_write(path, save({k: v.contiguous() for k, v in model.state_dict().items()},
                                metadata={"info": json.dumps(info)}))
        return model, info


def digits_bundle(device: torch.device | None = None, cache_dir: Path | None = None, progress=None) -> ModelBundle:
    """The embedded digits CNN as a ModelBundle (trained on first use, then cached).

    Args:
        device: where the model runs (default CPU).
        cache_dir: the weights cache root (default the configuration's ``cache_dir``).
        progress: optional ``progress(done, total)`` callback while training.
    """
    model, info = load_digits_model(cache_dir=cache_dir, progress=progress)
    acc = info.get("test_accuracy")
    return ModelBundle(
        model=model, preprocess=DIGITS_PREPROCESS, categories=[str(i) for i in range(10)],
        name="Digits CNN (embedded)", architecture="DigitsCNN (4 conv, 2 max-pool, GAP, fc)", source="embedded",
        device=device or torch.device("cpu"),
        description=("Small CNN trained by convlens on scikit-learn's digits (8x8 upsampled to 32x32)"
                     + (f"; held-out accuracy {acc:.1%}" if acc is not None else "") + "."))
