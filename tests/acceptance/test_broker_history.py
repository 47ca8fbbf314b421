"""The broker loses the tail of its log (SPEC §4): Redis killed, its append-only file cut back to
an earlier point, restarted, as after a crash with `appendfsync everysec`, a restore of an older
file or a failover to a replica that was behind.

What was lost cannot be brought back, and `received` goes back with it. What must hold: every
event accepted after the restart is stored, and an alarm names the loss (before the history
check, nothing said anything: received 5, stored 10, pending 0, forever).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from services.stack.local import LocalStack
from tests.acceptance.helpers import freeze, local_stack, publish, thaw, wait_for


def incremental_aof(stack: LocalStack) -> Path:
    """Redis 7 keeps its append-only file as a base and increments: the writes since the base
    are in the one increment."""
    [increment] = (stack.redis.data_dir / "appendonlydir").glob("*.incr.aof")
    return increment


def mark(stack: LocalStack) -> int:
    with psycopg.connect(stack.settings.database_url) as sql:
        row = sql.execute("SELECT mark FROM streams WHERE name = %s",
                          [stack.settings.stream_key]).fetchone()
    return int(row[0]) if row else 0


def marked_after(stack: LocalStack, seen: int) -> int:
    """Wait for a housekeeping round to write a newer history mark (Redis, then the store)."""
    wait_for(lambda: mark(stack) > seen, what="a housekeeping round after the drain",
             timeout_s=30)
    return mark(stack)


def test_a_redis_restarted_from_a_truncated_log_raises_an_alarm_and_stores_every_new_event(
        scratch: Path) -> None:
    # appendfsync always: the only loss in this test is the one it makes.
    with local_stack(scratch, redis_appendfsync="always", consumers=2) as stack:
        first = publish(stack, "--events", "2000", "--duplicates", "0.3", "--seed", "1")
        stack.wait_drained(timeout_s=60)
        marked_after(stack, 0)
        # The point the broker will go back to: entries, counts and marks up to here survive.
        cut = os.path.getsize(incremental_aof(stack))
        lost = publish(stack, "--events", "1000", "--duplicates", "0", "--seed", "2")
        stack.wait_drained(timeout_s=60)
        marked_after(stack, mark(stack))

        # The consumers stay frozen until the new events are in: their first history check
        # after the restart then finds the log's end moved past every settled position again,
        # and only the history mark can tell of the loss. Left running, they raced the
        # publisher: a check before its first append found the log's end behind too, and that
        # sign's message replaced the mark's (lost about half the time on Valkey 9).
        consumers = [process for name, process in stack.processes.items()
                     if name.startswith("consumer")]
        for process in consumers:
            freeze(process)
        stack.redis.kill()
        os.truncate(incremental_aof(stack), cut)
        stack.redis.start()

        after = publish(stack, "--events", "1000", "--duplicates", "0.3", "--seed", "3")
        assert after["events_accepted"] == 1000
        for process in consumers:
            thaw(process)
        stats = stack.wait_drained(timeout_s=60)
        wait_for(lambda: bool(stack.stats()["alarms"]), what="the alarm", timeout_s=30)
        stats = stack.stats()

    # Every event accepted after the restart is stored, and nothing before it was unstored.
    assert stats["unique_processed"] == (first["unique_keys"] + lost["unique_keys"]
                                         + after["unique_keys"])
    # `received` lost the 1000 of the lost part: the balance is off by exactly them ...
    assert stats["received"] == 3000
    settled = stats["unique_processed"] + stats["duplicate_dropped"] + stats["dead_lettered"]
    assert settled - stats["received"] == 1000
    # ... and an alarm says so.
    kinds = {alarm["kind"]: alarm["message"] for alarm in stats["alarms"]}
    assert "broker_history_lost" in kinds, stats["alarms"]
    assert "went back in its history" in kinds["broker_history_lost"]
