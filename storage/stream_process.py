"""A stream's batches made in a forked child process and handed over through shared memory.

Reading zarr chunks is mostly Python (zarr's async machinery), so decode threads in the
consumer's process hold the GIL often enough to slow a Python training loop down: a
consumer of 50k jets/s took twice as long per step and woke late from its waits
(``benchmarks/loader.py``). :class:`BatchProcess` moves the whole batch making (reads,
decompression, shuffle buffer, gathers) to one child process, forked from the consumer so it
inherits the opened stream, and keeps it for the stream's lifetime, so its cache and its
read-ahead of the next epoch survive between epochs. Since chunks on a local disk are read
straight from their shard files (:mod:`jetscan.storage.shardread`, which releases the GIL),
``data.decode_process: auto`` uses the child only for streams whose reads still hold it
(computed on the fly, or read through zarr): for the others, threads in the consumer's
process fed a 50k jets/s consumer at 0.955 of the in-memory rate (median of 14 rounds) against
0.81-0.88 with the child.

Batches travel through a ring of ``depth`` slots in an anonymous shared mapping (made before
the fork, so nothing is named, left behind, or tracked by another process), each laid out once from the
batch schema (array name, dtype, shape of a row) with a small header (what the slot holds,
its number of rows, the child's memory figures). Two semaphores count the filled and the
free slots, so handing a batch over costs two semaphore operations and one copy out of the
ring into new arrays (never views of it). The batches and their order are those of the
stream made in-process. The pipe carries only the rare messages: start an epoch, an
exception, quit.

Errors in the child are raised in the consumer with their type; a child that dies is one
clear :class:`StorageError`.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
import pickle
import resource
import traceback
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np

from jetscan.core.errors import StorageError

__all__ = ["BatchProcess", "fork_available", "STAT_KEYS"]

# the child's JetStream.memory() figures, sent with every slot
STAT_KEYS = ("cache_bytes", "cache_chunks", "buffer_bytes", "queue_bytes", "peak_bytes", "cache_budget_bytes",
             "working_set_bytes", "limit_bytes", "process_peak_rss_bytes")
_HEADER_WORDS = 3 + len(STAT_KEYS)  # kind, rows, epoch, stats
_BATCH, _END, _ERROR, _STOPPED = 1, 2, 3, 4
_STOP, _QUIT = 0, 1  # words of the control block


def fork_available() -> bool:
    """Whether this platform forks (Linux: yes; macOS and Windows: the stream stays in-process)."""
    return "fork" in multiprocessing.get_all_start_methods()


class _Ring:
    """``depth`` slots in one shared-memory block after a control block; each slot is a header
    of int64 words then one region per array, at most ``max_rows`` rows each."""

    def __init__(self, schema: Sequence[tuple[str, np.dtype, tuple]], max_rows: int, depth: int):
        self.schema = [(k, np.dtype(d), tuple(shape)) for k, d, shape in schema]
        self.row_items = [math.prod(shape) for _, _, shape in self.schema]  # elements per row, per array
        self.max_rows, self.depth = int(max_rows), int(depth)
        self.offsets, off = [], 8 * _HEADER_WORDS
        for (_, dtype, _), items in zip(self.schema, self.row_items):
            off = (off + 63) // 64 * 64
            self.offsets.append(off)
            off += self.max_rows * items * dtype.itemsize
        self.slot_bytes = (off + 63) // 64 * 64
        # anonymous and shared: the forked child sees the same pages; nothing named to leak or clean up
        self.buf = mmap.mmap(-1, 64 + self.depth * self.slot_bytes)
        self.control = np.frombuffer(self.buf, np.int64, 8, 0)
        self.control[:] = 0

    def header(self, slot: int) -> np.ndarray:
        return np.frombuffer(self.buf, np.int64, _HEADER_WORDS, 64 + slot * self.slot_bytes)

    def view(self, slot: int, i: int, rows: int) -> np.ndarray:
        _, dtype, shape = self.schema[i]
        n = rows * self.row_items[i]
        return np.frombuffer(self.buf, dtype, n, 64 + slot * self.slot_bytes + self.offsets[i]).reshape(rows, *shape)

    def write(self, slot: int, kind: int, epoch: int, batch: dict | None, stats: dict) -> None:
        rows = 0
        if batch is not None:
            rows = len(next(iter(batch.values())))
            if rows > self.max_rows or list(batch) != [k for k, _, _ in self.schema]:
                raise StorageError(f"a batch of {rows} rows with arrays {list(batch)} does not fit the decode "
                                   f"process's slots ({self.max_rows} rows of {[k for k, _, _ in self.schema]}): a bug")
            for i, (key, dtype, shape) in enumerate(self.schema):
                arr = batch[key]
                if arr.dtype != dtype or arr.shape[1:] != shape:
                    raise StorageError(f"batch array {key!r} is {arr.dtype} {arr.shape[1:]}, the decode process's "
                                       f"slot holds {dtype} {shape}: a bug")
                self.view(slot, i, rows)[...] = arr
        h = self.header(slot)
        h[3:] = [int(stats.get(k, 0)) for k in STAT_KEYS]
        h[2] = epoch
        h[1] = rows
        h[0] = kind

    def read(self, slot: int, epoch: int) -> tuple[int, int, dict | None, dict]:
        """(kind, epoch, batch, stats) of a slot; the batch only when it is of ``epoch``."""
        h = self.header(slot).copy()
        kind, rows, tag = int(h[0]), int(h[1]), int(h[2])
        stats = dict(zip(STAT_KEYS, (int(v) for v in h[3:])))
        batch = None
        if kind == _BATCH and tag == epoch:  # one copy of the slot's used bytes; the arrays are views of that private copy
            start = 64 + slot * self.slot_bytes
            stop = self.offsets[-1] + rows * self.row_items[-1] * self.schema[-1][1].itemsize
            own = np.frombuffer(self.buf, np.uint8, stop, start).copy()
            batch = {}
            for (key, dtype, shape), off, items in zip(self.schema, self.offsets, self.row_items):
                n = rows * items
                batch[key] = own[off: off + n * dtype.itemsize].view(dtype).reshape(rows, *shape)
        return kind, tag, batch, stats


class BatchProcess:
    """One child process making the epochs of ``make_epoch(epoch) -> iterator of batches``.

    A batch is a dict of numpy arrays, in ``schema`` order (``(name, dtype, row shape)``),
    of at most ``max_rows`` rows. ``stats()`` gives the child's ``stats_fn()`` figures (its
    JetStream.memory()) as of the last slot it filled, and its peak resident memory.
    """

    def __init__(self, make_epoch: Callable[[int], Iterator[dict]], stats_fn: Callable[[], dict], *,
                 schema: Sequence[tuple[str, np.dtype, tuple]], max_rows: int, depth: int):
        ctx = multiprocessing.get_context("fork")
        self._ring = _Ring(schema, max_rows, max(2, int(depth)))
        self._filled = ctx.Semaphore(0)
        self._free = ctx.Semaphore(self._ring.depth)
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, name="jetstream-decode", daemon=True,
                                 args=(make_epoch, stats_fn, child_conn, self._ring, self._filled, self._free))
        self._proc.start()
        child_conn.close()
        self.pid = os.getpid()  # the process that owns the ring (a forked copy of this object does not)
        self._next = 0  # the slot the next message is in (the child fills them in the same order)
        self._taken = 0  # slots read and not handed back yet
        self._stats: dict = {}
        self._busy = False
        self._finalizer = weakref.finalize(self, _shutdown, self._conn, self._proc, self._ring, self.pid)

    @property
    def busy(self) -> bool:
        """Whether an epoch is being read from it now."""
        return self._busy

    def stats(self) -> dict:
        return dict(self._stats)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of one epoch, made by the child; leaving early stops the child's epoch."""
        if self._busy:
            raise StorageError("a JetStream epoch is already being read from its decode process: finish it first")
        self._busy = True
        epoch = int(epoch)
        done = False
        try:
            self._send(("epoch", epoch))
            while True:
                kind, batch = self._take(epoch)
                if kind == _BATCH:
                    yield batch
                elif kind == _END:
                    done = True
                    return
                elif kind == _ERROR:
                    done = True
                    raise _rebuild(*self._recv())
                else:
                    raise StorageError(f"the JetStream decode process sent slot kind {kind}: a bug")
        finally:
            if not done:
                self._stop_epoch(epoch)
            self._busy = False

    def close(self) -> None:
        self._finalizer()

    # ----------------------------------------------------------------- internals
    def _take(self, epoch: int) -> tuple[int, dict | None]:
        """The next slot of ``epoch`` (slots of another epoch, made ahead for a guess that was wrong, are skipped)."""
        while True:
            while not self._filled.acquire(timeout=1.0):
                if not self._proc.is_alive():
                    raise self._died()
            slot = self._next % self._ring.depth
            self._next += 1
            kind, tag, batch, stats = self._ring.read(slot, epoch)
            self._give_back(kind)
            if tag == epoch:
                self._stats = stats
                return kind, batch
            if kind == _ERROR:
                self._recv()  # the error of an epoch not asked for

    def _give_back(self, kind: int) -> None:
        self._taken += 1
        if self._taken * 2 >= self._ring.depth or kind != _BATCH:
            # hand slots back in groups of half the ring: the child, waiting when the ring is full, wakes
            # once per group instead of once per batch (a wake-up costs the consumer's core a switch)
            for _ in range(self._taken):
                self._free.release()
            self._taken = 0

    def _stop_epoch(self, epoch: int) -> None:
        """Ask the child to drop the epoch and wait until it has (the batches in flight are discarded)."""
        self._ring.control[_STOP] = epoch + 1
        try:
            while True:
                kind, _ = self._take(epoch)
                if kind == _ERROR:
                    self._recv()
                if kind in (_END, _ERROR, _STOPPED):
                    return
        except StorageError:
            pass
        finally:
            self._ring.control[_STOP] = 0

    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except (BrokenPipeError, OSError) as exc:
            raise self._died() from exc

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died() from exc

    def _died(self) -> StorageError:
        self._proc.join(timeout=1.0)
        return StorageError(
            f"the JetStream decode process (pid {self._proc.pid}) died (exit code {self._proc.exitcode}): "
            "out of memory? Lower data.cache_mb, or set data.decode_process: false to read in this process"
        )


def _shutdown(conn, proc, ring: _Ring, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked copy: the ring and the child are its parent's
        return
    ring.control[_QUIT] = 1
    try:
        conn.send(("quit",))
    except (BrokenPipeError, OSError):
        pass
    proc.join(timeout=5.0)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=5.0)
    conn.close()
    del ring.control
    try:
        ring.buf.close()
    except BufferError:  # a view still alive somewhere: the mapping goes when it does
        pass


def _rebuild(exc_bytes: bytes | None, text: str) -> BaseException:
    """The child's exception, with its type when it pickles (else a StorageError with its traceback)."""
    try:
        exc = pickle.loads(exc_bytes) if exc_bytes else None
    except Exception:  # noqa: BLE001 - an exception type that does not unpickle
        exc = None
    if isinstance(exc, BaseException):
        return exc
    return StorageError(f"the JetStream decode process failed:\n{text}")


# ----------------------------------------------------------------------- the child
class _Quit(Exception):
    pass


class _Child:
    """The child's side: runs the epochs asked for, then, while the consumer says nothing, the next
    one (its first batches are then ready when the consumer asks for it, as epochs usually go)."""

    def __init__(self, make_epoch, stats_fn, conn, ring: _Ring, filled, free):
        self.parent = os.getppid()  # the consumer; when it dies (SIGKILL too) the child leaves
        self.make_epoch, self.stats_fn, self.conn = make_epoch, stats_fn, conn
        self.ring, self.filled, self.free = ring, filled, free
        self.written = 0
        self.inbox = None  # a message taken from the pipe while making a guessed epoch

    def serve(self) -> None:
        ahead_done = None  # a guessed epoch made to its end before the consumer asked for it
        while True:
            msg, self.inbox = (self.inbox or self._recv()), None
            if msg[0] == "quit":
                return
            if msg[0] != "epoch":
                continue
            epoch = msg[1]
            outcome = "end" if ahead_done == epoch else self.run(epoch, asked=True)
            ahead_done = None
            while outcome == "end" and self.inbox is None and not self.conn.poll():
                epoch += 1  # guess: the next epoch
                outcome = self.run(epoch, asked=False)
                if outcome == "end-unasked":
                    ahead_done = epoch

    def _recv(self):
        while not self.conn.poll(0.5):
            self._check_parent()
        return self.conn.recv()

    def _check_parent(self) -> None:
        if os.getppid() != self.parent or self.ring.control[_QUIT]:
            raise _Quit

    def run(self, epoch: int, *, asked: bool) -> str:
        """Fill slots with one epoch's batches, then an end (error, stopped) slot.

        Returns "end", "end-unasked" (a guessed epoch made whole before it was asked for),
        "stopped" (the consumer left it, or asked for another epoch than the guess: the message
        is kept in ``inbox``) or "error"."""
        gen = self.make_epoch(epoch)
        try:
            for batch in gen:
                if not asked:
                    asked = self._confirmed(epoch)
                    if asked is None:
                        self.put(_STOPPED, epoch, None)
                        return "stopped"
                if self.ring.control[_STOP] == epoch + 1:
                    self.put(_STOPPED, epoch, None)
                    return "stopped"
                self.put(_BATCH, epoch, batch)
            if not asked:
                asked = self._confirmed(epoch)
                if asked is None:
                    self.put(_STOPPED, epoch, None)
                    return "stopped"
            self.put(_END, epoch, None)
            return "end" if asked else "end-unasked"
        except (_Quit, KeyboardInterrupt, EOFError, BrokenPipeError):
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            text = traceback.format_exc()
            try:
                blob = pickle.dumps(exc)
            except Exception:  # noqa: BLE001
                blob = None
            self.conn.send((blob, text))  # before the slot that tells the consumer to read it
            self.put(_ERROR, epoch, None)
            return "error"
        finally:
            gen.close()

    def _confirmed(self, epoch: int) -> bool | None:
        """While making a guessed epoch: True once the consumer asked for it, None if it asked for
        something else (kept in ``inbox``), False while it says nothing."""
        if self.inbox is None and self.conn.poll():
            self.inbox = self.conn.recv()
        if self.inbox is None:
            return False
        if self.inbox == ("epoch", epoch):
            self.inbox = None
            return True
        if self.inbox[0] == "quit":
            raise _Quit
        return None

    def put(self, kind: int, epoch: int, batch: dict | None) -> None:
        while not self.free.acquire(timeout=0.05):
            self._check_parent()
        self.ring.write(self.written % self.ring.depth, kind, epoch, batch, _stats(self.stats_fn))
        self.written += 1
        self.filled.release()
        if self.written == 1:  # until its first batch the consumer only waits: every CPU was for the child
            _away_from_parent()


def _child_main(make_epoch, stats_fn, conn, ring: _Ring, filled, free) -> None:
    try:
        _Child(make_epoch, stats_fn, conn, ring, filled, free).serve()
    except (EOFError, BrokenPipeError, KeyboardInterrupt, _Quit):
        return


def _away_from_parent() -> None:
    """Keep this child off the CPU its consumer runs on (when it may run elsewhere).

    Woken by the consumer's semaphore posts, a child is placed by Linux's wake-affine rule on the
    waker's CPU: it then preempts the training loop it feeds, and the loop's steps and waits run
    late. On 2 cores ``benchmarks/loader.py``'s consumer went from 40.7-41.9k to 42.3-43.5k jets/s
    in warm epochs (the in-memory side: 44.3k) with the child kept off it. Called once the first
    batch is out: until then the consumer only waits, and the first shuffle buffer fills faster
    on every CPU. A consumer allowed a single CPU leaves its child there too."""
    try:
        cpus = os.sched_getaffinity(0)
        with open(f"/proc/{os.getppid()}/stat") as f:  # field 39: the CPU the process last ran on
            cpu = int(f.read().rsplit(")", 1)[1].split()[36])
        rest = cpus - {cpu}
        if rest:
            os.sched_setaffinity(0, rest)
    except (AttributeError, OSError, ValueError, IndexError):  # not Linux, or /proc unreadable: stay put
        return


def _stats(stats_fn) -> dict:
    out = dict(stats_fn())
    out["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return out
