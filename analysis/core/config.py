"""Configuration: limits and directories, from one TOML file and environment variables.

Order of precedence (highest first): environment variables ``CONVLENS_<KEY>`` (upper
case), the TOML file named by ``CONVLENS_CONFIG`` (default ``convlens.toml`` in the
working directory, if present), then the defaults below.

Sections of the file besides the top-level keys: ``[limits]`` (see ``Limits``),
``[auth]`` (``mode`` = none | password | oidc, ``provider``, ``[auth.users]`` name =
password hash from ``python -m analysis.audit.passwords``) and ``[audit]`` (``enabled``,
``visibility`` = own | all). The audit database is ``database_url`` (or the standard
``DATABASE_URL`` variable); by default SQLite in ``data_dir``. Data-set jobs run on
``engine`` = local | ray, Ray at ``ray_address`` (else ``RAY_ADDRESS``; none = an embedded
single-node Ray) through ``ray_pipeline`` = data (Ray Data, default) | pool (warm actors),
see docs/dataset.md.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from analysis.core.errors import ParameterError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 50 * MiB          # one uploaded image or weights file...
    max_weights_bytes: int = 1024 * MiB       # ...except weights, which may be larger
    max_image_pixels: int = 50_000_000        # refuse larger images before decoding them
    max_image_side: int = 4096                # larger images are downscaled after decoding
    max_dataset_images: int = 100_000
    max_manifest_images: int = 10_000_000     # rows of a manifest data set (images are read lazily)
    max_dataset_bytes: int = 2048 * MiB       # total uncompressed size of a zip data set
    max_optimisation_steps: int = 5000
    max_concurrent_jobs: int = 2              # heavy jobs running at once per device; others queue
    max_queue_seconds: int = 900              # a queued job gives up (with a message) after this
    max_audit_array_bytes: int = 64 * MiB     # larger result arrays are summarised, not stored


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
    # Shared deployments: login, the audit trail and its database.
    auth_mode: str = "none"                   # "none" | "password" | "oidc"
    auth_provider: str | None = None          # oidc: the [auth.<provider>] of secrets.toml; None = [auth]
    users: tuple[tuple[str, str], ...] = ()   # password mode: (name, pbkdf2 hash) pairs
    database_url: str | None = None           # SQLAlchemy URL; None = sqlite in data_dir
    audit_enabled: bool = True
    audit_visibility: str = "own"             # "own": the Audit page lists your runs; "all": everyone's
    # Data-set jobs (analysis/dataset): in-process, or on Ray Data (an existing cluster at
    # ray_address / RAY_ADDRESS, else an embedded single-node Ray started on first use).
    engine: str = "local"                     # "local" | "ray"
    ray_address: str | None = None
    # "data": Ray Data map_batches (CPUs: tasks in worker processes that keep the model between
    # jobs; GPUs: an actor pool per job); "pool": warm actors kept between jobs
    ray_pipeline: str = "data"

    @property
    def audit_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'audit.sqlite'}"


AUTH_MODES = ("none", "password", "oidc")
ENGINES = ("local", "ray")
RAY_PIPELINES = ("data", "pool")
VISIBILITIES = ("own", "all")


def _bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ParameterError(f"{name} must be true or false, got {value!r}")


def _users(value, name: str) -> tuple[tuple[str, str], ...]:
    """``{name: hash}`` from the file, or ``"alice:hash,bob:hash"`` from the environment."""
    if isinstance(value, str):
        pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ParameterError(f"{name} must be 'name:hash,name:hash'")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ParameterError(f"{name} must map user names to password hashes")
    return tuple(sorted(value.items()))


def load_config(path: str | os.PathLike | None = None, env: dict | None = None) -> Config:
    """Read the configuration: defaults, then the TOML file, then CONVLENS_* environment variables.

    Args:
        path: the TOML file (default ``$CONVLENS_CONFIG`` or ``convlens.toml``; a missing file is fine).
        env: the environment to read (default ``os.environ``).
    """
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

    engine = str(get("engine", "local")).strip().lower()
    if engine not in ENGINES:
        raise ParameterError(f"engine must be 'local' or 'ray', got {engine!r}")
    kwargs["engine"] = engine
    pipeline = str(get("ray_pipeline", "data")).strip().lower()
    if pipeline not in RAY_PIPELINES:
        raise ParameterError(f"ray_pipeline must be 'data' or 'pool', got {pipeline!r}")
    kwargs["ray_pipeline"] = pipeline
    address = get("ray_address") or env.get("RAY_ADDRESS")
    if address:
        kwargs["ray_address"] = str(address)

    auth = raw.get("auth", {})
    audit = raw.get("audit", {})
    if not isinstance(auth, dict) or not isinstance(audit, dict):
        raise ParameterError(f"[auth] and [audit] in {path} must be tables")
    mode = str(env.get("CONVLENS_AUTH_MODE", auth.get("mode", "none"))).strip().lower()
    if mode not in AUTH_MODES:
        raise ParameterError(f"auth mode must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    kwargs["auth_mode"] = mode
    provider = env.get("CONVLENS_AUTH_PROVIDER", auth.get("provider"))
    if provider:
        kwargs["auth_provider"] = str(provider)
    users = env.get("CONVLENS_AUTH_USERS", auth.get("users"))
    if users:
        kwargs["users"] = _users(users, "auth users")
    if mode == "password" and not kwargs.get("users"):
        raise ParameterError("auth mode 'password' needs users: add [auth.users] name = \"<hash>\" "
                             "(hashes from: python -m analysis.audit.passwords)")
    url = env.get("CONVLENS_DATABASE_URL") or env.get("DATABASE_URL") or raw.get("database_url")
    if url:
        kwargs["database_url"] = str(url)
    enabled = env.get("CONVLENS_AUDIT_ENABLED", audit.get("enabled"))
    if enabled is not None:
        kwargs["audit_enabled"] = _bool(enabled, "audit enabled")
    vis = str(env.get("CONVLENS_AUDIT_VISIBILITY", audit.get("visibility", "own"))).strip().lower()
    if vis not in VISIBILITIES:
        raise ParameterError(f"audit visibility must be 'own' or 'all', got {vis!r}")
    kwargs["audit_visibility"] = vis
    return Config(**kwargs)


_CONFIG: Config | None = None


def get_config() -> Config:
    """The process-wide configuration (read once)."""
    global _CONFIG
    if _CONFIG is None:
        _CONFIG = load_config()
    return _CONFIG


def set_config(config: Config | None) -> None:
    """Replace the process-wide configuration (tests; None re-reads on next use).

    Args:
        config: the configuration to use from now on, or None.
    """
    global _CONFIG
    _CONFIG = config
