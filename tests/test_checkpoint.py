"""Checkpoints: round trip without pickle, atomic writes, one-line errors for missing,
truncated and foreign files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from zip_members import rewrite_member

from rnncu import checkpoint as ckpt
from rnncu.checkpoint import CheckpointError, check_arrays, load_checkpoint, save_checkpoint


def arrays() -> dict[str, np.ndarray]:
    return {
        "model.rnn.w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "optim.step": np.asarray(3, dtype=np.int64),
    }


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_round_trip_without_pickle(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.npz", arrays(), {"epoch": 2, "note": "é"})
    with np.load(path, allow_pickle=False) as npz:  # readable by plain NumPy, no pickle
        assert set(npz.files) == {"model.rnn.w", "optim.step", "__rnncu_meta__"}
        meta = json.loads(str(npz["__rnncu_meta__"]))
    assert meta["format"] == "rnncu-checkpoint" and meta["version"] == 1
    got, meta = load_checkpoint(tmp_path)  # a directory resolves to its checkpoint.npz
    np.testing.assert_array_equal(got["model.rnn.w"], arrays()["model.rnn.w"])
    assert meta["epoch"] == 2 and meta["note"] == "é"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]  # no temporary left


def test_array_names_are_only_names(tmp_path: Path) -> None:
    """Any str names an array, also ``np.savez``'s own parameters: written through
    ``np.savez(f, **arrays)``, an array named ``allow_pickle`` was taken as the flag and lost,
    and one named ``file`` failed with savez's TypeError."""
    rng = np.random.default_rng(5)
    named = {name: rng.standard_normal((2, 3)) for name in ("allow_pickle", "file", "a/b", "")}
    path = save_checkpoint(tmp_path, named, {"epoch": 1})
    got, _ = load_checkpoint(path)
    assert set(got) == set(named)
    for name, value in named.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == value.dtype
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(named) | {"__rnncu_meta__"}
    with pytest.raises(TypeError, match=r"checkpoint array name 3 is not a str"):
        save_checkpoint(tmp_path / "other.npz", {3: np.ones(2)}, {})  # type: ignore[dict-item]
    assert not (tmp_path / "other.npz").exists()


def test_a_path_ending_in_a_separator_is_a_directory(tmp_path: Path) -> None:
    """``runs/exp1/`` names a directory even before it exists: it was written as a file named
    ``runs/exp1``, and the next save to ``runs/exp1/checkpoint.npz`` failed."""
    new = f"{tmp_path / 'runs' / 'exp1'}{os.sep}"
    written = save_checkpoint(new, arrays(), {"epoch": 1})
    assert written == tmp_path / "runs" / "exp1" / "checkpoint.npz" and written.is_file()
    got, meta = load_checkpoint(new)
    np.testing.assert_array_equal(got["model.rnn.w"], arrays()["model.rnn.w"])
    save_checkpoint(tmp_path / "runs" / "exp1" / "checkpoint.npz", arrays(), {"epoch": 2})
    assert load_checkpoint(new)[1]["epoch"] == 2
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*absent.* \(looked for"):
        load_checkpoint(f"{tmp_path / 'absent'}{os.sep}")


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, arrays(), {"epoch": 1})
    before = path.read_bytes()

    real_write_array = np.lib.format.write_array
    written = []

    def exploding_write_array(member, value, **kwargs):
        if written:  # the first array reached the temporary file
            raise OSError("disk full")
        written.append(real_write_array(member, value, **kwargs))

    monkeypatch.setattr(ckpt.np.lib.format, "write_array", exploding_write_array)
    with pytest.raises(OSError, match="disk full") as failed:
        save_checkpoint(path, arrays(), {"epoch": 2})
    assert failed.value.filename == str(path)  # the file asked for, not the temporary one
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]
    monkeypatch.undo()
    assert load_checkpoint(path)[1]["epoch"] == 1


def test_write_errors_name_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    def refused(*args, **kwargs):  # as os.open in mkstemp reports it: the temporary name
        temp = tmp_path / ".metrics.json.k2j4_x9q.tmp"
        raise PermissionError(errno.EACCES, "Permission denied", str(temp))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    target = tmp_path / "metrics.json"
    with pytest.raises(PermissionError) as failed:
        ckpt.atomic_write_text(target, "{}")
    assert (failed.value.errno, failed.value.filename) == (errno.EACCES, str(target))
    assert failed.value.strerror == "Permission denied"
    # an error about another path (the parent is a file) keeps naming that path
    parent = tmp_path / "a-file"
    parent.write_text("")
    monkeypatch.undo()
    with pytest.raises(OSError) as failed:
        ckpt.atomic_write_text(parent / "x.json", "{}")
    assert failed.value.filename == str(parent)


def test_a_killed_writers_temporary_file_is_removed_later(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    stale = tmp_path / ".checkpoint.npz.killed1.tmp"  # what a SIGKILL mid-write leaves
    fresh = tmp_path / ".checkpoint.npz.writing.tmp"  # perhaps another writer's, right now
    other = tmp_path / ".metrics.json.old.tmp"  # another target's: not this write's concern
    for leftover in (stale, fresh, other):
        leftover.write_bytes(b"PK half")
    old = os.path.getmtime(stale) - ckpt.STALE_TEMP_SECONDS - 1
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    save_checkpoint(path, arrays(), {"epoch": 1})
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, fresh.name, other.name])


def test_unreadable_and_object_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, arrays(), {"epoch": 1})

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(ckpt, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint \(Permission denied\)"):
        load_checkpoint(path)  # not "truncated or corrupt": the file may be fine
    monkeypatch.undo()

    objects = tmp_path / "objects.npz"
    meta = json.dumps({"format": ckpt.FORMAT, "version": ckpt.VERSION})
    np.savez(objects, __rnncu_meta__=np.array(meta), w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"entry 'w' holds Python objects") as exc:
        load_checkpoint(objects)
    assert "allow_pickle" not in one_line(exc)


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found") as exc:
        load_checkpoint(tmp_path / "nope.npz")
    one_line(exc)
    with pytest.raises(CheckpointError, match="looked for"):
        load_checkpoint(tmp_path)  # an empty run directory


@pytest.mark.parametrize("keep", [0, 10, 100, -30])
def test_truncated(tmp_path: Path, keep: int) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.npz", arrays(), {"epoch": 1})
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[:keep])
    with pytest.raises(CheckpointError, match="checkpoint.npz") as exc:
        load_checkpoint(path)
    one_line(exc)


def test_corrupt_member(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "checkpoint.npz", arrays(), {"epoch": 1})
    blob = bytearray(path.read_bytes())
    start = blob.index(b"\x93NUMPY")  # the first member's array header
    blob[start : start + 40] = b"\x00" * 40
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    one_line(exc)


def test_a_member_without_an_array_header(tmp_path: Path) -> None:
    """A member rewritten with other bytes (its CRC right) is read by NumPy as raw bytes: it
    reached the trainer, which failed with ``'bytes' object has no attribute 'dtype'``."""
    path = save_checkpoint(tmp_path / "checkpoint.npz", arrays(), {"epoch": 1})
    rewrite_member(path, "optim.step.npy", b"not an array at all")
    with pytest.raises(CheckpointError, match=r"entry 'optim.step' is not an array") as exc:
        load_checkpoint(path)
    one_line(exc)


def test_save_checkpoint_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"^checkpoint path: expected a file or run directory"):
        save_checkpoint(None, arrays(), {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^checkpoint path: expected a file or run directory, g"):
        save_checkpoint("", arrays(), {})
    with pytest.raises(TypeError, match=r"^checkpoint arrays: expected a mapping, got list"):
        save_checkpoint(tmp_path, list(arrays().items()), {})  # type: ignore[arg-type]
    # "x.npy" is stored as "x.npy.npy" and read back as the member of "x" ("x.npy")
    with pytest.raises(ValueError, match=r"name 'x.npy': names may not end in '.npy'"):
        save_checkpoint(tmp_path, {"x": np.zeros(2), "x.npy": np.ones(2)}, {})
    assert list(tmp_path.iterdir()) == []


def test_foreign_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an rnncu checkpoint") as exc:
        load_checkpoint(plain)
    one_line(exc)
    other = tmp_path / "other.npz"
    np.savez(other, __rnncu_meta__=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(CheckpointError, match="not an rnncu checkpoint"):
        load_checkpoint(other)
    future = tmp_path / "future.npz"
    np.savez(
        future, __rnncu_meta__=np.array(json.dumps({"format": "rnncu-checkpoint", "version": 99}))
    )
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(future)
    for version, shown in (("1", r"'1' \(a str, not an integer\)"), (True, "True")):
        meta = json.dumps({"format": "rnncu-checkpoint", "version": version})
        np.savez(future, __rnncu_meta__=np.array(meta))
        with pytest.raises(CheckpointError, match=rf"version {shown} is not supported"):
            load_checkpoint(future)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(text)


def test_check_arrays(tmp_path: Path) -> None:
    got = check_arrays("f.npz", arrays(), {"rnn.w": (2, 3)}, prefix="model.")
    assert list(got) == ["rnn.w"]
    with pytest.raises(CheckpointError, match="missing entry 'model.head.w'"):
        check_arrays("f.npz", arrays(), {"head.w": (2, 3)}, prefix="model.")
    with pytest.raises(CheckpointError, match=r"has shape \(2, 3\), the model expects \(3, 3\)"):
        check_arrays("f.npz", arrays(), {"rnn.w": (3, 3)}, prefix="model.")
    # the model's dtype, when given; an entry the model lacks (from another architecture)
    assert check_arrays("f.npz", arrays(), {"rnn.w": (2, 3)}, "model.", np.float32)["rnn.w"].dtype
    with pytest.raises(CheckpointError, match=r"'model.rnn.w' has dtype float32, the model's is"):
        check_arrays("f.npz", arrays(), {"rnn.w": (2, 3)}, prefix="model.", dtype=np.float64)
    extra = {**arrays(), "model.rnn.w_reverse": np.ones(2, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected entry 'model.rnn.w_reverse'"):
        check_arrays("f.npz", extra, {"rnn.w": (2, 3)}, prefix="model.")


def test_atomic_write_gives_the_usual_file_mode(tmp_path) -> None:
    import os

    from rnncu.checkpoint import atomic_write_text

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_metadata_is_standard_json(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    for key in ("format", "version"):
        with pytest.raises(ValueError, match=f"metadata key '{key}' is reserved"):
            save_checkpoint(path, arrays(), {key: "mine", "epoch": 1})
    with pytest.raises(ValueError, match=r"metadata \['history'\]\[1\]\['loss'\]: nan is not"):
        save_checkpoint(path, arrays(), {"history": [{"loss": 1.0}, {"loss": float("nan")}]})
    with pytest.raises(ValueError, match=r"metadata \['lr'\]: inf is not finite"):
        save_checkpoint(path, arrays(), {"lr": np.float32("inf")})
    with pytest.raises(TypeError, match=r"metadata \['w'\]: a NumPy array of shape \(3,\)"):
        save_checkpoint(path, arrays(), {"w": np.zeros(3)})
    assert not path.exists()  # nothing was written
    save_checkpoint(path, arrays(), {"lr": np.float32(0.5), "step": np.int64(3), "n": np.array(2)})
    meta = load_checkpoint(path)[1]
    assert meta["lr"] == 0.5 and meta["step"] == 3 and meta["n"] == 2
    assert meta["format"] == "rnncu-checkpoint"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", "-2e400"])
def test_metadata_with_a_non_finite_number_is_refused(tmp_path: Path, constant: str) -> None:
    """json.loads reads NaN: a history holding it passed the run checks, and a resumed run
    trained a whole epoch before failing to save, naming no file."""
    path = save_checkpoint(tmp_path / "checkpoint.npz", arrays(), {"epoch": 1})
    meta = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "history": [{"train_loss": 0.5}]}
    text = json.dumps(meta).replace("0.5", constant)
    member = io.BytesIO()
    np.lib.format.write_array(member, np.array(text), allow_pickle=False)
    rewrite_member(path, "__rnncu_meta__.npy", member.getvalue())
    with pytest.raises(CheckpointError, match=rf"checkpoint.npz: metadata holds {constant}, wh"):
        load_checkpoint(path)


def test_check_arrays_refuses_non_finite_weights() -> None:
    bad = dict(arrays(), **{"model.rnn.w": np.full((2, 3), np.nan, np.float32)})
    with pytest.raises(CheckpointError, match="f.npz: entry 'model.rnn.w' holds NaN"):
        check_arrays("f.npz", bad, {"rnn.w": (2, 3)}, prefix="model.")


def test_atomic_writes_of_long_names_and_bad_arguments(tmp_path: Path) -> None:
    """A name of 242 to 255 characters failed (its temporary file's name went past the
    limit); "" and "." failed with EBUSY; text and bytes were not checked."""
    long_name = tmp_path / ("n" * 250)
    ckpt.atomic_write_text(long_name, "hi")
    ckpt.atomic_write_text(long_name, "again")  # the stale-temp sweep reads the same names
    assert long_name.read_text() == "again"
    assert [p.name for p in tmp_path.iterdir()] == [long_name.name]
    wide = tmp_path / ("é" * 120 + ".txt")  # 244 bytes: 200 characters were still too many
    ckpt.atomic_write_text(wide, "wide")
    assert wide.read_text() == "wide"
    wide.unlink()
    # a stale temporary of another long name that starts alike is not this write's to remove
    other = tmp_path / ("a" * 200 + "-two")
    stale = tmp_path / (ckpt._temp_prefix(other) + "abcdefgh.tmp")
    stale.write_text("theirs")
    os.utime(stale, (time.time() - 2 * ckpt.STALE_TEMP_SECONDS,) * 2)
    mine = tmp_path / ("a" * 200 + "-one")
    ckpt.atomic_write_text(mine, "mine")
    assert stale.exists()
    stale.unlink()
    mine.unlink()
    for path in ("", "."):
        with pytest.raises(ValueError, match=r"^path: expected a file to write, got"):
            ckpt.atomic_write_text(path, "x")
    with pytest.raises(TypeError, match=r"^path: expected a str or path, got NoneType"):
        ckpt.atomic_write_text(None, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^data: expected bytes, got str"):
        ckpt.atomic_write_bytes(tmp_path / "b", "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^text: expected a str, got bytes"):
        ckpt.atomic_write_text(tmp_path / "t", b"abc")  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == [long_name.name]


def test_an_atomic_write_replaces_a_symbolic_link_and_leaves_its_target(tmp_path: Path) -> None:
    """A shared checkpoint linked into a run directory to resume from: the run's next save
    lands in the run directory; the shared file (read-only by its mode, which a rename would
    not have respected) keeps its contents."""
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "checkpoint.npz"
    save_checkpoint(target, arrays(), {"epoch": 1})
    target.chmod(0o444)
    before = target.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    link = run / "checkpoint.npz"
    link.symlink_to(os.path.relpath(target, run))
    assert load_checkpoint(link)[1]["epoch"] == 1  # read through the link
    save_checkpoint(link, arrays(), {"epoch": 2})
    assert not link.is_symlink() and load_checkpoint(link)[1]["epoch"] == 2
    assert target.read_bytes() == before
    assert sorted(p.name for p in shared.iterdir()) == ["checkpoint.npz"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz"]  # no temporaries


def test_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The durability the module promises: the temporary file's bytes reach the disk before
    it is renamed over the target (else a crash could leave an empty checkpoint under the
    name), and the directory is synced after, making the rename itself durable."""
    import stat

    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        kind = "fsync dir" if stat.S_ISDIR(info.st_mode) else "fsync file"
        events.append((kind, 0 if kind == "fsync dir" else info.st_size))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.path.getsize(src)))
        real_replace(src, dst)

    data = np.random.default_rng(3).bytes(1234)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    ckpt.atomic_write_bytes(tmp_path / "blob.bin", data)
    monkeypatch.undo()
    assert events == [("fsync file", 1234), ("replace", 1234), ("fsync dir", 0)]
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_check_arrays_refuses_integer_weights() -> None:
    """An integer entry (a hand-made or foreign file) would be cast into the weights."""
    ints = np.random.default_rng(4).integers(-5, 5, size=(2, 3))
    bad = dict(arrays(), **{"model.rnn.w": ints})
    with pytest.raises(CheckpointError, match=r"f.npz: entry 'model.rnn.w' has dtype int64, not f"):
        check_arrays("f.npz", bad, {"rnn.w": (2, 3)}, prefix="model.")


def hold_in_another_process(directory: Path) -> subprocess.Popen:
    """A process that holds ``directory`` as a run does, until it is killed."""
    code = (
        "import sys, time\n"
        "from rnncu.checkpoint import run_directory\n"
        "with run_directory(sys.argv[1], 'the other run'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (documented)")
def test_a_run_directory_held_by_another_process_is_refused_until_it_dies(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    holder = hold_in_another_process(run)
    try:
        refusal = f"--out x: another rnncu run is writing into {run}; wait for it to end"
        with pytest.raises(ckpt.RunDirectoryInUse, match="^" + re.escape(refusal)):
            with ckpt.run_directory(run, "--out x"):
                pytest.fail("held twice")
        assert run.is_dir()  # the other process's: not removed by the refused one
    finally:
        holder.kill()  # SIGKILL: the system releases the flock with the process
        holder.wait()
    with ckpt.run_directory(run, "--out x") as held:
        assert held == run


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (documented)")
def test_a_run_directory_nests_within_a_process_and_is_released_after(tmp_path: Path) -> None:
    import fcntl

    def free() -> bool:
        descriptor = os.open(tmp_path / "run", os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(descriptor)  # (releases what it took)

    with ckpt.run_directory(tmp_path / "run", "outer"):
        with ckpt.run_directory(tmp_path / "run/", "inner"):  # the same directory
            assert not free()
            (tmp_path / "run" / "config.json").write_text("{}")  # kept: not empty
        assert not free()  # the inner end does not release the outer hold
    assert free()


def test_a_failed_run_removes_the_directories_made_for_it(tmp_path: Path) -> None:
    with pytest.raises(KeyError), ckpt.run_directory(tmp_path / "a" / "b" / "c", "--out c"):
        assert (tmp_path / "a" / "b" / "c").is_dir()
        raise KeyError("a failure before anything was written")
    assert os.listdir(tmp_path) == []
    # what the run wrote stays, with the directories above it
    with pytest.raises(KeyError), ckpt.run_directory(tmp_path / "a" / "b", "--out b"):
        (tmp_path / "a" / "b" / "config.json").write_text("{}")
        raise KeyError("a failure after")
    assert (tmp_path / "a" / "b" / "config.json").is_file()
    # a directory that was there before stays, empty or not
    (tmp_path / "old").mkdir()
    with pytest.raises(KeyError), ckpt.run_directory(tmp_path / "old", "--out old"):
        raise KeyError("a failure")
    assert (tmp_path / "old").is_dir()
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="--out f: .*file is a file, not a directory"):
        with ckpt.run_directory(tmp_path / "file" / "run", "--out f"):
            pytest.fail("entered")


def test_a_run_that_writes_nothing_leaves_no_directory_made_for_it(tmp_path: Path) -> None:
    """A resumed run with nothing left to train writes nothing: the directories made to hold
    it go again, as a failed run's do, while one that was there before stays."""
    with ckpt.run_directory(tmp_path / "a" / "b", "--out b") as held:
        assert held.is_dir()
    assert os.listdir(tmp_path) == []
    (tmp_path / "old").mkdir()
    with ckpt.run_directory(tmp_path / "old" / "new", "--out new"):
        pass
    assert os.listdir(tmp_path) == ["old"] and os.listdir(tmp_path / "old") == []
    with ckpt.run_directory(tmp_path / "old", "--out old"):
        pass
    assert (tmp_path / "old").is_dir()


def test_an_interrupted_run_removes_the_directories_made_for_it(tmp_path: Path) -> None:
    """Ctrl-C is a KeyboardInterrupt, not an Exception: it fails the block all the same."""
    with pytest.raises(KeyboardInterrupt), ckpt.run_directory(tmp_path / "a" / "b", "--out b"):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (documented)")
def test_a_run_directory_nests_under_any_spelling_and_after_an_inner_hold_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold is the directory's, not its path's: a relative path, a link to it or one
    through ``..`` nest within it, and so does a second hold after a first inner one ended."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path)
    with ckpt.run_directory(run, "outer"):
        for spelling in ("run", tmp_path / "link", run / ".." / "run", run):
            with ckpt.run_directory(spelling, "inner") as held:
                assert held.samefile(run)


@pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only (documented)")
def test_a_file_system_without_flock_runs_unguarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network mounts refuse flock (ENOLCK): the run goes on, as it did before holds."""
    import errno
    import fcntl

    def refused(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    with ckpt.run_directory(tmp_path / "run", "--out run") as held:
        assert held == tmp_path / "run" and held.is_dir()
        with ckpt.run_directory(tmp_path / "run", "--out run"):
            (held / "config.json").write_text("{}")
    assert (tmp_path / "run" / "config.json").is_file()


class HoldingThread:
    """A thread that holds ``run`` (``depth`` nested holds) from ``start()`` until
    ``stop()``; what it raised is in ``failures``, for the main thread to report."""

    def __init__(self, run: Path, depth: int = 1) -> None:
        import threading

        self.run, self.depth = run, depth
        self.taken, self.release = threading.Event(), threading.Event()
        self.failures: list[BaseException] = []
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with contextlib.ExitStack() as holds:
                for _ in range(self.depth):
                    holds.enter_context(ckpt.run_directory(self.run, "out_dir"))
                self.taken.set()
                self.release.wait(60)
        except BaseException as exc:  # reported by the main thread
            self.failures.append(exc)
            self.taken.set()

    def start(self) -> None:
        self.thread.start()
        assert self.taken.wait(60) and not self.failures

    def stop(self) -> None:
        self.release.set()
        self.thread.join(60)
        assert not self.thread.is_alive() and not self.failures


@pytest.mark.parametrize("flock", ["works", "refused by the file system"])
def test_threads_of_one_process_are_kept_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flock: str
) -> None:
    """Two threads training into one directory would mix their files as two processes do;
    the hold nests only within the thread that took it."""
    import errno
    import fcntl

    if flock != "works":

        def refused(descriptor: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(fcntl, "flock", refused)
    run = tmp_path / "run"
    other = HoldingThread(run, depth=2)
    other.start()
    try:
        for spelling in (run, tmp_path / "run" / ".." / "run"):
            refusal = f"out_dir: another thread of this process is writing a run into {spelling}; "
            with pytest.raises(ckpt.RunDirectoryInUse, match="^" + re.escape(refusal)):
                with ckpt.run_directory(spelling, "out_dir"):
                    pytest.fail("held by two threads")
        assert run.is_dir()  # the other thread's, not removed by the refused hold
    finally:
        other.stop()
    with ckpt.run_directory(run, "out_dir"), ckpt.run_directory(run, "again"):
        (run / "config.json").write_text("{}")  # this thread's now, and nesting
    assert ckpt._held_run_directories == {}


def test_without_flock_a_run_directory_is_held_without_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on Windows: no fcntl, and os.open refuses a directory. The hold still nests within
    a thread and keeps another thread out."""
    import threading

    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl: ImportError

    def refused(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refused)
    run = tmp_path / "run"
    outcome: list[str] = []
    with ckpt.run_directory(run, "outer"), ckpt.run_directory(run, "inner") as held:
        assert held == run and run.is_dir()

        def other() -> None:
            try:
                with ckpt.run_directory(run, "out_dir"):
                    outcome.append("held")
            except ckpt.RunDirectoryInUse as exc:
                outcome.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(60)
    assert outcome == [
        f"out_dir: another thread of this process is writing a run into {run}; wait for it "
        "to end, or give another directory"
    ]
    assert ckpt._held_run_directories == {}


def test_two_threads_taking_one_run_directory_at_once_cannot_both_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where flock does not keep them apart (here: no fcntl, as on Windows), the look-up of
    the holder and the taking of the hold are one step: a second thread arriving at the same
    moment waits for it, and then sees the first as the holder. The table of holds below
    makes each look-up wait (up to a second) for the other thread's before it answers."""
    import contextlib
    import threading

    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl: ImportError

    class MeetingTable(dict):
        meeting = threading.Barrier(2, timeout=1.0)

        def get(self, *args: object) -> object:
            found = super().get(*args)
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meeting.wait()
            return found

    monkeypatch.setattr(ckpt, "_held_run_directories", MeetingTable())
    run = tmp_path / "run"
    run.mkdir()
    outcome: list[str] = []

    def take() -> None:
        try:
            with ckpt.run_directory(run, "out_dir"):
                outcome.append("held")
                deadline = time.monotonic() + 30
                while len(outcome) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)  # held until the other thread has tried
        except ckpt.RunDirectoryInUse:
            outcome.append("refused")

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcome) == ["held", "refused"]
    assert ckpt._held_run_directories == {} and run.is_dir()


def test_a_refused_hold_leaves_the_directory_to_the_run_that_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs given one new directory at once both find it missing and make it; the one
    refused must not remove it as made for itself, for the other holds it (and would go on
    writing into a directory made anew, which its hold no longer covers)."""
    run = tmp_path / "new" / "run"
    held = ckpt._held
    other = HoldingThread(run)

    def held_after_the_other(path: Path, name: str) -> object:
        # this run has made the directories: the other takes the hold first
        monkeypatch.setattr(ckpt, "_held", held)
        other.start()
        return held(path, name)

    monkeypatch.setattr(ckpt, "_held", held_after_the_other)
    try:
        with pytest.raises(ckpt.RunDirectoryInUse, match="^out_dir: another thread"):
            with ckpt.run_directory(run, "out_dir"):
                pytest.fail("held twice")
        assert run.is_dir()
    finally:
        other.stop()
    assert run.is_dir()
    # a run that fails after taking its hold still removes what it made
    with pytest.raises(KeyError), ckpt.run_directory(tmp_path / "b" / "c", "--out c"):
        raise KeyError("a failure before anything was written")
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_refused_run_directory_leaves_no_descriptor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def held_elsewhere(descriptor: int, operation: int) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(fcntl, "flock", held_elsewhere)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ckpt.RunDirectoryInUse, match="^--out run: another rnncu run"):
            with ckpt.run_directory(tmp_path / "run", "--out run"):
                pytest.fail("held twice")
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_directories_made_for_a_hold_go_before_it_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed once the hold is released, an empty directory made for a run could already
    be another run's, held and about to be written: it goes while still held."""
    held = ckpt._held
    at_release: list[bool] = []

    @contextmanager
    def watched(path: Path, name: str) -> Iterator[None]:
        try:
            with held(path, name):
                yield
        finally:  # the block's error too
            at_release.append((tmp_path / "a").exists())

    monkeypatch.setattr(ckpt, "_held", watched)
    with ckpt.run_directory(tmp_path / "a" / "b", "--out b"):
        pass
    with pytest.raises(KeyError), ckpt.run_directory(tmp_path / "a" / "b", "--out b"):
        raise KeyError("a failure before anything was written")
    assert at_release == [False, False]
    assert os.listdir(tmp_path) == []
