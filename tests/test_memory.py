"""The memory planner's reading of the available memory: fresh enough, and not re-read on every small call."""

from __future__ import annotations

from tfpartials import _memory


def test_available_memory_is_read_at_most_every_quarter_second(monkeypatch):
    readings = iter([8 << 30, 2 << 30])
    monkeypatch.setattr(_memory, "_read_available_memory", lambda: next(readings))
    monkeypatch.setattr(_memory, "_LAST_READING", [float("-inf"), 0])
    clock = [100.0]
    monkeypatch.setattr(_memory, "_clock", lambda: clock[0])
    assert _memory.available_memory() == 8 << 30
    clock[0] += 0.2
    assert _memory.available_memory() == 8 << 30          # reused
    assert _memory.default_budget() == 4 << 30
    clock[0] += 0.1
    assert _memory.available_memory() == 2 << 30          # read again after 0.25 s
    assert _memory.default_budget() == 1 << 30


def test_the_reading_is_at_most_what_the_kernel_reports_available():
    value = _memory._read_available_memory()
    assert isinstance(value, int) and value > 0
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return  # no /proc/meminfo: nothing independent to compare with
    assert value <= 1.1 * kib * 1024  # the cgroup limit can only lower it (10%: memory moves between reads)
