"""The run's holder of the state file (store/state.py: Holder), on a real SQLite file: while
it is open, the probes' and the record's connections end without checkpointing the WAL
(the last connection to close does that, with an fsync and an exclusive lock); it never
creates a state file; and it is best effort."""

from __future__ import annotations

from pathlib import Path

from nodecheck.store import state


def write_once(state_dir: Path, key: str) -> None:
    with state.open_state(state_dir) as store:
        store.put_json(key, {"n": 1})


def wal(state_dir: Path) -> Path:
    return state_dir / f"{state.STATE_FILE}-wal"


def test_without_a_holder_each_last_close_checkpoints_and_drops_the_wal(tmp_path):
    write_once(tmp_path, "a")
    assert not wal(tmp_path).exists()


def test_with_a_holder_the_writers_leave_the_checkpoint_to_it(tmp_path):
    write_once(tmp_path, "a")
    with state.Holder(tmp_path) as holder:
        holder.open()
        holder.close()  # waits for the open (a thread) to be done, then lets go
        assert not wal(tmp_path).exists()
    holder = state.Holder(tmp_path)
    holder.open()
    holder._opening.join(5)
    for key in ("b", "c", "d"):
        write_once(tmp_path, key)
        assert wal(tmp_path).stat().st_size > 0  # committed, not checkpointed
    holder.close()  # the last connection: the one checkpoint
    assert not wal(tmp_path).exists()
    with state.open_state(tmp_path) as store:
        assert [store.get_json(k) for k in "abcd"] == [{"n": 1}] * 4


def test_a_holder_creates_nothing_and_fails_quietly(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with state.Holder(fresh) as holder:
        holder.open()
    assert list(fresh.iterdir()) == []
    with state.Holder(None) as nothing:  # a state directory that did not answer
        nothing.open()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / state.STATE_FILE).write_text("not a database")
    with state.Holder(tmp_path / "broken") as holder:
        holder.open()
    assert (tmp_path / "broken" / state.STATE_FILE).read_text() == "not a database"
