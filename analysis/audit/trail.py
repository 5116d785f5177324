"""The audit trail: every computed result, recorded with exactly what produced it.

One row per run (time, user, page, model_id and name, image / data-set hash, layer,
method, target, parameters, seed, summary metrics, the share-link view that shows it) plus
its arrays (``.npy``) and images (``.png``) as files under ``<data_dir>/audit/``. Notes,
findings and a verdict can be added to a run afterwards.

Storage is SQLAlchemy Core: SQLite in the data directory by default (WAL journal,
``synchronous=FULL``: a run whose ``record`` returned survives a crash of the process or
the machine), or any database through a URL (``database_url`` / ``DATABASE_URL``, e.g.
PostgreSQL) with the same code. JSON is stored as text so every backend behaves alike.

Crash safety: a run's files are written first, each atomically (temporary file, fsync,
rename, fsync of the folder), then its row is committed in one transaction. A crash
before the commit leaves at most an orphan folder (no row points to it; ``sweep_orphans``
removes it later); a crash after leaves a complete run. Deleting commits first, then
removes the files.

No Streamlit here: the dashboard builds the context (user, page, view) and calls
``AuditStore.record``; ``summarise`` turns any result object of the analysis modules into
columns, metrics, arrays and images without knowing its type.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import sqlalchemy as sa

from analysis.core.errors import ConvlensError, ParameterError
from analysis.core.fsio import atomic_write, fsync_dir
from analysis.core.images import colormap_rgb
from analysis.core.jsonsafe import NOT_SCALAR, json_scalar

log = logging.getLogger("convlens.audit")

SCHEMA_VERSION = 1
VERDICTS = ("", "confirmed", "needs review", "concern", "rejected")
NOTE_KINDS = ("note", "finding")
MAX_IMAGES = 48                  # per run
MAX_ARRAYS = 64
MAX_PARAM_LIST = 64              # longer lists / arrays go to files, not into params JSON

metadata = sa.MetaData()

runs_table = sa.Table(
    "convlens_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(32), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False, index=True),
    sa.Column("username", sa.String(200), nullable=False, default="", index=True),
    sa.Column("page", sa.String(64), nullable=False, default="", index=True),
    sa.Column("title", sa.String(300), nullable=False, default=""),
    sa.Column("model_id", sa.String(64), nullable=False, default="", index=True),
    sa.Column("model_name", sa.String(300), nullable=False, default=""),
    sa.Column("image_hash", sa.String(64), nullable=False, default="", index=True),
    sa.Column("image_label", sa.String(300), nullable=False, default=""),
    sa.Column("dataset_hash", sa.String(64), nullable=False, default=""),
    sa.Column("dataset_label", sa.String(300), nullable=False, default=""),
    sa.Column("layer", sa.String(300), nullable=False, default=""),
    sa.Column("method", sa.String(100), nullable=False, default=""),
    sa.Column("target", sa.BigInteger, nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("params", sa.Text, nullable=False, default="{}"),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("context", sa.Text, nullable=False, default="{}"),
    sa.Column("view", sa.Text, nullable=False, default="{}"),
    sa.Column("files", sa.Text, nullable=False, default="[]"),
    sa.Column("verdict", sa.String(32), nullable=False, default=""),
    sa.Column("updated", sa.Float, nullable=True),
)

notes_table = sa.Table(
    "convlens_notes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_uid", sa.String(32), sa.ForeignKey("convlens_runs.uid", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("username", sa.String(200), nullable=False, default=""),
    sa.Column("kind", sa.String(16), nullable=False, default="note"),
    sa.Column("text", sa.Text, nullable=False),
)

meta_table = sa.Table(
    "convlens_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_UID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")


class AuditError(ConvlensError):
    """The audit store cannot be opened or a run cannot be found."""


# ====================================================================== JSON helpers

def jsonable(v: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: numpy scalars to numbers, small arrays to lists, dataclasses to
    dicts, NaN/inf to strings, anything else to its ``str``.

    Args:
        v: any value: a result field, a parameter dict, a dataclass, an array.
        depth: recursion depth reached so far; deeper than 8 levels the value becomes its ``str``
            (guards against cyclic or very deep structures). Callers pass 0.
    """
    if depth > 8:
        return str(v)
    if (s := json_scalar(v)) is not NOT_SCALAR:
        return s
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        if v.size <= MAX_PARAM_LIST:
            return jsonable(v.tolist(), depth + 1)
        return f"<array {v.dtype} {'x'.join(map(str, v.shape))}>"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name), depth + 1) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {str(k): jsonable(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x, depth + 1) for x in v]
    if isinstance(v, Path):
        return str(v)
    return str(v)


def dumps(v: Any) -> str:
    """Canonical JSON of ``v`` (made JSON-able, sorted keys, compact).

    Args:
        v: any value ``jsonable`` accepts.
    """
    return json.dumps(jsonable(v), sort_keys=True, separators=(",", ":"))


# ====================================================================== summaries

@dataclass
class Summary:
    """What gets recorded of one result: columns, parameters, metrics, arrays, images."""
    title: str = ""
    method: str = ""
    layer: str = ""
    target: int | None = None
    seed: int | None = None
    seconds: float | None = None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


_SKIP_FIELDS = {"features"}        # feature matrices live in the feature cache (named by its key)
_COLUMNS = ("method", "layer", "target", "seed")


def is_result(obj: Any) -> bool:
    """Results worth recording: analysis dataclasses, or lists / dicts of them.

    Args:
        obj: the value a page computed (what ``run_job`` returned).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return True
    if isinstance(obj, (list, tuple)) and obj:
        return all(is_result(x) for x in obj)
    if isinstance(obj, dict) and obj:
        return all(is_result(x) for x in obj.values())
    return False


def _scalar(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _image_like(a: np.ndarray) -> bool:
    return (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)))
            and min(a.shape[:2]) >= 4)


def _map_like(a: np.ndarray) -> bool:
    """A 2-D float array shaped like a picture (a saliency or activation map)."""
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        return False
    h, w = a.shape
    return 8 <= h <= 4096 and 8 <= w <= 4096 and 0.25 <= h / w <= 4


def heatmap(a: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """A float map as an RGB uint8 picture: signed maps centred on grey (RdBu_r), others
    min-max scaled (inferno).

    Args:
        a: a 2-D float map (NaN and inf are set to 0 before scaling).
        cmap: matplotlib colormap name for unsigned maps; ignored (RdBu_r) when the map holds both
            signs.
    """
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 < hi:
        m = max(abs(lo), abs(hi))
        norm, cmap = (a / m + 1) / 2, "RdBu_r"
    else:
        norm = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return colormap_rgb(norm, cmap)


class _Walker:
    def __init__(self, s: Summary, max_bytes: int):
        self.s, self.max_bytes, self.total = s, max_bytes, 0

    def add_array(self, name: str, a: np.ndarray) -> None:
        s = self.s
        if a.dtype == object:
            return
        if len(s.arrays) >= MAX_ARRAYS or self.total + a.nbytes > self.max_bytes:
            s.skipped.append(f"{name} ({a.nbytes:,} bytes)")
            return
        self.total += a.nbytes
        s.arrays[name] = a
        if a.ndim == 1 and a.size <= 16 and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            s.params.setdefault(name, jsonable(a))          # small vectors are readable in place too
        if len(s.images) < MAX_IMAGES:
            if _image_like(a):
                s.images[name] = a
            elif a.ndim == 4 and a.dtype == np.uint8 and a.shape[-1] in (1, 3):
                for i, im in enumerate(a[: MAX_IMAGES - len(s.images)]):
                    s.images[f"{name}.{i}"] = im
            elif _map_like(a):
                s.images[name] = heatmap(a)

    def walk(self, obj: Any, name: str, depth: int = 0) -> None:
        s = self.s
        if depth > 6:
            return
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            top = depth == 0
            for f in dataclasses.fields(obj):
                if f.name in _SKIP_FIELDS:
                    s.skipped.append(f"{name}{f.name} (cached elsewhere)")
                    continue
                v = getattr(obj, f.name)
                key = f"{name}{f.name}"
                if top and f.name in _COLUMNS and (isinstance(v, str) or _scalar(v)):
                    self.column(f.name, v)
                    continue
                if f.name == "params" and isinstance(v, dict):
                    for k, x in v.items():
                        s.params[f"{name}{k}"] = jsonable(x)
                    if top:
                        for c in _COLUMNS:
                            if c in v and (isinstance(v[c], str) or _scalar(v[c])):
                                self.column(c, v[c], overwrite=False)
                    continue
                if f.name == "seconds" and _scalar(v) and top:
                    s.seconds = float(v)
                self.walk(v, key + "." if _container(v) else key, depth + 1)
            for meth in ("summary",):
                fn = getattr(obj, meth, None)
                if callable(fn):
                    try:
                        out = fn()
                    except Exception:  # noqa: BLE001 - a summary is optional
                        out = None
                    if isinstance(out, dict):
                        for k, v in out.items():
                            if _scalar(v):
                                s.metrics[f"{name}{k}"] = jsonable(v)
            fn = getattr(obj, "as_image", None)
            if callable(fn) and len(s.images) < MAX_IMAGES:
                try:
                    im = np.asarray(fn())
                    if _image_like(im):
                        s.images[f"{name}as_image"] = im
                except Exception:  # noqa: BLE001 - an image view of a result is optional: any failure keeps the record
                    pass
            return
        if isinstance(obj, np.ndarray):
            self.add_array(name, obj)
            return
        if _scalar(obj):
            s.metrics[name] = jsonable(obj)
            return
        if obj is None or isinstance(obj, (str, bool, np.bool_)):
            if isinstance(obj, str) and len(obj) > 500:
                obj = obj[:500] + "…"
            s.params[name] = jsonable(obj)
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                self.walk(v, f"{name}{k}." if _container(v) else f"{name}{k}", depth + 1)
            return
        if isinstance(obj, (list, tuple)):
            if not obj:
                s.params[name] = []
            elif all(_scalar(x) for x in obj):
                if len(obj) <= MAX_PARAM_LIST and not name.endswith(("history",)):
                    s.params[name] = jsonable(obj)
                else:
                    self.add_array(name, np.asarray(obj))
            elif all(isinstance(x, str) for x in obj):
                s.params[name] = list(obj)[:MAX_PARAM_LIST]
            else:
                for i, x in enumerate(obj):
                    self.walk(x, f"{name}.{i}." if _container(x) else f"{name}.{i}", depth + 1)
            return
        # anything else (tensors, modules, callables) is not part of a result record

    def column(self, c: str, v, overwrite: bool = True) -> None:
        s = self.s
        cur = getattr(s, c)
        if cur not in (None, "") and not overwrite:
            return
        if c in ("target", "seed"):
            try:
                setattr(s, c, int(v))
            except (TypeError, ValueError):
                pass
        else:
            setattr(s, c, str(v))


def _container(v) -> bool:
    return (dataclasses.is_dataclass(v) and not isinstance(v, type)) or isinstance(v, dict)


def summarise(result: Any, title: str = "", max_bytes: int = 64 * 1024 * 1024) -> Summary:
    """Columns, parameters, metrics, arrays and images of any analysis result (a dataclass
    or a list / dict of them), found by field names and types: ``method``, ``layer``,
    ``target``, ``seed`` and ``params`` fill the columns; numbers are metrics; numpy arrays
    are stored (up to ``max_bytes`` in all), uint8 pictures and picture-shaped float maps
    also as PNG images; a ``summary()`` method adds metrics and ``as_image()`` an image.

    Args:
        result: the analysis result to summarise.
        title: the run's title; empty takes the method (or the result's type name).
        max_bytes: budget for the stored numpy arrays in all; arrays beyond it are listed in
            ``Summary.skipped`` instead of stored.
    """
    s = Summary(title=title)
    w = _Walker(s, max_bytes)
    if isinstance(result, (list, tuple)):
        for i, r in enumerate(result):
            w.walk(r, f"{i}.")
    elif isinstance(result, dict):
        for k, r in result.items():
            w.walk(r, f"{k}.")
    else:
        w.walk(result, "")
    if not s.method:
        kind = s.params.get("kind")
        s.method = str(kind) if isinstance(kind, str) else (title or type(result).__name__)
    if not s.title:
        s.title = s.method
    return s


# ====================================================================== records

@dataclass
class Note:
    id: int
    created: float
    user: str
    kind: str
    text: str


@dataclass
class RunRecord:
    id: int
    uid: str
    created: float
    user: str
    page: str
    title: str
    model_id: str
    model_name: str
    image_hash: str
    image_label: str
    dataset_hash: str
    dataset_label: str
    layer: str
    method: str
    target: int | None
    seed: int | None
    seconds: float | None
    params: dict
    metrics: dict
    context: dict
    view: dict
    files: list[dict]
    verdict: str
    updated: float | None
    notes: list[Note] = field(default_factory=list)

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.created, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def image_files(self) -> list[str]:
        """The names of the run's stored PNG images (its ``files`` entries of kind ``image``)."""
        return [f["name"] for f in self.files if f.get("kind") == "image"]

    def array_files(self) -> list[str]:
        """The names of the run's stored ``.npy`` arrays (its ``files`` entries of kind ``array``)."""
        return [f["name"] for f in self.files if f.get("kind") == "array"]

    def row(self) -> dict:
        """A flat row for tables."""
        return {"id": self.id, "time": self.when, "user": self.user, "page": self.page, "title": self.title,
                "method": self.method, "layer": self.layer, "target": self.target, "seed": self.seed,
                "model": self.model_name, "image": self.image_label, "verdict": self.verdict,
                "notes": len(self.notes), "uid": self.uid}


def _from_row(r, notes: list[Note] | None = None) -> RunRecord:
    m = r._mapping

    def j(k, default):
        try:
            return json.loads(m[k] or "")
        except ValueError:
            return default
    return RunRecord(id=m["id"], uid=m["uid"], created=m["created"], user=m["username"], page=m["page"],
                     title=m["title"], model_id=m["model_id"], model_name=m["model_name"],
                     image_hash=m["image_hash"], image_label=m["image_label"], dataset_hash=m["dataset_hash"],
                     dataset_label=m["dataset_label"], layer=m["layer"], method=m["method"], target=m["target"],
                     seed=m["seed"], seconds=m["seconds"], params=j("params", {}), metrics=j("metrics", {}),
                     context=j("context", {}), view=j("view", {}), files=j("files", []), verdict=m["verdict"],
                     updated=m["updated"], notes=notes or [])


# ====================================================================== files

def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 image as PNG bytes.

    Args:
        rgb: (H, W, 3) or (H, W) array.
    """
    from PIL import Image
    a = np.asarray(rgb)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickles).

    Args:
        a: a numeric array.
    """
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _safe_name(name: str, taken: set[str]) -> str:
    base = _NAME.sub("_", name).strip("._") or "result"
    base = base[:80]
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


# ====================================================================== the store

@dataclass
class RunInput:
    """What the dashboard knows about a run besides its result."""
    user: str = ""
    page: str = ""
    model_id: str = ""
    model_name: str = ""
    image_hash: str = ""
    image_label: str = ""
    dataset_hash: str = ""
    dataset_label: str = ""
    context: dict = field(default_factory=dict)     # model card, model spec, refs, request
    view: dict = field(default_factory=dict)        # {"page": url_path, "params": {...}}


class AuditStore:
    """The audit database plus its file folder. Thread-safe; several processes may share
    one SQLite file (WAL) or one PostgreSQL database (then ``files_dir`` must be shared)."""

    def __init__(self, url: str, files_dir: str | os.PathLike, *, max_array_bytes: int = 64 * 1024 * 1024):
        self.url = url
        self.files_dir = Path(files_dir)
        self.max_array_bytes = max_array_bytes
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AuditError(f"Cannot use the audit folder {self.files_dir}: {e}") from e
        try:
            if self.is_sqlite:
                db = sa.engine.make_url(url).database
                if db and db != ":memory:":
                    Path(db).parent.mkdir(parents=True, exist_ok=True)
                self.engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            self._create_schema()
        except (sa.exc.SQLAlchemyError, OSError, ImportError) as e:
            first = (str(e).splitlines() or [""])[0][:300]
            raise AuditError(f"Cannot open the audit database ({_redact(url)}): {e.__class__.__name__}: "
                             f"{first}") from e
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ schema

    def _create_schema(self) -> None:
        for attempt in range(5):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                with self.engine.begin() as c:
                    have = c.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema")).scalar()
                    if have is None:
                        c.execute(meta_table.insert().values(key="schema", value=str(SCHEMA_VERSION)))
                    elif int(have) > SCHEMA_VERSION:
                        raise AuditError(f"The audit database has schema {have}, newer than this convlens "
                                         f"({SCHEMA_VERSION}). Upgrade convlens.")
                return
            except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
                # another process is creating the same tables right now
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # ------------------------------------------------------------------ writing

    def run_dir(self, uid: str) -> Path:
        """The folder of one run's files: ``files_dir/<uid[:2]>/<uid>``.

        Args:
            uid: the run's 32-hex-digit uid; anything else raises ``ParameterError`` (so a crafted
                uid cannot point outside ``files_dir``).
        """
        if not _UID.match(uid or ""):
            raise ParameterError("Not a run id.")
        return self.files_dir / uid[:2] / uid

    def record(self, run: RunInput, summary: Summary) -> str:
        """Write the run's files, then commit its row. Returns the run's uid.

        Args:
            run: what the dashboard knows about the run (user, page, model, image, data set, timing).
            summary: the result's summary from ``summarise``: its images are written as PNG, its arrays
                as ``.npy`` (each atomically), its columns, params and metrics go into the row.
        """
        uid = uuid.uuid4().hex
        d = self.run_dir(uid)
        files: list[dict] = []
        taken_png: set[str] = set()
        taken_npy: set[str] = set()
        try:
            d.mkdir(parents=True, exist_ok=False)
            fsync_dir(d.parent)
            for name, a in summary.images.items():
                fn = _safe_name(name, taken_png) + ".png"
                data = png_bytes(a)
                atomic_write(d / fn, data)
                files.append({"name": fn, "kind": "image", "label": name, "bytes": len(data),
                              "shape": list(np.shape(a))})
            for name, a in summary.arrays.items():
                fn = _safe_name(name, taken_npy) + ".npy"
                data = npy_bytes(a)
                atomic_write(d / fn, data)
                files.append({"name": fn, "kind": "array", "label": name, "bytes": len(data),
                              "shape": list(a.shape), "dtype": str(a.dtype)})
            params = dict(summary.params)
            if summary.skipped:
                params["_not_stored"] = summary.skipped
            now = time.time()
            values = dict(
                uid=uid, created=now, username=run.user or "", page=run.page or "", title=summary.title[:300],
                model_id=run.model_id or "", model_name=(run.model_name or "")[:300],
                image_hash=run.image_hash or "", image_label=(run.image_label or "")[:300],
                dataset_hash=run.dataset_hash or "", dataset_label=(run.dataset_label or "")[:300],
                layer=(summary.layer or "")[:300], method=(summary.method or "")[:100], target=summary.target,
                seed=summary.seed, seconds=summary.seconds, params=dumps(params), metrics=dumps(summary.metrics),
                context=dumps(run.context), view=dumps(run.view), files=dumps(files), verdict="", updated=now)
            with self._write_lock, self.engine.begin() as c:
                c.execute(runs_table.insert().values(**values))
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return uid

    def update_view(self, uids: Sequence[str], view: dict) -> None:
        """Replace the display settings (``view`` column) of runs, e.g. after the user changed a
        colormap; the computation itself is not touched. No-op for an empty ``uids``.

        Args:
            uids: the runs' uids.
            view: the JSON-able display settings to store.
        """
        if not uids:
            return
        with self._write_lock, self.engine.begin() as c:
            c.execute(runs_table.update().where(runs_table.c.uid.in_(list(uids)))
                      .values(view=dumps(view), updated=time.time()))

    def set_verdict(self, uid: str, verdict: str) -> None:
        """Set a run's review verdict.

        Args:
            uid: the run's uid.
            verdict: one of ``VERDICTS`` ("" clears it); anything else raises ``ParameterError``.

        Raises:
            AuditError: no run has this uid.
        """
        if verdict not in VERDICTS:
            raise ParameterError(f"Verdict must be one of {', '.join(v or '(none)' for v in VERDICTS)}.")
        with self._write_lock, self.engine.begin() as c:
            n = c.execute(runs_table.update().where(runs_table.c.uid == uid)
                          .values(verdict=verdict, updated=time.time())).rowcount
        if not n:
            raise AuditError("This run is not in the audit trail (it may have been deleted).")

    def add_note(self, uid: str, user: str, text: str, kind: str = "note") -> None:
        """Attach a note or a finding to a run.

        Args:
            uid: the run's uid; an unknown one raises ``AuditError``.
            user: who writes the note ("" for anonymous).
            text: the note; stripped, empty raises ``ParameterError``, cut at 20,000 characters.
            kind: one of ``NOTE_KINDS`` ("note" or "finding").
        """
        text = (text or "").strip()
        if not text:
            raise ParameterError("The note is empty.")
        if kind not in NOTE_KINDS:
            raise ParameterError(f"Note kind must be one of {', '.join(NOTE_KINDS)}.")
        with self._write_lock, self.engine.begin() as c:
            if c.execute(sa.select(runs_table.c.id).where(runs_table.c.uid == uid)).first() is None:
                raise AuditError("This run is not in the audit trail (it may have been deleted).")
            c.execute(notes_table.insert().values(run_uid=uid, created=time.time(), username=user or "",
                                                  kind=kind, text=text[:20_000]))
            c.execute(runs_table.update().where(runs_table.c.uid == uid).values(updated=time.time()))

    def delete(self, uids: Iterable[str]) -> int:
        """Delete runs, their notes and files. Returns how many runs were deleted.

        Args:
            uids: the runs' uids; strings that are not run uids are ignored.
        """
        uids = [u for u in uids if _UID.match(u or "")]
        if not uids:
            return 0
        with self._write_lock, self.engine.begin() as c:
            c.execute(notes_table.delete().where(notes_table.c.run_uid.in_(uids)))
            n = c.execute(runs_table.delete().where(runs_table.c.uid.in_(uids))).rowcount
        for u in uids:
            shutil.rmtree(self.run_dir(u), ignore_errors=True)
        return n

    # ------------------------------------------------------------------ reading

    def get(self, uid: str) -> RunRecord:
        """One run with its notes.

        Args:
            uid: the run's uid; a malformed one raises ``ParameterError``.

        Raises:
            AuditError: no run has this uid (e.g. it was deleted).
        """
        if not _UID.match(uid or ""):
            raise ParameterError("Not a run id.")
        with self.engine.connect() as c:
            r = c.execute(sa.select(runs_table).where(runs_table.c.uid == uid)).first()
            if r is None:
                raise AuditError("This run is not in the audit trail (it may have been deleted).")
            notes = self._notes(c, [uid]).get(uid, [])
        return _from_row(r, notes)

    def _notes(self, c, uids: list[str]) -> dict[str, list[Note]]:
        out: dict[str, list[Note]] = {}
        for i in range(0, len(uids), 500):
            rows = c.execute(sa.select(notes_table).where(notes_table.c.run_uid.in_(uids[i:i + 500]))
                             .order_by(notes_table.c.created, notes_table.c.id))
            for n in rows:
                m = n._mapping
                out.setdefault(m["run_uid"], []).append(Note(m["id"], m["created"], m["username"], m["kind"],
                                                             m["text"]))
        return out

    def list_runs(self, *, user: str | None = None, pages: Sequence[str] | None = None, text: str = "",
                  verdicts: Sequence[str] | None = None, model_id: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 200,
                  offset: int = 0) -> list[RunRecord]:
        """Runs, newest first. ``user`` None = everyone's; ``text`` matches title, method,
        layer, model, image and notes (case-insensitive).

        Args:
            user: only this user's runs; None for everyone's.
            pages: only runs from these page names; None or empty for all pages.
            text: case-insensitive substring searched in the columns and the notes; blank for no filter.
            verdicts: only runs with one of these verdicts ("" is "no verdict"); None or empty for all.
            model_id: only runs of this model id; None or "" for all.
            since: earliest creation time (Unix seconds, inclusive); None for no bound.
            until: latest creation time (Unix seconds, inclusive); None for no bound.
            limit: at most this many runs.
            offset: skip this many runs first (paging).
        """
        q = sa.select(runs_table)
        if user is not None:
            q = q.where(runs_table.c.username == user)
        if pages:
            q = q.where(runs_table.c.page.in_(list(pages)))
        if verdicts:
            q = q.where(runs_table.c.verdict.in_(list(verdicts)))
        if model_id:
            q = q.where(runs_table.c.model_id == model_id)
        if since is not None:
            q = q.where(runs_table.c.created >= since)
        if until is not None:
            q = q.where(runs_table.c.created <= until)
        if text.strip():
            like = f"%{text.strip().lower()}%"
            cols = [runs_table.c.title, runs_table.c.method, runs_table.c.layer, runs_table.c.model_name,
                    runs_table.c.image_label, runs_table.c.page, runs_table.c.username]
            in_notes = sa.select(notes_table.c.run_uid).where(sa.func.lower(notes_table.c.text).like(like))
            q = q.where(sa.or_(*[sa.func.lower(c).like(like) for c in cols], runs_table.c.uid.in_(in_notes)))
        q = q.order_by(runs_table.c.created.desc(), runs_table.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as c:
            rows = c.execute(q).fetchall()
            notes = self._notes(c, [r._mapping["uid"] for r in rows])
        return [_from_row(r, notes.get(r._mapping["uid"], [])) for r in rows]

    def count(self) -> int:
        """How many runs the trail holds (all users)."""
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar() or 0)

    def users(self) -> list[str]:
        """The distinct user names that recorded runs, sorted ("" for anonymous runs)."""
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(sa.select(runs_table.c.username).distinct().order_by(runs_table.c.username))]

    def file_path(self, uid: str, name: str) -> Path:
        """The path of one stored file of a run.

        Args:
            uid: the run's uid (checked as in ``run_dir``).
            name: the file's name as listed in the run's ``files``; a name with a path separator or a
                leading dot raises ``ParameterError``.
        """
        if "/" in name or "\\" in name or name.startswith("."):
            raise ParameterError("Bad file name.")
        return self.run_dir(uid) / name

    def read_file(self, uid: str, name: str) -> bytes:
        """The bytes of one stored file of a run.

        Args:
            uid: the run's uid.
            name: the file's name as listed in the run's ``files``.

        Raises:
            AuditError: the file is missing on disk.
        """
        try:
            return self.file_path(uid, name).read_bytes()
        except OSError as e:
            raise AuditError(f"The file {name} of this run is missing ({e.strerror}).") from e

    def load_array(self, uid: str, name: str) -> np.ndarray:
        """One stored ``.npy`` array of a run, loaded without pickle.

        Args:
            uid: the run's uid.
            name: the ``.npy`` file's name as listed in the run's ``files``.
        """
        return np.load(io.BytesIO(self.read_file(uid, name)), allow_pickle=False)

    # ------------------------------------------------------------------ export

    def export_zip(self, uids: Sequence[str]) -> bytes:
        """The raw arrays (``.npy``), images and a ``run.json`` of each run, one folder per run.

        Args:
            uids: the runs to export, in this order; a missing file is replaced by a
                ``MISSING-<name>.txt`` note in the zip.
        """
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for uid in uids:
                r = self.get(uid)
                folder = f"run-{r.id:05d}-{_NAME.sub('_', r.page or 'run')}-{_NAME.sub('_', r.method)[:40]}"
                meta = {k: v for k, v in dataclasses.asdict(r).items()}
                z.writestr(f"{folder}/run.json", json.dumps(jsonable(meta), indent=2, sort_keys=True))
                for f in r.files:
                    try:
                        z.writestr(f"{folder}/{f['name']}", self.read_file(uid, f["name"]))
                    except AuditError as e:
                        z.writestr(f"{folder}/MISSING-{f['name']}.txt", str(e))
        return buf.getvalue()

    # ------------------------------------------------------------------ health

    def integrity(self) -> dict:
        """Database integrity (SQLite: ``PRAGMA integrity_check``) and the files of every run."""
        out: dict[str, Any] = {"database": "ok", "runs": 0, "missing_files": []}
        with self.engine.connect() as c:
            if self.is_sqlite:
                res = [r[0] for r in c.execute(sa.text("PRAGMA integrity_check"))]
                out["database"] = "ok" if res == ["ok"] else "; ".join(res)
            rows = c.execute(sa.select(runs_table.c.uid, runs_table.c.files)).fetchall()
        out["runs"] = len(rows)
        for uid, files in rows:
            for f in json.loads(files or "[]"):
                p = self.run_dir(uid) / f["name"]
                if not p.is_file() or p.stat().st_size != f.get("bytes", p.stat().st_size):
                    out["missing_files"].append(f"{uid}/{f['name']}")
        out["ok"] = out["database"] == "ok" and not out["missing_files"]
        return out

    def sweep_orphans(self, older_than: float = 3600.0) -> int:
        """Remove file folders with no run row (a crash between files and commit), older
        than ``older_than`` seconds (younger ones may belong to a run being recorded)."""
        with self.engine.connect() as c:
            known = {r[0] for r in c.execute(sa.select(runs_table.c.uid))}
        n, now = 0, time.time()
        for shard in self.files_dir.iterdir() if self.files_dir.is_dir() else []:
            if not shard.is_dir():
                continue
            for d in shard.iterdir():
                if _UID.match(d.name) and d.name not in known and now - d.stat().st_mtime > older_than:
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
        return n

    def sweep_at_startup(self, started: float | None = None) -> int:
        """Remove the orphan folders left by a crash before this process started (folders
        last written more than SWEEP_GRACE_S before ``started``, default: when this module
        was imported). Folders written since may belong to a run that another server
        process sharing the store is recording, and are left alone. Returns how many."""
        started = PROCESS_START if started is None else started
        return self.sweep_orphans(older_than=max(0.0, time.time() - started + SWEEP_GRACE_S))

    def close(self) -> None:
        """Dispose of the database engine's connection pool."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _redact(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is still never logged
        return "<database url>"


PROCESS_START = time.time()     # this server process's start (module import), for sweep_at_startup
SWEEP_GRACE_S = 30.0

_stores: dict[tuple, AuditStore] = {}
_stores_lock = threading.Lock()


def open_store(config=None) -> AuditStore:
    """The process-wide store for the configuration (one engine per URL). The first open in
    a process sweeps the orphan folders a crash left behind (``sweep_at_startup``).

    Args:
        config: the configuration (default: ``get_config()``).
    """
    from analysis.core.config import get_config
    cfg = config or get_config()
    key = (cfg.audit_url, str(cfg.data_dir))
    with _stores_lock:
        s = _stores.get(key)
        if s is None:
            s = _stores[key] = AuditStore(cfg.audit_url, Path(cfg.data_dir) / "audit",
                                          max_array_bytes=cfg.limits.max_audit_array_bytes)
            try:
                n = s.sweep_at_startup()
                if n:
                    log.info("audit: removed %d orphan run folder(s) left by an interrupted run", n)
            except Exception:
                log.exception("audit: could not sweep orphan run folders")
        return s
