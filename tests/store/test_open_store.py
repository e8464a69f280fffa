"""open_store's URL rules: sqlite follows SQLAlchemy (three slashes + a relative path, four
slashes for an absolute one), and a file held by another store is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lucid_cp.store import SqliteStore, StoreUnavailableError, open_store


async def test_four_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    store = open_store(f"sqlite:///{path}")  # == "sqlite:////tmp/.../abs.db"
    try:
        assert isinstance(store, SqliteStore)
        await store.put(b"/k", b"v")
    finally:
        await store.close()
    assert path.exists()


async def test_three_slashes_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///tmp/x.db")
    await store.close()
    assert (tmp_path / "tmp" / "x.db").exists()


def test_a_missing_directory_explains_how_the_url_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"relative path 'nodir/x\.db'.*sqlite:////nodir/x\.db"):
        open_store("sqlite:///nodir/x.db")
    with pytest.raises(ValueError, match=r"directory /nodir-\w+ does not exist"):
        open_store(f"sqlite:////nodir-{tmp_path.name}/x.db")


async def test_a_file_held_by_another_store_is_in_use(tmp_path: Path) -> None:
    first = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        with pytest.raises(StoreUnavailableError, match="in use by another process"):
            open_store(f"sqlite:///{tmp_path}/state.db")
    finally:
        await first.close()
