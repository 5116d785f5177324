"""The atomic-write helper every writer uses: whole file or nothing, no temporary left behind."""
import os
import stat

import pytest

from analysis.core.fsio import atomic_open, atomic_write


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_folders_and_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "b" / "f.bin"
    atomic_write(target, b"first version, long" * 100)
    assert target.read_bytes() == b"first version, long" * 100
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _listing(target.parent) == ["f.bin"]
    # the mode a plain open() would give (mkstemp's 0600 is not kept)
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_keeps_old_file_and_leaves_no_temporary(tmp_path, exc):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")
    with pytest.raises(exc):
        with atomic_open(target) as f:
            f.write(b"half of the new con")
            # the half-written bytes are not visible at the target while writing
            assert target.read_bytes() == b"old content"
            raise exc("stop")
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["f.bin"]


def test_failure_before_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(TypeError):
        atomic_write(target, "text, not bytes")  # refused by the binary file object
    assert _listing(tmp_path) == []
