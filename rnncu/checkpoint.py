"""Checkpoints: one ``.npz`` of plain arrays plus a JSON metadata string, no pickle.

Layout of ``checkpoint.npz`` (``np.load(path, allow_pickle=False)`` reads it):

* ``__rnncu_meta__``: a 0-d unicode array holding JSON: ``{"format": "rnncu-checkpoint",
  "version": 1, ...}`` plus whatever the writer adds (config, epoch, history). Standard JSON
  only: NaN and infinity are refused when writing (other readers reject them), NumPy scalars
  are stored as plain numbers;
* every other entry is a named array (``model.rnn.weight_ih_l0``, ``optim.exp_avg.0.bias``,
  ...).

Writes are atomic: the file is written to a temporary name in the same directory, flushed
and fsynced, then renamed over the target with ``os.replace``, so a crash or a failed write
leaves the previous checkpoint intact, never a half file. Every problem reading one (missing,
truncated or corrupt, foreign, wrong version, missing entries, wrong shapes) raises
:class:`CheckpointError` with a one-line message naming the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "RunDirectoryInUse",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_arrays",
    "check_out_dir",
    "load_checkpoint",
    "resolve_checkpoint",
    "run_directory",
    "save_checkpoint",
]

FORMAT = "rnncu-checkpoint"
VERSION = 1
META_KEY = "__rnncu_meta__"
#: metadata keys that save_checkpoint writes itself; a caller's value would make the file lie
RESERVED_META = ("format", "version")
CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(Exception):
    """A checkpoint cannot be read or does not fit; the message is one line."""


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), so optional.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    # Linux reports it without changing it; os.umask can only be read by setting it, which
    # for an instant would affect files other threads create.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: a temporary file this much older than a new write of the same target is a leftover of a
#: killed writer (a checkpoint's write takes seconds), removed by that write
STALE_TEMP_SECONDS = 600.0


#: the longest target name (in UTF-8 bytes) a temporary file's name repeats whole: with
#: ``.{name}.XXXXXXXX.tmp`` around it, a name near the 255-byte limit would go past it
TEMP_NAME_BYTES = 200


def _temp_prefix(path: Path) -> str:
    """``.{name}.``, or for a longer name its first bytes and a digest of the whole (a
    prefix of its own: another target's temporaries never match it)."""
    encoded = os.fsencode(path.name)
    if len(encoded) <= TEMP_NAME_BYTES:
        return f".{path.name}."
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    # a cut through a character drops its bytes (a readable prefix is all this is for)
    head = encoded[: TEMP_NAME_BYTES - 16].decode("utf-8", errors="ignore")
    return f".{head}~{digest}."


def _remove_stale_temps(path: Path, keep: str) -> None:
    now = time.time()
    for temp in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        try:
            if temp.name != keep and now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()
        except OSError:
            pass  # another process's, or gone already: not this write's concern


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it over
    ``path``. On any exception the temporary file is removed and ``path`` is untouched; an
    OSError (permissions, a full disk) names ``path``, not the temporary file. A symbolic
    link at ``path`` is replaced by the new file and its target left as it was: a write never
    changes a file outside ``path``'s directory (a shared, read-only checkpoint linked into a
    run directory to resume from stays intact), nor fails on a target's read-only disk."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"path: expected a file to write, got {str(path)!r}")
    prefix = _temp_prefix(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path, prefix) from exc
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 & ~umask)
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path, prefix) from exc
        raise
    _fsync_dir(path.parent)
    _remove_stale_temps(path, keep=os.path.basename(tmp_name))


def _naming(exc: OSError, path: Path, temp_prefix: str) -> OSError:
    """``exc`` naming ``path`` (the file the caller asked for) where it named the temporary
    file or nothing; an error about another path (a parent that is a file) keeps it."""
    named = exc.filename
    if named is not None and not os.path.basename(str(named)).startswith(temp_prefix):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, str(path))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    _atomic_write(_as_path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode("utf-8"))


def _as_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or path, got {type(path).__name__}")
    if path == "":
        raise ValueError("path: expected a file to write, got ''")
    return Path(path)


def check_out_dir(name: str, directory: str | os.PathLike[str]) -> None:
    """A ValueError naming ``name`` where ``directory`` cannot become a directory: it, or the
    nearest existing path above it, is a file. Checked before a run's work, which would
    otherwise fail at its first write."""
    path = Path(directory)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise ValueError(f"{name}: {existing} is a file, not a directory")
            return


class RunDirectoryInUse(RuntimeError):
    """Another process, or another thread of this one, is writing a run into the directory;
    the message is one line."""


#: run directories this process holds, by (device, inode): the holding thread and how many
#: holds it has there
_held_run_directories: dict[tuple[int, int], tuple[int, int]] = {}
_held_run_directories_lock = threading.Lock()


@contextmanager
def run_directory(directory: str | os.PathLike[str], name: str) -> Iterator[Path]:
    """Hold ``directory`` for one run while the block runs: made first where missing, and
    removed again at the end, with the parents made for it, where the block leaves them
    empty (a run that failed before writing, or a resumed run with nothing left to train).
    Another process, or another thread of this one, holding it raises
    :class:`RunDirectoryInUse` naming ``name`` at once, for two runs writing into one
    directory would leave one's config beside the other's checkpoint; a refused hold
    removes nothing, for the run holding the directory may have made it at the same moment.
    Within a thread the hold nests (the CLI holds ``--out`` before the trainer does).

    The hold is an advisory ``flock`` on the directory itself: no lock file to clean up, and
    the system releases it when the process dies, even by SIGKILL. Where ``flock`` is not
    available (Windows) or the file system refuses it (some network mounts), only the
    threads of one process are kept apart."""
    path = Path(directory)
    check_out_dir(name, path)
    made = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    with _held(path, name):
        try:
            yield path
        finally:
            # removed while still held: no other run can have taken the directory yet
            for created in made:  # the deepest first
                try:
                    created.rmdir()
                except OSError:  # not empty (the block wrote there), or gone
                    break


def _in_use(name: str, path: Path, who: str) -> RunDirectoryInUse:
    return RunDirectoryInUse(
        f"{name}: {who} into {path}; wait for it to end, or give another directory"
    )


@contextmanager
def _held(path: Path, name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock, and a directory cannot be opened with os.open
        fcntl = None  # type: ignore[assignment]
    descriptor = None if fcntl is None else os.open(path, os.O_RDONLY)
    try:
        status = os.stat(path) if descriptor is None else os.fstat(descriptor)
        key = (status.st_dev, status.st_ino)
        me = threading.get_ident()
        with _held_run_directories_lock:
            owner, holds = _held_run_directories.get(key, (me, 0))
            if owner != me:
                raise _in_use(name, path, "another thread of this process is writing a run")
            if not holds and descriptor is not None:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _in_use(name, path, "another rnncu run is writing") from None
                except OSError:  # a file system without flock: other processes unguarded
                    pass
            _held_run_directories[key] = (me, holds + 1)
        try:
            yield
        finally:
            with _held_run_directories_lock:
                owner, holds = _held_run_directories[key]
                if holds > 1:
                    _held_run_directories[key] = (owner, holds - 1)
                else:
                    del _held_run_directories[key]
    finally:
        if descriptor is not None:
            os.close(descriptor)  # the outermost holder's close releases the flock


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run directory -> its ``checkpoint.npz``; a file path -> itself. A string that ends
    in a separator (``"runs/exp1/"``) names a directory even before it exists (``Path``
    drops the separator, and the run would have been written to a file named ``runs/exp1``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint path: expected a file or run directory (str or path), got {path!r}"
        )
    if path == "":
        raise ValueError("checkpoint path: expected a file or run directory, got ''")
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    is_dir = isinstance(path, str) and path.endswith(separators)
    path = Path(path)
    is_dir = is_dir or path.is_dir()
    return path / CHECKPOINT_NAME if is_dir else path


def _plain_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON types. NumPy scalars and 0-d arrays become Python numbers;
    NaN, infinity and what JSON cannot hold raise an error naming the key path ``where``
    (``json.dumps`` would write NaN as non-standard JSON, or fail without naming the key)."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"checkpoint metadata {where}: {value} is not finite (JSON has no NaN or inf)"
            )
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint metadata {where or '{}'}: key {key!r} is not a str")
            out[key] = _plain_json(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        raise TypeError(
            f"checkpoint metadata {where}: a NumPy array of shape {value.shape} (save arrays as "
            "checkpoint arrays, or convert it with .tolist())"
        )
    raise TypeError(f"checkpoint metadata {where}: {type(value).__name__} is not JSON")


def save_checkpoint(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write ``arrays`` (name -> host array) and ``meta`` (JSON-serialisable: str keys, finite
    numbers; NumPy scalars are converted) atomically to ``path`` (a directory gets
    ``checkpoint.npz``). Returns the file written. ``meta`` may not set the reserved keys
    ``format`` and ``version``."""
    target = resolve_checkpoint(path)
    if not isinstance(arrays, Mapping):
        raise TypeError(f"checkpoint arrays: expected a mapping, got {type(arrays).__name__}")
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    if not isinstance(meta, Mapping):
        raise TypeError(f"checkpoint metadata: expected a mapping, got {type(meta).__name__}")
    reserved = [key for key in RESERVED_META if key in meta]
    if reserved:
        raise ValueError(
            f"checkpoint metadata key {reserved[0]!r} is reserved (save_checkpoint writes "
            f"{', '.join(RESERVED_META)} itself)"
        )
    full_meta = {"format": FORMAT, "version": VERSION, **_plain_json(meta, "")}
    payload: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"checkpoint array name {name!r} is not a str")
        if name.endswith(".npy"):
            # stored as "<name>.npy": reading back, "x.npy" would find the member of "x"
            raise ValueError(f"checkpoint array name {name!r}: names may not end in '.npy'")
        try:
            payload[name] = value = np.asarray(value)
        except ValueError as exc:  # a ragged list
            raise ValueError(f"checkpoint array {name!r}: {exc}") from None
        if value.dtype == object:
            raise ValueError(f"checkpoint array {name!r} has dtype object (pickle is not used)")
    payload[META_KEY] = np.array(json.dumps(full_meta, sort_keys=True, allow_nan=False))
    _atomic_write(target, lambda fh: _write_npz(fh, payload))
    return target


def _write_npz(fileobj: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """The layout ``np.savez`` writes (one stored ``<name>.npy`` per array), without passing
    names as keywords: ``np.savez(f, **arrays)`` takes an array named ``allow_pickle`` as its
    flag (the array is silently lost) and refuses one named ``file``."""
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


class _NonFiniteInMeta(Exception):
    """NaN or an infinity in a checkpoint's metadata."""


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteInMeta(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is valid JSON and reads as infinity
        raise _NonFiniteInMeta(text)
    return value


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, meta)``.

    Raises CheckpointError (one line) for a missing file, a truncated or corrupt zip, an
    ``.npz`` that is not an rnncu checkpoint, or an unsupported format version.
    """
    file = resolve_checkpoint(path)
    if not file.exists():
        where = f"{path} (looked for {file})" if file != Path(path) else str(file)
        raise CheckpointError(f"checkpoint not found: {where}")
    try:
        with open(file, "rb"):  # is_zipfile below would take an unreadable file for corrupt
            pass
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read checkpoint ({exc.strerror or exc})") from None
    if not zipfile.is_zipfile(file):
        # np.load would take any other bytes for a pickle and say so, which misleads
        raise CheckpointError(
            f"{file}: cannot read checkpoint: not an rnncu checkpoint (not a complete .npz "
            "archive: truncated or corrupt, or another kind of file)"
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            names = list(npz.files)
            if META_KEY not in names:
                raise CheckpointError(
                    f"{file}: not an rnncu checkpoint (no {META_KEY} entry; a foreign .npz?)"
                )
            arrays = {}
            for name in names:
                try:
                    value = npz[name]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    # NumPy's message suggests allow_pickle=True, which would run the file's code
                    raise CheckpointError(
                        f"{file}: entry {name!r} holds Python objects (refused: loading it "
                        "would unpickle; rnncu writes plain arrays only)"
                    ) from None
                if not isinstance(value, np.ndarray):
                    # a member without the .npy header comes back as its raw bytes
                    raise CheckpointError(
                        f"{file}: entry {name!r} is not an array (truncated or corrupt)"
                    )
                arrays[name] = value
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        # np.load of a non-zip raises ValueError/OSError ("cannot load file"), a truncated
        # zip BadZipFile or EOFError, a damaged member ValueError ("cannot reshape") or
        # zlib errors (which are also raised as BadZipFile/OSError/ValueError).
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{file}: cannot read checkpoint (truncated or corrupt: {detail})"
        ) from None
    except Exception as exc:  # zlib.error and friends: still a damaged file
        raise CheckpointError(
            f"{file}: cannot read checkpoint (truncated or corrupt: {type(exc).__name__})"
        ) from None
    meta_array = arrays.pop(META_KEY)
    try:
        meta = json.loads(
            str(meta_array[()]), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except _NonFiniteInMeta as exc:
        # save_checkpoint never writes them (allow_nan=False); json.loads would take them
        raise CheckpointError(
            f"{file}: metadata holds {exc.args[0]}, which is not standard JSON (a hand-edited "
            "or foreign file)"
        ) from None
    except (ValueError, TypeError, IndexError):
        raise CheckpointError(f"{file}: metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not an rnncu checkpoint (format {meta.get('format')!r})"
            if isinstance(meta, dict)
            else f"{file}: not an rnncu checkpoint"
        )
    version = meta.get("version")
    if version != VERSION or isinstance(version, bool):
        kind = f" (a {type(version).__name__}, not an integer)" if version == str(VERSION) else ""
        raise CheckpointError(
            f"{file}: checkpoint format version {version!r}{kind} is not supported "
            f"(this rnncu reads version {VERSION})"
        )
    return arrays, meta


def check_arrays(
    file: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    prefix: str = "",
    dtype: Any = None,
) -> dict[str, np.ndarray]:
    """The entries of ``arrays`` named ``prefix + name`` for every ``name`` of ``expected``
    (name -> shape), without the prefix. A missing entry, an entry under a non-empty
    ``prefix`` that the model does not have, a shape mismatch, a dtype that is not floating
    (or not ``dtype``, when given) or NaN/infinite values (weights saved from a diverged run
    would only give NaN metrics) raise CheckpointError naming the first offender."""
    out = {}
    for name, shape in expected.items():
        key = prefix + name
        if key not in arrays:
            raise CheckpointError(f"{file}: missing entry {key!r} (not from this model?)")
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{file}: entry {key!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(shape)}"
            )
        if value.dtype.kind != "f":
            raise CheckpointError(f"{file}: entry {key!r} has dtype {value.dtype}, not floating")
        if dtype is not None and value.dtype != np.dtype(dtype):
            raise CheckpointError(
                f"{file}: entry {key!r} has dtype {value.dtype}, the model's is {np.dtype(dtype)}"
            )
        if not np.isfinite(value).all():
            raise CheckpointError(
                f"{file}: entry {key!r} holds NaN or infinite values (saved from a diverged run?)"
            )
        out[name] = value
    if prefix:
        extra = sorted(
            k for k in arrays if k.startswith(prefix) and k[len(prefix) :] not in expected
        )
        if extra:
            raise CheckpointError(f"{file}: unexpected entry {extra[0]!r} (not from this model?)")
    return out
