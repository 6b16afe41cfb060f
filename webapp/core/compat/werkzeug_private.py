"""Werkzeug 3.1's private internals that Docket uses (see :mod:`webapp.core.compat`).

* :func:`exceeded_form_limit` — which of the multipart form parser's limits raised a
  ``RequestEntityTooLarge``. Werkzeug raises the same bare exception for a text field above
  ``max_form_memory_size`` (Flask's ``MAX_FORM_MEMORY_SIZE``), for more parts than
  ``max_form_parts`` (``MAX_FORM_PARTS``) and for a body above ``max_content_length``, with no
  attribute telling them apart; an answer that names the wrong limit ("at most 100 files" for one
  file and a 600 KB field) sends the client looking for the wrong fix. The exception's traceback
  does tell: the frame that raised it (``MultipartDecoder.next_event`` for the parts,
  ``MultiPartParser.parse`` or ``MultipartDecoder.receive_data`` for a field's size) and the
  parser's locals (``files`` read so far, ``current_part``, the decoder's new ``event``).
  ``tests/edge/test_json_errors.py`` fails when the pinned version changes any of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.formparser import MultiPartParser
from werkzeug.sansio.multipart import File, MultipartDecoder


@dataclass(frozen=True)
class FormLimit:
    """A form limit a request went over.

    Attributes:
        limit: ``"parts"`` (more parts than ``max_form_parts``) or ``"field_size"`` (a text
            field above ``max_form_memory_size``).
        files: file parts read when parsing stopped, the one being read included (the form may
            hold more).
        field: the name of the text field that was too large, when known (``field_size``).
    """

    limit: str
    files: int
    field: str | None = None


def exceeded_form_limit(exc: BaseException) -> FormLimit | None:
    """Which limit of Werkzeug's multipart parser raised ``exc`` (a ``RequestEntityTooLarge``),
    read from its traceback; ``None`` when the parser did not raise it (a body above
    ``MAX_CONTENT_LENGTH``, refused before parsing) or the traceback is gone."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    parse = next((f for f in frames if f.f_code.co_name == "parse"
                  and isinstance(f.f_locals.get("self"), MultiPartParser)), None)
    if parse is None or not frames:
        return None
    raised = frames[-1]
    files = len(parse.f_locals.get("files") or ())
    current = parse.f_locals.get("current_part")
    if raised.f_code.co_name == "next_event" and isinstance(raised.f_locals.get("self"), MultipartDecoder):
        return FormLimit("parts", files + isinstance(raised.f_locals.get("event"), File))
    if raised is parse or (raised.f_code.co_name == "receive_data"
                           and isinstance(raised.f_locals.get("self"), MultipartDecoder)):
        field = getattr(current, "name", None) if current is not None and not isinstance(current, File) else None
        return FormLimit("field_size", files, field)
    return None
