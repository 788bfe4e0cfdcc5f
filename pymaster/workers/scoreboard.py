"""The scoreboard: one shared-memory slot per worker, written by workers, read by the master.

The table lives in a memfd so that both forked Python workers and exec'd Perl workers can map
it (Perl gets the fd number in PYMASTER_SCOREBOARD_FD). Slot layout, little-endian, 256 bytes:

    offset size  field
    0      u32   pid
    4      u32   state         0 starting, 1 idle (accepting), 2 busy, 3 stopping, 4 paused
    8      u64   requests      completed requests since spawn
    16     f64   req_start     epoch seconds the current request started, 0.0 when idle
    24     u64   exceptions
    32     u64   tx            response bytes sent
    40     f64   running_time  seconds spent in requests, cumulative
    48     f64   avg_rt        seconds, moving average of response time
    56     f64   last_spawn    epoch seconds
    64     192s  request       "METHOD URI" of the current request, NUL padded

A worker writes its slot at request start and end; the master never takes a lock.
After the last slot, one more 256-byte block holds the master's state as a u32 at its start
(0 running, 1 reloading, 2 stopping: a stopping master wants workers to drain the backlog)
and, as the next u32, the highest worker number in use (readers need not scan every slot).

With --threads N > 1, a second memfd holds N core slots per worker (worker w, core k at
((w - 1) * N + k) * 256), one per request thread, 256 bytes each:

    offset size  field
    0      u64   requests      completed by this core since the worker's spawn
    8      f64   req_start     epoch seconds the core's current request started, 0.0 when idle
    16     u32   pid           the worker that wrote it (a respawned worker's cores start afresh)
    64     192s  request       "METHOD URI" of the core's current request, NUL padded

The worker slot then carries the worker's totals and BUSY while any core is; harakiri and the
stats `cores` array read the core slots. Perl workers (single-threaded) never see this table.
"""

from __future__ import annotations

import mmap
import os
import struct

SLOT_SIZE = 256
HEAD = struct.Struct("<IIQdQQddd")
REQ_OFFSET = HEAD.size
REQ_SIZE = SLOT_SIZE - REQ_OFFSET

STARTING, IDLE, BUSY, STOPPING, PAUSED = range(5)
MASTER_RUNNING, MASTER_RELOADING, MASTER_STOPPING = range(3)

_STATE = struct.Struct("<I")
_BEGIN = struct.Struct("<Id")  # state, req_start (offsets 4 and 16 are not contiguous)
_F64 = struct.Struct("<d")


class Slot:
    """A view of one worker's slot; the worker-side writers are on the hot path."""

    __slots__ = ("mm", "off")

    def __init__(self, mm: mmap.mmap, index: int):
        self.mm = mm
        self.off = index * SLOT_SIZE

    # -- writers (worker side) ------------------------------------------------------
    def reset(self, pid: int, now: float) -> None:
        HEAD.pack_into(self.mm, self.off, pid, STARTING, 0, 0.0, 0, 0, 0.0, 0.0, now)
        self.mm[self.off + REQ_OFFSET : self.off + SLOT_SIZE] = b"\0" * REQ_SIZE

    def set_state(self, state: int) -> None:
        _STATE.pack_into(self.mm, self.off + 4, state)

    def begin(self, now: float, what: bytes) -> None:
        off = self.off
        what = what[: REQ_SIZE - 1]
        self.mm[off + REQ_OFFSET : off + REQ_OFFSET + len(what) + 1] = what + b"\0"
        _F64.pack_into(self.mm, off + 16, now)
        _STATE.pack_into(self.mm, off + 4, BUSY)

    def end(self, elapsed: float, tx: int, exception: bool, state: int = IDLE) -> None:
        off = self.off
        pid, _state, requests, _start, exc, total_tx, running, avg, spawn = HEAD.unpack_from(
            self.mm, off
        )
        requests += 1
        avg = elapsed if requests == 1 else avg + (elapsed - avg) / min(requests, 100)
        HEAD.pack_into(
            self.mm,
            off,
            pid,
            state,
            requests,
            0.0,
            exc + (1 if exception else 0),
            total_tx + tx,
            running + elapsed,
            avg,
            spawn,
        )

    # -- readers (master side) ------------------------------------------------------
    def read(self) -> dict:
        pid, state, requests, start, exc, tx, running, avg, spawn = HEAD.unpack_from(
            self.mm, self.off
        )
        raw = self.mm[self.off + REQ_OFFSET : self.off + SLOT_SIZE]
        return {
            "pid": pid,
            "state": state,
            "requests": requests,
            "req_start": start,
            "exceptions": exc,
            "tx": tx,
            "running_time": running,
            "avg_rt": avg,
            "last_spawn": spawn,
            "request": raw.split(b"\0", 1)[0].decode("latin-1"),
        }


_CORE = struct.Struct("<Qd")  # requests, req_start
_U32 = struct.Struct("<I")


class CoreSlot:
    """One request thread's slot (see the module doc); written only by its own thread."""

    __slots__ = ("mm", "off", "requests")

    def __init__(self, mm: mmap.mmap, index: int):
        self.mm = mm
        self.off = index * SLOT_SIZE
        self.requests = 0

    def reset(self, pid: int) -> None:
        self.requests = 0
        self.mm[self.off : self.off + SLOT_SIZE] = b"\0" * SLOT_SIZE
        _U32.pack_into(self.mm, self.off + 16, pid)

    def begin(self, now: float, what: bytes) -> None:
        off = self.off
        what = what[: REQ_SIZE - 1]
        self.mm[off + REQ_OFFSET : off + REQ_OFFSET + len(what) + 1] = what + b"\0"
        _CORE.pack_into(self.mm, off, self.requests, now)

    def end(self) -> None:
        self.requests += 1
        _CORE.pack_into(self.mm, self.off, self.requests, 0.0)

    def read(self) -> dict:
        requests, start = _CORE.unpack_from(self.mm, self.off)
        pid = _U32.unpack_from(self.mm, self.off + 16)[0]
        raw = self.mm[self.off + REQ_OFFSET : self.off + SLOT_SIZE]
        return {
            "pid": pid,
            "requests": requests,
            "req_start": start,
            "request": raw.split(b"\0", 1)[0].decode("latin-1") if start else "",
        }


class Scoreboard:
    """The whole table: `slots` slots in a memfd-backed shared mapping."""

    def __init__(self, slots: int, cores: int = 1):
        self.slots = slots
        self.cores = max(1, cores)
        self.core_fd = -1
        self.core_mm: mmap.mmap | None = None
        if self.cores > 1:  # --threads: one slot per request thread, in its own memfd
            self.core_fd = os.memfd_create("pymaster-cores")
            csize = max(1, slots) * self.cores * SLOT_SIZE
            os.ftruncate(self.core_fd, csize)
            self.core_mm = mmap.mmap(
                self.core_fd, csize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        self.fd = os.memfd_create(
            "pymaster-scoreboard"
        )  # CLOEXEC; exec'd workers get it made inheritable
        size = (max(1, slots) + 1) * SLOT_SIZE
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.master_offset = max(1, slots) * SLOT_SIZE

    def slot(self, index: int) -> Slot:
        if not 0 <= index < self.slots:
            raise IndexError(f"scoreboard slot {index} out of range 0..{self.slots - 1}")
        return Slot(self.mm, index)

    def core(self, index: int, core: int) -> CoreSlot:
        """Worker slot `index`'s request thread `core` (only with cores > 1)."""
        if self.core_mm is None or not 0 <= core < self.cores:
            raise IndexError(f"no core {core} in a scoreboard of {self.cores} core(s) per worker")
        self.slot(index)  # range check
        return CoreSlot(self.core_mm, index * self.cores + core)

    def read_cores(self, index: int, pid: int) -> list[dict] | None:
        """The cores of worker slot `index` as written by `pid`; None without threads."""
        if self.core_mm is None:
            return None
        out = []
        for k in range(self.cores):
            info = self.core(index, k).read()
            if info["pid"] != pid:
                info = {"pid": pid, "requests": 0, "req_start": 0.0, "request": ""}
            out.append(info)
        return out

    @property
    def master_state(self) -> int:
        return _STATE.unpack_from(self.mm, self.master_offset)[0]

    @master_state.setter
    def master_state(self, state: int) -> None:
        _STATE.pack_into(self.mm, self.master_offset, state)

    @property
    def highest(self) -> int:
        return _STATE.unpack_from(self.mm, self.master_offset + 4)[0]

    @highest.setter
    def highest(self, number: int) -> None:
        _STATE.pack_into(self.mm, self.master_offset + 4, min(number, self.slots))

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)
        if self.core_mm is not None:
            self.core_mm.close()
            os.close(self.core_fd)
