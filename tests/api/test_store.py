"""The file store: idempotent log appends at an offset, ranges, capped atomic artifacts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from buildworker.store import ArtifactTooLarge, InvalidName, LogGap, Store


def test_append_at_offset_grows_the_log_and_returns_its_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.log_size(1) is None
    assert store.append_log(1, None, 0, b"hello ") == 6
    assert store.append_log(1, None, 6, b"world\n") == 12
    assert (tmp_path / "logs" / "1" / "log").read_bytes() == b"hello world\n"


def test_a_retried_chunk_is_a_no_op_for_the_part_already_stored(tmp_path: Path) -> None:
    # Given a log of 6 bytes
    store = Store(tmp_path)
    store.append_log(1, "build", 0, b"abcdef")
    # When the same chunk is sent again, and then one that overlaps the end
    assert store.append_log(1, "build", 0, b"abcdef") == 6
    assert store.append_log(1, "build", 4, b"efgh") == 8
    # Then the log holds each byte once
    assert store.log_path(1, "build").read_bytes() == b"abcdefgh"


def test_a_chunk_past_the_end_is_refused_with_the_current_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_log(2, None, 0, b"abc")
    with pytest.raises(LogGap) as info:
        store.append_log(2, None, 10, b"x")
    assert info.value.size == 3
    assert store.log_size(2) == 3


def test_setup_and_task_logs_live_apart_even_for_a_task_named_log(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_log(3, None, 0, b"setup")
    store.append_log(3, "log", 0, b"task named log")
    store.append_log(3, "setup", 0, b"task named setup")
    assert store.log_path(3).read_bytes() == b"setup"
    assert store.log_path(3, "log").read_bytes() == b"task named log"
    assert store.log_path(3, "setup") == tmp_path / "logs" / "3" / "setup" / "log"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "UPPER", "x" * 129, "."])
def test_unsafe_task_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName):
        Store(tmp_path).append_log(1, name, 0, b"x")


def test_read_log_returns_the_requested_range(tmp_path: Path) -> None:
    store = Store(tmp_path)
    data = bytes(range(256)) * 1000
    store.append_log(4, "t", 0, data)
    assert b"".join(store.read_log(4, "t", 10, 100_010)) == data[10:100_010]
    assert b"".join(store.read_log(4, "t", 255_990, 999_999)) == data[255_990:]


def test_concurrent_appends_of_the_same_chunks_never_duplicate_bytes(tmp_path: Path) -> None:
    # Given 8 threads that each send the same 200 chunks (as retries would)
    store = Store(tmp_path)
    chunks = [(i * 10, f"{i:09d}\n".encode()) for i in range(200)]
    expected = b"".join(c for _, c in chunks)

    def sender() -> None:
        for offset, chunk in chunks:
            while True:
                try:
                    store.append_log(5, None, offset, chunk)
                    break
                except LogGap:
                    pass  # another thread has not written the previous chunk yet

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the log is exactly the chunks, once each
    assert store.log_path(5).read_bytes() == expected


def test_reset_logs_forgets_every_log_of_a_job(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append_log(6, None, 0, b"a")
    store.append_log(6, "t", 0, b"b")
    store.reset_logs(6)
    assert store.log_size(6) is None
    assert store.log_size(6, "t") is None


def test_an_artifact_appears_only_once_complete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key = store.artifact_key(7, "0123456789abcdef", "out.tar.gz")
    with store.artifact_writer(key, max_size=100) as sink:
        sink.write(b"x" * 50)
        assert not store.artifact_path(key).exists()
        sink.write(b"y" * 50)
    assert store.artifact_path(key).read_bytes() == b"x" * 50 + b"y" * 50
    assert sink.size == 100


def test_an_artifact_over_the_cap_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path)
    key = store.artifact_key(8, "0123456789abcdef", "big")
    with pytest.raises(ArtifactTooLarge), store.artifact_writer(key, max_size=10) as sink:
        sink.write(b"x" * 6)
        sink.write(b"x" * 6)
    directory = store.artifact_path(key).parent
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize(
    ("segment", "name"),
    [("0123456789abcdef", "../x"), ("0123456789abcdef", ".."), ("../../etc", "x"), ("", "x")],
)
def test_unsafe_artifact_keys_are_refused(tmp_path: Path, segment: str, name: str) -> None:
    with pytest.raises(InvalidName):
        Store(tmp_path).artifact_key(1, segment, name)


def test_storage_keys_outside_the_store_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        Store(tmp_path / "store").artifact_path("../outside")
