"""difflab.io.atomic: a file or directory appears complete under its name or not at all."""
import os
import stat

import pytest

from difflab.io import atomic


def test_write_replaces_a_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic.write_text(path, "one")
    atomic.write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic.write_text(tmp_path / "a.txt", "old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_directory_swap_replaces_and_has_normal_permissions(tmp_path):
    final = tmp_path / "model"
    for text in ("first", "second"):
        with atomic.directory(final) as tmp:
            (tmp / "f.txt").write_text(text)
    assert (final / "f.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask  # not owner-only like mkdtemp's


def test_directory_without_replace_keeps_the_first_copy(tmp_path):
    final = tmp_path / "cache"
    for text in ("winner", "loser"):
        with atomic.directory(final, replace=False) as tmp:
            (tmp / "f.txt").write_text(text)
    assert (final / "f.txt").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_failure_inside_the_block_leaves_the_old_directory(tmp_path):
    final = tmp_path / "model"
    with atomic.directory(final) as tmp:
        (tmp / "f.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic.directory(final) as tmp:
            (tmp / "f.txt").write_text("half")
            raise RuntimeError
    assert (final / "f.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_recover_after_a_crash_between_the_renames(tmp_path):
    final = tmp_path / "model"
    with atomic.directory(final) as tmp:
        (tmp / "f.txt").write_text("good")
    os.replace(final, atomic.old_path(final))  # the first rename happened, the second did not
    assert not atomic.recover(tmp_path / "other")
    assert atomic.recover(final) and (final / "f.txt").read_text() == "good"
    assert not atomic.recover(final)  # nothing to do any more


def test_remove_temporaries(tmp_path):
    (tmp_path / ".tmp-model-1234").mkdir()
    (tmp_path / ".tmp-log.csv-99").write_text("x")
    (tmp_path / "keep.txt").write_text("x")
    atomic.remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
