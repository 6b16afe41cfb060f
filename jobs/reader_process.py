"""Reading a document in a process of its own, under a memory limit (``MAX_DOCUMENT_MEMORY``).

What a parser builds in memory is bounded by nothing in the file's size: one page of a 77 KB
PDF that shows a character 8 million times makes PDFium build 8 million text objects (over
4 GB); a PDF of 2 KB whose form XObjects draw each other 10 times over 8 levels, ten million; a
.docx of 6 MB unpacks to 200 MB of XML that python-docx's lxml tree turns into over 4 GB; one
HTML element with 6 million attributes, 1.4 GB (``benchmarks/hostile_memory.py``). No public
interface of PDFium tells before a page is loaded, and when an allocation fails PDFium aborts
the whole process: in the worker process, the job would end as ``worker_died`` and be retried.

So a PDF, .docx or HTML document is read in a reader process: a child forked from the worker
process (which has every parser loaded: nothing to import), kept for the documents that follow
and sent each one over its pipe, whose address space may grow by ``max_memory`` bytes
(``RLIMIT_AS``, set again before each document) over what it has when the document begins. Past
it, an allocation fails in the reader only: Python raises ``MemoryError``, lxml reports a
damaged file (or, for HTML, stops parsing without a word: :mod:`jobs.html_text` notices),
PDFium aborts. A failure after the reader's memory grew past half its limit is counted as
running out of it (``_NEAR_LIMIT``), and the job fails with ``too_much_memory`` and a sentence
naming the limit; below it, a reader that died of a signal crashed on the file
(``damaged_file``). Neither is retried: the same file would do the same again. The worker
process goes on, its own memory untouched. The reader never outlives the worker process
(``PR_SET_PDEATHSIG``, and it leaves when its pipe closes), and a job interrupted while it reads
(time limit, stop, hand-back at shutdown) kills it.

A reader is replaced — the next document gets a freshly forked one — after any answer but a
result or a refusal (ran out of memory, crashed, a bug), when it was interrupted, and when its
address space or resident memory grew over its life by :data:`RETIRE_SHARE` of the limit (what
documents left behind: heap glibc or Python keep, PDFium's caches). So the fork and the exit of
a process as large as the worker (≈ 12 ms of CPU, measured: issue 19) are paid once per reader,
not once per document, while a reader's memory stays within what it was forked with plus
``RETIRE_SHARE`` of the limit between documents, and plus the limit while it reads.

Work that needs no protection from the file and more memory than the child should have runs in
the worker process, asked for by the child (:func:`call_in_parent`): OCR. The child renders a
scanned page under its limit (PDFium is what a hostile file attacks) and hands the bitmap, at
most ``MAX_IMAGE_PIXELS``, to the worker process, where the OCR engine lives (loaded once per
worker process; onnxruntime reserves far more address space than it touches, and failed under
the child's limit).
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import resource
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable

from jobs.document_errors import DocumentError, DocumentTooLarge
from webapp.core.protocol.job_errors import WorkerProcessDied
from webapp.core.processes import die_with_parent

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Signals whose worker-process handlers must not run in the child (RQ's stop-job and time-limit
# handlers raise into the job), and the stop signals it ignores: a platform stops every process
# of a machine at once, and the worker hands its job back after SHUTDOWN_GRACE — killing the
# child then — rather than fail it because its reader died first.
_WORKER_SIGNALS = (signal.SIGUSR1, signal.SIGALRM)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A reader that failed — killed by a signal (PDFium aborts when an allocation fails) or with a
# "damaged file" (lxml's word for an allocation that failed) — after its memory grew by at least
# this share of the limit ran out of memory; below it, the file made it fail. An allocation that
# fails asks for room the rest of the limit cannot give: arrays grow by doubling, so a parser
# whose growth is under half its limit has not run out.
_NEAR_LIMIT = 0.5
# A reader process whose address space or resident memory grew, over its life, by this share of
# its limit over what it had when forked is replaced after its answer: what a document leaves
# behind (heap that glibc or Python keep, PDFium's caches) stays small, and the VmPeak and
# ru_maxrss read above, which are the process's whole life's, never carry another document's
# peak past _NEAR_LIMIT.
RETIRE_SHARE = 0.25
# Arguments of at least this many bytes (a document's) are sent as raw messages, not pickled.
_RAW_MIN = 64 * 1024
# A reader tells the worker process of a plain page read at most this often (seconds); a page
# with a stage (an OCR page: each one grows the job's time limit) and the last page always. The
# worker writes progress out every META_INTERVAL (0.5 s) anyway (jobs/tracking.py), and a message
# per page (pickled, sent, received, unpickled) was ≈ 7 % of the readers' samples on the corpus
# (py-spy; benchmarks/RESULTS.md, "What the speed targets of issue 19 ask of the service").
PAGE_MESSAGE_INTERVAL = 0.05
# In a reader process: the connection to the process that forked it (for call_in_parent).
_to_parent: Connection | None = None


def in_reader_process() -> bool:
    """Whether this process is a reader process (:func:`read_in_own_process`'s child)."""
    return _to_parent is not None


def call_in_parent(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` run by the process that forked this reader process, its return value
    here; in any other process, run here.

    The child waits for the answer: the parent runs the call between the child's messages, so
    calls are one at a time and memory holds one call's arguments (e.g. one rendered page).

    Args:
        function: a module-level function (sent by name); its arguments and return value are
            pickled across the pipe.

    Raises:
        DocumentError: what ``function`` raised in the parent (re-created here).
        RuntimeError: ``function`` raised anything else there (its type and message).
    """
    if _to_parent is None:
        return function(*args)
    _to_parent.send(("call", function, args))
    reply = _to_parent.recv()
    if reply[0] == "returned":
        return reply[1]
    if reply[0] == "refused":
        raise _document_error(*reply[1:])
    raise RuntimeError(f"{getattr(function, '__name__', function)} failed in the worker process: {reply[1]}")


def read_in_own_process(read: Callable[..., Any], *args: Any, max_memory: int, what: str = "document",
                        on_page: Callable[[int, int], None] | None = None) -> Any:
    """``read(*args, on_page=…)`` run in this process's reader process, whose address space may
    grow by at most ``max_memory`` bytes while it reads; its return value, or the
    :class:`DocumentError` it raised.

    The reader process is forked on first use and kept for the next documents (it is replaced
    after a failure, when it grew, or for another ``max_memory``: see the module's docstring). A
    call made while another thread of this process reads uses a reader process of its own, forked
    for that one call.

    Args:
        read: the reading function, a module-level function (sent by name); it must accept
            ``on_page`` (``on_page(done, total, stage)`` calls in the reader are passed on to the
            caller's ``on_page`` here, in order; of plain ``on_page(done, total)`` calls, the
            first, then one per ``PAGE_MESSAGE_INTERVAL`` seconds, and the last page's).
        args: its arguments, pickled to the reader process (a document's bytes: one copy).
        max_memory: bytes of address space the reader may add, for this call, to what it has when
            the call begins (``MAX_DOCUMENT_MEMORY`` megabytes; see :class:`jobs.extract.Limits`).
        what: the document's kind for the sentences, e.g. ``"PDF"``.
        on_page: progress callback, or ``None``.

    Returns:
        What ``read`` returned (pickled back from the reader).

    Raises:
        DocumentTooLarge: ``too_much_memory`` when the reader ran out of its ``max_memory``
            (``MAX_DOCUMENT_MEMORY``).
        DocumentError: what ``read`` raised (re-created with its message, code, setting and
            limit); ``damaged_file`` when the reader died without an answer (a parser crash).
        WorkerProcessDied: the reader was killed by SIGKILL (transient: the kind's retries).
        RuntimeError: ``read`` raised anything else (a bug): its type and message; the reader's
            traceback is logged here.
        OSError: no reader process could be forked (EAGAIN, ENOMEM).
    """
    own = _reader_lock.acquire(blocking=False)  # another thread of this process is reading: a one-off reader
    try:
        reader = _kept_reader(max_memory) if own else _Reader.start(max_memory)
        # The document's bytes go as raw messages after the request: pickled inside it, they
        # would be copied once more on each side (the pickle, then the unpickled object).
        raw = [index for index, arg in enumerate(args) if isinstance(arg, bytes) and len(arg) >= _RAW_MIN]
        request = ("read", read, tuple(None if index in raw else arg for index, arg in enumerate(args)), raw,
                   max_memory, on_page is not None)
        answer = None
        try:
            try:
                reader.connection.send(request)
            except (BrokenPipeError, ConnectionResetError):  # a kept reader that died between documents
                reader.stop()
                if own:
                    _forget_kept_reader()
                reader = _kept_reader(max_memory) if own else _Reader.start(max_memory)
                reader.connection.send(request)
            for index in raw:
                reader.connection.send_bytes(args[index])
            while True:
                try:
                    message = reader.connection.recv()
                except (EOFError, ConnectionResetError):  # the reader died without an answer
                    break
                if message[0] == "page":
                    if on_page:
                        on_page(*message[1:])
                    continue
                if message[0] == "call":
                    reader.connection.send(_run_call(message[1], message[2]))
                    continue
                answer = message
                break
        finally:
            if answer is None or answer[2] or not own:
                # Interrupted here (time limit, stop, hand-back: even mid-send), dead, retiring or
                # one-off: it goes, killed unless it answered.
                status, usage = reader.stop(kill=answer is None)
                if own:
                    _forget_kept_reader()
        if answer is not None:
            return _outcome(answer[1], max_memory, what)
        grown = usage.ru_maxrss * 1024 - reader.inherited_rss  # ru_maxrss: KiB
        return _died(os.waitstatus_to_exitcode(status), grown, max_memory, what)
    finally:
        if own:
            _reader_lock.release()


class _Reader:
    """A reader process forked from this one: its pid, this end of its pipe, the memory limit it
    was started for, and this process's resident memory when it was forked (bytes)."""

    def __init__(self, pid: int, connection: Connection, max_memory: int, inherited_rss: int) -> None:
        self.pid = pid
        self.connection = connection
        self.max_memory = max_memory
        self.inherited_rss = inherited_rss
        self.parent = os.getpid()

    @classmethod
    def start(cls, max_memory: int) -> "_Reader":
        """Fork a reader process (:func:`_serve`).

        Raises:
            OSError: no process to be had (EAGAIN, ENOMEM).
        """
        here, there = Pipe()  # duplex: the reader's calls are answered on it (call_in_parent)
        inherited_rss = _status_bytes("VmRSS")
        try:
            pid = os.fork()
        except OSError:  # the job fails as unexpected, with the reason
            here.close()
            there.close()
            raise
        if pid == 0:  # pragma: no cover - the reader (coverage does not follow os._exit)
            here.close()
            _serve(there, max_memory)
        there.close()
        return cls(pid, here, max_memory, inherited_rss)

    def alive(self) -> bool:
        """Whether the reader process has not ended (an ended one is left for :meth:`stop` to wait for)."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def stop(self, kill: bool = True) -> tuple[int, Any]:
        """Close the pipe (a reader waiting for a document exits), SIGKILL the reader when
        ``kill`` (one still reading), and wait for it. Returns ``os.wait4``'s status and usage."""
        self.connection.close()
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:  # already waited for by someone else (it was killed from outside)
            return signal.SIGKILL, resource.struct_rusage((0.0,) * 2 + (0,) * 14)
        return status, usage


# This process's kept reader process, and the lock of whichever thread uses it.
_kept: _Reader | None = None
_reader_lock = threading.Lock()


def _kept_reader(max_memory: int) -> _Reader:
    """This process's reader process, forked now if there is none (or it was forked by the process
    this one was forked from, or for another ``max_memory``)."""
    global _kept
    if _kept is not None and _kept.max_memory != max_memory:
        _kept.stop()
        _kept = None
    if _kept is not None and not _kept.alive():  # killed from outside between documents
        _kept.stop()
        _kept = None
    if _kept is None:
        _kept = _Reader.start(max_memory)
    return _kept


def _forget_kept_reader() -> None:
    global _kept
    _kept = None


def _forget_inherited_reader() -> None:
    """In a child forked from this process (a worker process of the pool, a reader): the parent's
    reader process is not this one's to use; its pipe is closed here, the reader stays the parent's."""
    global _kept, _reader_lock
    if _kept is not None:
        try:
            _kept.connection.close()
        except OSError:
            pass
    _kept = None
    _reader_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_reader)


def stop_reader() -> None:
    """Stop this process's kept reader process, if it has one (it would also stop by itself when
    this process exits: its pipe closes, and ``PR_SET_PDEATHSIG`` covers a kill)."""
    global _kept
    with _reader_lock:
        if _kept is not None:
            _kept.stop()
            _kept = None


def _run_call(function: Callable[..., Any], args: tuple) -> tuple:
    """A child's :func:`call_in_parent`, run here: the reply to send back."""
    try:
        return ("returned", function(*args))
    except DocumentError as exc:
        return ("refused", type(exc) is DocumentTooLarge, exc.message, exc.code,
                getattr(exc, "setting", None), getattr(exc, "limit", None))
    except Exception as exc:  # noqa: BLE001 - a bug: logged here, told to the child as a sentence
        log.exception("a reader process's call of %s failed", getattr(function, "__name__", function))
        return ("failed", f"{type(exc).__name__}: {exc}")


def _serve(connection: Connection, max_memory: int) -> None:  # pragma: no cover - runs in the reader
    """The reader process's whole life: its signals and death with the parent, then one document
    after the other until the pipe closes or it retires (a failure, or memory grown past
    :data:`RETIRE_SHARE` of ``max_memory``), then ``os._exit``."""
    global _to_parent
    code = 0
    _to_parent = connection
    try:
        for signum in _WORKER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        faulthandler.disable()  # PDFium's abort at the limit is an answer, not a "Fatal Python error" to log
        # Never collect what the worker process left: a connection in an unreachable cycle would
        # say goodbye to its server on the worker's behalf. What the reader makes is collected.
        gc.freeze()
        die_with_parent(signal.SIGKILL)
        inherited_limit = resource.getrlimit(resource.RLIMIT_AS)
        base_size, base_rss = _status_bytes("VmSize"), _status_bytes("VmRSS")
        while True:
            try:
                _, read, args, raw, limit, progress = connection.recv()
                if raw:
                    args = list(args)
                    for index in raw:
                        args[index] = connection.recv_bytes()
            except EOFError:  # the worker process closed the pipe: no more documents
                break
            answer = _read_one(connection, read, args, limit, progress)
            grown = max(_status_bytes("VmPeak") - base_size, _status_bytes("VmHWM") - base_rss)
            retire = answer[0] not in ("done", "refused") or grown >= RETIRE_SHARE * max_memory
            try:
                connection.send(("answer", answer, retire))
            except MemoryError:  # the answer itself (the text) does not fit in what is left
                connection.send(("answer", ("memory",), True))
                retire = True
            resource.setrlimit(resource.RLIMIT_AS, inherited_limit)  # between documents: no limit of one
            if retire:
                break
    except BaseException:  # noqa: BLE001 - nothing else to tell: the parent sees no answer
        code = 1
    finally:
        os._exit(code)


def _read_one(connection: Connection, read: Callable[..., Any], args: tuple, max_memory: int,
              progress: bool) -> tuple:  # pragma: no cover - runs in the reader
    """One document in the reader: its limit, the reading, the answer to send."""
    start = limit_address_space(max_memory)
    last_sent = [-PAGE_MESSAGE_INTERVAL]

    def on_page(done: int, total: int, *stage: str) -> None:
        now = time.monotonic()
        if stage or done >= total or now - last_sent[0] >= PAGE_MESSAGE_INTERVAL:
            last_sent[0] = now
            connection.send(("page", done, total, *stage))

    try:
        return ("done", read(*args, on_page=on_page if progress else None))
    except DocumentError as exc:
        # A parser that could not allocate says "damaged" (lxml: "unknown error"; libxml2's HTML
        # parser stops without a word): after growing past half the limit, it ran out. (VmPeak
        # is the reader's whole life's: one that grew past RETIRE_SHARE was replaced.)
        if exc.code == "damaged_file" and _status_bytes("VmPeak") - start >= _NEAR_LIMIT * max_memory:
            return ("memory",)
        return ("refused", type(exc) is DocumentTooLarge, exc.message, exc.code,
                getattr(exc, "setting", None), getattr(exc, "limit", None))
    except MemoryError:
        return ("memory",)
    except BaseException as exc:  # noqa: BLE001 - a bug: its traceback goes to the worker's log
        return ("crashed", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def limit_address_space(max_memory: int) -> int:
    """Let this process's address space grow by at most ``max_memory`` bytes from its size now
    (``RLIMIT_AS``; a lower limit already in force stays). Returns the size now in bytes.
    Linux: where ``/proc/self/status`` does not tell the size, nothing is limited (returns 0)."""
    size = _status_bytes("VmSize")
    if not size:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + max_memory
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return size


def _outcome(answer: tuple, max_memory: int, what: str) -> Any:
    kind = answer[0]
    if kind == "done":
        return answer[1]
    if kind == "refused":
        raise _document_error(*answer[1:])
    if kind == "memory":
        raise too_much_memory(max_memory, what)
    log.error("reading the %s failed in its own process:\n%s", what, answer[2])
    raise RuntimeError(f"reading the {what} failed in its own process: {answer[1]}")


def _document_error(too_large: bool, message: str, code: str, setting: str | None,
                    limit: int | None) -> DocumentError:
    """A :class:`DocumentError` (or :class:`DocumentTooLarge`) re-created from its parts."""
    if too_large:
        return DocumentTooLarge(message, code=code, setting=setting, limit=limit)
    return DocumentError(message, code=code)


def _died(exitcode: int, grown: int, max_memory: int, what: str) -> Any:
    """The error for a child that died without an answer: SIGKILL from outside (the kernel's OOM
    killer, an operator) is the machine's trouble, retried; another signal after growing by at
    least half its limit (PDFium aborts when an allocation fails) is the document's memory; any
    other death is the file crashing its parser."""
    if exitcode == -signal.SIGKILL:
        raise WorkerProcessDied(f"the process reading this {what} was killed (SIGKILL); the machine may have run "
                                "out of memory")
    if exitcode < 0 and grown >= _NEAR_LIMIT * max_memory:
        raise too_much_memory(max_memory, what)
    how = _signal_name(-exitcode) if exitcode < 0 else f"exit status {exitcode}"
    raise DocumentError(f"the {what} could not be read: its reader crashed ({how}), so the file is damaged "
                        "or made to crash it", code="damaged_file")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def too_much_memory(max_memory: int, what: str = "document") -> DocumentTooLarge:
    """The error of a document whose reading needs more than ``max_memory`` bytes."""
    megabytes = max_memory // MB
    return DocumentTooLarge(
        f"Reading the {what} needed more than {megabytes:,} MB of memory; the limit is {megabytes:,} MB "
        "(MAX_DOCUMENT_MEMORY), so it was stopped.",
        code="too_much_memory", setting="MAX_DOCUMENT_MEMORY", limit=megabytes,
    )


def _status_bytes(field: str) -> int:
    """A size of this process from ``/proc/self/status`` in bytes (``VmSize``, ``VmPeak``, ``VmRSS``);
    0 if absent."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
