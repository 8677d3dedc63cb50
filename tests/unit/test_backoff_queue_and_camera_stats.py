"""The one backoff, the one drop-oldest queue, and camera stats written by several threads at once."""

import threading

import pytest

from services.ingest.camera import CameraStats
from services.shared.backoff import Backoff
from services.shared.boundedqueue import DropOldestQueue


def test_backoff_doubles_to_its_ceiling_and_starts_again_after_a_reset():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    many = Backoff(1.0, 30.0, failures=10_000)  # a contact down for days: no overflow
    assert many.next_delay() == 30.0


def test_jitter_draws_between_half_and_all_of_the_delay():
    delays = [Backoff(2.0, 60.0, jitter=True, failures=3).next_delay() for _ in range(200)]
    assert all(8.0 <= d <= 16.0 for d in delays) and len(set(delays)) > 100


def test_a_full_queue_drops_its_oldest_or_waits_for_room():
    queue: DropOldestQueue[int] = DropOldestQueue(2)
    assert queue.put(1) is None and queue.put(2) is None
    assert queue.put(3) == 1 and len(queue) == 2
    stop = threading.Event()
    waited: list[int | None] = []
    writer = threading.Thread(target=lambda: waited.append(queue.put(4, wait_unless=stop)))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive(), "a file's reader waits for room rather than drop a frame"
    assert queue.take() == 2
    writer.join(5)
    assert waited == [None] and queue.take_all() == [3, 4] and queue.take() is None
    queue.close()
    assert queue.get() is None
    with pytest.raises(ValueError):
        DropOldestQueue(0)


def test_camera_stats_lose_no_count_when_threads_write_at_once():
    stats = CameraStats(store_id="s", source="rtsp://cam")
    per_thread = 20_000

    def reader() -> None:
        for i in range(per_thread):
            stats.frame_read(float(i), i, gap_s=None)
            stats.frame_dropped("undecodable")

    def processor() -> None:
        for _ in range(per_thread):
            stats.frame_dropped("processing_error")
            stats.frame_queued(heartbeat=False, keyframe=True)

    def sender() -> None:
        for _ in range(per_thread):
            stats.frame_done(10, None)
            stats.frame_done(10, "delivery_failed: broker down")

    threads = [threading.Thread(target=work) for work in (reader, processor, sender)]
    for thread in threads:
        thread.start()
    snapshots = [stats.snapshot(queue_depth=0) for _ in range(200)]  # the HTTP thread reads meanwhile
    for thread in threads:
        thread.join()
    final = stats.snapshot(queue_depth=0)
    assert final["dropped"] == {"undecodable": per_thread, "processing_error": per_thread, "delivery_failed": per_thread}
    assert final["frames_read"] == per_thread and final["next_sequence"] == per_thread == final["keyframes"]
    assert final["frames_published"] == per_thread and final["bytes_published"] == 10 * per_thread
    assert all(s["frames_published"] <= final["frames_published"] for s in snapshots)


def test_a_camera_that_ends_keeps_a_failure_and_says_how_it_ended():
    stats = CameraStats(store_id="s", source="file.mp4")
    stats.set_state("connected")
    assert stats.connected_since_ms > 0
    stats.end(finished=True, stopped=False)
    assert stats.state == "finished"
    stats.set_state("failed", "camera c: gone")
    stats.end(finished=False, stopped=True)
    assert (stats.state, stats.last_error) == ("failed", "camera c: gone")
    stats.set_state("reconnecting", "timeout", reconnect=True)
    assert stats.reconnects == 1
