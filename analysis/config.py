"""Configuration: limits and directories, from one TOML file and environment variables.

Order of precedence (highest first): environment variables ``CONVLENS_<KEY>`` (upper
case), the TOML file named by ``CONVLENS_CONFIG`` (default ``convlens.toml`` in the
working directory, if present), then the defaults below.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .errors import ParameterError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 50 * MiB          # one uploaded image or weights file...
    max_weights_bytes: int = 1024 * MiB       # ...except weights, which may be larger
    max_image_pixels: int = 50_000_000        # refuse larger images before decoding them
    max_image_side: int = 4096                # larger images are downscaled after decoding
    max_dataset_images: int = 100_000
    max_dataset_bytes: int = 2048 * MiB       # total uncompressed size of a zip data set
    max_optimisation_steps: int = 5000
    max_concurrent_jobs: int = 2


@dataclass(frozen=True)
class Config:
    limits: Limits = field(default_factory=Limits)
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("convlens")))
    cache_dir: Path = field(default_factory=lambda: Path(platformdirs.user_cache_dir("convlens")))
    # Server-side folders the operator trusts. Only here may TorchScript / full pickled
    # modules be loaded (they can run code), and image-folder data sets be read from.
    trusted_model_dir: Path | None = None
    dataset_dirs: tuple[Path, ...] = ()
    device: str | None = None                 # "cpu", "cuda", "cuda:1"; None = auto


def _coerce(value, typ):
    if typ is int:
        return int(value)
    return value


def load_config(path: str | os.PathLike | None = None, env: dict | None = None) -> Config:
    env = os.environ if env is None else env
    path = Path(path or env.get("CONVLENS_CONFIG", "convlens.toml"))
    raw: dict = {}
    if path.is_file():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ParameterError(f"Config file {path} is not valid TOML: {e}") from e
    lim_raw = dict(raw.get("limits", {}))
    lim_kwargs = {}
    for f in dataclasses.fields(Limits):
        v = env.get(f"CONVLENS_{f.name.upper()}", lim_raw.get(f.name))
        if v is not None:
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise ParameterError(f"Limit {f.name} must be an integer, got {v!r}") from None
            if v <= 0:
                raise ParameterError(f"Limit {f.name} must be positive, got {v}")
            lim_kwargs[f.name] = v
    unknown = set(lim_raw) - {f.name for f in dataclasses.fields(Limits)}
    if unknown:
        raise ParameterError(f"Unknown limits in {path}: {', '.join(sorted(unknown))}")

    def get(key, default=None):
        return env.get(f"CONVLENS_{key.upper()}", raw.get(key, default))

    kwargs = {"limits": Limits(**lim_kwargs)}
    if get("data_dir"):
        kwargs["data_dir"] = Path(get("data_dir")).expanduser()
    if get("cache_dir"):
        kwargs["cache_dir"] = Path(get("cache_dir")).expanduser()
    if get("trusted_model_dir"):
        kwargs["trusted_model_dir"] = Path(get("trusted_model_dir")).expanduser().resolve()
    ds = get("dataset_dirs")
    if ds:
        items = ds.split(os.pathsep) if isinstance(ds, str) else list(ds)
        kwargs["dataset_dirs"] = tuple(Path(p).expanduser().resolve() for p in items if p)
    if get("device"):
        kwargs["device"] = str(get("device"))
    return Config(**kwargs)


_CONFIG: Config | None = None


def get_config() -> Config:
    """The process-wide configuration (read once)."""
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = load_config()
    return _CONFIG


def set_config(config: Config | None) -> None:
    """Replace the process-wide configuration (tests; None re-reads on next use)."""
    global _CONFIG
    _CONFIG = config
