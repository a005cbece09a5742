"""The avatar store (server/avatar_store.py): real files, and a real process killed mid-write.

A writer killed with SIGKILL halfway through a file leaves the previous file (or none), never
half of one, and the next start tidies up: temporary files go, a folder without a readable
record goes, a folder caught being deleted goes. Records, pictures and assets read back as
written.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from headcast.server.avatar_store import (
    DELETING_PREFIX,
    RECORD_FILE,
    TEMPORARY_SUFFIX,
    AvatarRecord,
    AvatarStatus,
    AvatarStore,
)
from tests.conftest import REPO_ROOT

KEY = "puppet-0123456789ab"
WRITER_WAIT_S = 60.0


def record(avatar_id: str = "abc123") -> AvatarRecord:
    now = datetime.now(UTC)
    return AvatarRecord(
        id=avatar_id,
        created_at=now,
        updated_at=now,
        source_format="PNG",
        source_extension="png",
        source_width=4,
        source_height=4,
    )


def test_an_avatar_reads_back_as_written(tmp_path: Path) -> None:
    store = AvatarStore(tmp_path / "avatars")
    assert store.load_all() == []
    assert not store.root.exists()  # made with the first avatar only
    first = record()
    store.create(first, b"photo bytes")
    store.write_picture(first.id, b"png bytes")
    assets = {"background": np.arange(24, dtype=np.uint8).reshape(2, 4, 3)}
    store.write_assets(first.id, KEY, assets)
    first.status, first.assets_key, first.has_picture = AvatarStatus.READY, KEY, True
    store.save(first)
    (loaded,) = store.load_all()
    assert loaded == first
    assert store.read_source(loaded) == b"photo bytes"
    assert store.read_picture(first.id) == b"png bytes"
    assert store.has_assets(first.id, KEY) and not store.has_assets(first.id, "other")
    np.testing.assert_array_equal(
        store.read_assets(first.id, KEY)["background"], assets["background"]
    )
    store.delete(first.id)
    assert store.load_all() == [] and list(store.root.iterdir()) == []
    with pytest.raises(ValueError, match="not an avatar id"):
        store.folder("../etc")


def test_a_crash_leaves_no_half_file_and_the_next_start_tidies_up(tmp_path: Path) -> None:
    root = tmp_path / "avatars"
    # A writer process that stores a pending avatar, then dies halfway through its assets
    # and halfway through a ready record.
    writer = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from headcast.server import avatar_store
        from tests.unit.server.test_avatar_store import KEY, record
        store = avatar_store.AvatarStore(Path({str(root)!r}))
        pending = record()
        store.create(pending, b"photo")
        def half_then_hang(file):
            file.write(b"PK half an npz")
            file.flush()
            print("halfway", flush=True)
            time.sleep({WRITER_WAIT_S})
        folder = store.folder(pending.id)
        target = sys.argv[1]
        avatar_store._write_atomic(folder / target, half_then_hang)
        """
    )
    for target in (f"assets-{KEY}.npz", RECORD_FILE):
        process = subprocess.Popen(
            [sys.executable, "-c", writer, target], cwd=REPO_ROOT, stdout=subprocess.PIPE
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"halfway\n"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(WRITER_WAIT_S)
        assert process.returncode == -signal.SIGKILL
        folder = root / "abc123"
        assert (folder / (target + TEMPORARY_SUFFIX)).exists()  # the half file, aside
        store = AvatarStore(root)
        (loaded,) = store.load_all()
        assert loaded.status is AvatarStatus.PENDING  # the record before the crash
        assert not store.has_assets(loaded.id, KEY)
        assert not list(folder.glob(f"*{TEMPORARY_SUFFIX}"))  # tidied up
        store.delete(loaded.id)


def test_folders_without_a_record_or_being_deleted_are_removed(tmp_path: Path) -> None:
    store = AvatarStore(tmp_path)
    kept = record("kept")
    store.create(kept, b"photo")
    (tmp_path / "norecord").mkdir()
    (tmp_path / "norecord" / "source.png").write_bytes(b"photo")
    (tmp_path / f"{DELETING_PREFIX}gone").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / RECORD_FILE).write_text("{not json")
    assert [r.id for r in store.load_all()] == ["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
