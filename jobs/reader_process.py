"""Reading a document in a process of its own, under a memory limit (``MAX_DOCUMENT_MEMORY``).

What a parser builds in memory is bounded by nothing in the file's size: one page of a 77 KB
PDF that shows a character 8 million times makes PDFium build 8 million text objects (over
4 GB); a PDF of 2 KB whose form XObjects draw each other 10 times over 8 levels, ten million; a
.docx of 6 MB unpacks to 200 MB of XML that python-docx's lxml tree turns into over 4 GB; one
HTML element with 6 million attributes, 1.4 GB (``benchmarks/hostile_memory.py``). No public
interface of PDFium tells before a page is loaded, and when an allocation fails PDFium aborts
the whole process: in the worker process, the job would end as ``worker_died`` and be retried.

So a PDF, .docx or HTML document is read in a child forked from the worker process (which has
every parser loaded: nothing to import; the fork costs 7–12 ms of wall time per document, measured
on the corpus), whose address space may grow by ``max_memory`` bytes (``RLIMIT_AS``) over what it
inherited. Past it, an allocation fails in the child only: Python raises ``MemoryError``, lxml
reports a damaged file (or, for HTML, stops parsing without a word: :mod:`jobs.html_text` notices),
PDFium aborts. A failure after the child's memory grew past half its limit is counted as running
out of it (``_NEAR_LIMIT``), and the job fails with ``too_much_memory`` and a sentence naming the
limit; below it, a child that died of a signal crashed on the file (``damaged_file``). Neither is
retried: the same file would do the same again. The worker process goes on, its own memory
untouched. The child never outlives the worker process (``PR_SET_PDEATHSIG``), and a job
interrupted while it reads (time limit, stop, hand-back at shutdown) kills it.

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
    """``read(*args, on_page=…)`` run in a forked child process whose address space may grow by
    at most ``max_memory`` bytes; its return value, or the :class:`DocumentError` it raised.

    Args:
        read: the reading function; it must accept ``on_page`` (``on_page(done, total)`` and
            ``on_page(done, total, stage)`` calls in the child are passed on to the caller's
            ``on_page`` here, in order).
        args: its arguments (the child inherits them: nothing is copied).
        max_memory: bytes of address space the child may add to what it inherits
            (``MAX_DOCUMENT_MEMORY`` megabytes; see :class:`jobs.extract.Limits`).
        what: the document's kind for the sentences, e.g. ``"PDF"``.
        on_page: progress callback, or ``None``.

    Returns:
        What ``read`` returned (pickled back from the child).

    Raises:
        DocumentTooLarge: ``too_much_memory`` when the child ran out of its ``max_memory``
            (``MAX_DOCUMENT_MEMORY``).
        DocumentError: what ``read`` raised (re-created with its message, code, setting and
            limit); ``damaged_file`` when the child died without an answer (a parser crash).
        WorkerProcessDied: the child was killed by SIGKILL (transient: the kind's retries).
        RuntimeError: ``read`` raised anything else (a bug): its type and message; the child's
            traceback is logged here.
    """
    receiver, sender = Pipe()  # duplex: the child's calls are answered on it (call_in_parent)
    inherited_rss = _status_bytes("VmRSS")
    try:
        pid = os.fork()
    except OSError:  # no process to be had (EAGAIN, ENOMEM): the job fails as unexpected, with the reason
        receiver.close()
        sender.close()
        raise
    if pid == 0:  # pragma: no cover - the child (coverage does not follow os._exit)
        receiver.close()
        _child(sender, read, args, max_memory, on_page is not None)
    sender.close()
    answer = None
    try:
        while True:
            try:
                message = receiver.recv()
            except EOFError:  # the child died without an answer
                break
            if message[0] == "page":
                if on_page:
                    on_page(*message[1:])
                continue
            if message[0] == "call":
                receiver.send(_run_call(message[1], message[2]))
                continue
            answer = message
            break
    finally:
        receiver.close()
        if answer is None:
            os.kill(pid, signal.SIGKILL)  # interrupted here (time limit, stop): the child goes too
        _, status, usage = os.wait4(pid, 0)
    if answer is not None:
        return _outcome(answer, max_memory, what)
    grown = usage.ru_maxrss * 1024 - inherited_rss  # ru_maxrss: KiB
    return _died(os.waitstatus_to_exitcode(status), grown, max_memory, what)


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


def _child(sender: Connection, read: Callable[..., Any], args: tuple, max_memory: int,
           progress: bool) -> None:  # pragma: no cover - runs in the child
    """The child's whole life: limits, the reading, one answer, ``os._exit``."""
    global _to_parent
    code = 0
    _to_parent = sender
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
        start = limit_address_space(max_memory)

        def on_page(done: int, total: int, *stage: str) -> None:
            sender.send(("page", done, total, *stage))

        answer: tuple = ("done", read(*args, on_page=on_page if progress else None))
    except DocumentError as exc:
        answer = ("refused", type(exc) is DocumentTooLarge, exc.message, exc.code,
                  getattr(exc, "setting", None), getattr(exc, "limit", None))
        # A parser that could not allocate says "damaged" (lxml: "unknown error"; libxml2's HTML
        # parser stops without a word): after growing past half the limit, it ran out.
        if exc.code == "damaged_file" and _status_bytes("VmPeak") - start >= _NEAR_LIMIT * max_memory:
            answer = ("memory",)
    except MemoryError:
        answer = ("memory",)
    except BaseException as exc:  # noqa: BLE001 - a bug: its traceback goes to the worker's log
        answer = ("crashed", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    try:
        sender.send(answer)
    except MemoryError:  # the answer itself (the text) does not fit in what is left
        sender.send(("memory",))
    except BaseException:  # noqa: BLE001 - nothing else to tell: the parent sees no answer
        code = 1
    finally:
        os._exit(code)


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
