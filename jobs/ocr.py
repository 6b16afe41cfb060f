"""OCR: the one interface to the OCR engine (rapidocr 3.10 on onnxruntime), and the decision
which PDF pages need it.

Engine: rapidocr with the three model files its wheel ships (``rapidocr/models/``: PP-OCRv6
det and rec "small", multilingual, and the ch_ppocr_mobile v2.0 text-line classifier; Apache-2.0,
see ``rapidocr-3.10.0.dist-info/licenses/MODEL_LICENSES.md``). Each model is named by its path
(``Det/Cls/Rec.model_path``), so rapidocr never takes its download branch: nothing is fetched at
run time (checked with the network unreachable, ``tests/jobs/test_ocr_engine.py``). Its own
logger (``RapidOCR``, which prints INFO lines to stderr by itself) is routed into ours at WARNING.

Where it runs: in the worker process, never in a reader process. The reader process
(:mod:`jobs.reader_process`) parses the PDF and renders the page, or decodes the image frame,
under its memory limit, and hands the bitmap (at most ``MAX_IMAGE_PIXELS``, and 2000 pixels a
side) to the worker process that forked it (:func:`jobs.reader_process.call_in_parent`), where
the engine reads it. onnxruntime cannot work under the reader's ``RLIMIT_AS``: it reserves far
more address space than it touches (a model loaded there crashed the process, a page read there
failed with ``std::bad_alloc``), and a page is no parser's hostile input once it is pixels.

One engine per worker process, made on first use (:func:`engine`): measured, loading the three
models takes ≈ 1.8 s and 66 MB; reading a page takes the process to a peak of ≈ 0.55–0.6 GB
(onnxruntime's buffers for the detection model at 2000 pixels a side), of which ≈ 0.3 GB stays
allocated. Loading the engine in the worker command before it forks (shared copy-on-write by
every worker process) would save the 1.8 s of each worker process's first OCR page, but costs
every worker start 1.8 s and 66 MB, OCR or not, and what a page's reading allocates is private
to the process that reads it anyway; so the engine is loaded where it is first needed. A worker
process whose peak passed ``WORKER_MAX_MEMORY`` (512 MB by default) is replaced by a fresh one
after its job, as after any large document (:mod:`jobs.worker`). onnxruntime runs with one
thread (intra- and inter-op): the machine's cores are shared by ``WORKER_CONCURRENCY``
processes, and one page at a time is the unit of progress and cancel anyway.

Orientation (:func:`detect_rotation`): a scanned page may lie on its side or upside down
(``/Rotate`` aside: the image itself is turned). Text detection runs once on a copy of at most
:data:`ORIENTATION_SIDE` pixels; when most detected boxes are taller than wide, the text runs
vertically (the page is turned 90° or 270°). rapidocr turns such crops a quarter turn
counter-clockwise for its classifier; the text-line classifier's vote (0° or 180°, weighted
by its confidence) over the boxes then says which way is up. Measured on the corpus: right on
all 4 pages of ``docling-image-only-4p.pdf`` (0°, 180°, 90°, 270°) and on huck-finn turned
each of the four ways; ≈0.5–0.7 s a page on this machine (the full read is 3–15 s).

Reading order: lines as rapidocr boxes them, in columns found by a recursive XY cut
(:func:`reading_order`): a page is split at vertical gaps that no box crosses, else at
horizontal ones, recursively; within a band lines go top to bottom. rapidocr's own order is
row by row across the whole page, which interleaves the two columns of
``linn-brochure-two-column-scan.pdf``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from jobs.document_errors import DocumentTooLarge

log = logging.getLogger(__name__)

#: OCR modes (the ``OCR`` setting): ``auto`` reads pages without a usable text layer, ``off``
#: never reads, ``force`` reads every page (its text layer is ignored).
AUTO, OFF, FORCE = "auto", "off", "force"
MODES = (AUTO, OFF, FORCE)

#: PDF pages are rendered at this resolution (dots per inch) for OCR, unless one of the caps
#: below makes it smaller. 200 dpi: measured good text on the corpus scans.
RENDER_DPI = 200
#: rapidocr shrinks any image whose longer side is past 2000 pixels before reading it
#: (``Global.max_side_len``), so a page is never rendered larger: more pixels would only cost
#: memory (a rendered page is at most 2000 × 2000 × 4 bytes = 16 MB).
ENGINE_MAX_SIDE = 2000
#: Longer side (pixels) of the copy orientation is decided on.
ORIENTATION_SIDE = 960
#: A PDF page "has no usable text layer" below this many non-whitespace characters of text...
MIN_TEXT_LAYER_CHARS = 10
#: ...when an image covers at least this share of it. Measured on the corpus: every scan page
#: has 0 characters and an image covering 100 % of it; every page with text has ≥ 12
#: characters or no image (``vicksburg-scan-with-ocr-layer.pdf``, a scan with an invisible OCR
#: text layer, has hundreds per page and is never read again).
MIN_IMAGE_COVER = 0.25

# Gaps that split a page in reading_order, in line heights (the median height of its boxes).
_ROW_GAP, _COLUMN_GAP = 0.6, 0.5
_MODELS = {"Det": "PP-OCRv6_det_small.onnx", "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
           "Rec": "PP-OCRv6_rec_small.onnx"}
_engine: Any = None
_engine_lock = threading.Lock()


@dataclass(frozen=True)
class OcrLine:
    """One line of text the engine read.

    Attributes:
        text: the line's text.
        confidence: the recogniser's score, 0–1.
        box: ``(left, top, right, bottom)`` in pixels of the upright image.
    """

    text: str
    confidence: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class OcrResult:
    """What :func:`read_image` found on one image.

    Attributes:
        text: the lines in reading order, one per line (``""`` when nothing was read).
        confidence: mean of the lines' confidences (0–1); ``None`` when no line was read.
        lines: the lines, in reading order.
        rotation: degrees the image was turned counter-clockwise to read it (0, 90, 180, 270).
    """

    text: str
    confidence: float | None
    lines: list[OcrLine] = field(default_factory=list)
    rotation: int = 0


def engine() -> Any:
    """This process's rapidocr engine, made on first call (thread-safe) from the packaged models.

    Raises:
        FileNotFoundError: a packaged model file is missing (a broken install).
    """
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _make_engine()
    return _engine


def _make_engine() -> Any:
    from pathlib import Path

    import rapidocr
    from rapidocr.utils.log import logger as rapidocr_logger

    # rapidocr's logger prints to stderr by itself (its own handler, propagate=False, INFO).
    rapidocr_logger.handlers.clear()
    rapidocr_logger.propagate = True
    rapidocr_logger.setLevel(logging.WARNING)
    models = Path(rapidocr.__file__).parent / "models"
    params: dict[str, Any] = {"Global.log_level": "warning",
                              "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                              "EngineConfig.onnxruntime.inter_op_num_threads": 1}
    for task, name in _MODELS.items():
        path = models / name
        if not path.is_file():
            raise FileNotFoundError(f"rapidocr's packaged model {path} is missing")
        params[f"{task}.model_path"] = str(path)
    ocr = rapidocr.RapidOCR(params=params)
    rapidocr_logger.setLevel(logging.WARNING)  # RapidOCR() sets it from Global.log_level again
    return ocr


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (``MAX_IMAGE_PIXELS``) before it is decoded.

    Args:
        width, height: the size its header declares, in pixels.
        max_pixels: the limit, in pixels.
        what: the image for the sentence, e.g. ``"The image"`` or ``"Frame 3 of the image"``.

    Raises:
        DocumentTooLarge: ``too_many_pixels``.
    """
    if width * height > max_pixels:
        raise DocumentTooLarge(
            f"{what} is {width:,} × {height:,} pixels ({width * height / 1e6:,.1f} megapixels); the limit is "
            f"{max_pixels / 1e6:,.1f} megapixels (MAX_IMAGE_PIXELS), so it was not read.",
            code="too_many_pixels", setting="MAX_IMAGE_PIXELS", limit=max_pixels,
        )


def render_scale(width: float, height: float, max_pixels: int) -> float:
    """Scale (pixels per PDF point) to render a ``width`` × ``height`` point page at for OCR:
    :data:`RENDER_DPI`, made smaller so that the longer side stays within
    :data:`ENGINE_MAX_SIDE` pixels and width × height within ``max_pixels`` (``MAX_IMAGE_PIXELS``)."""
    scale = RENDER_DPI / 72
    if max(width, height) > 0:
        scale = min(scale, ENGINE_MAX_SIDE / max(width, height))
    if width * height > 0:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    return scale


def is_scanned_page(page: Any, text: str) -> bool:
    """Whether a PDF page has no usable text layer: fewer than :data:`MIN_TEXT_LAYER_CHARS`
    non-whitespace characters in ``text`` (its text layer) and an image covering at least
    :data:`MIN_IMAGE_COVER` of the page.

    Args:
        page: a ``pypdfium2.PdfPage``.
        text: the page's text from its text layer.
    """
    import pypdfium2.raw as pdfium_c

    if len("".join(text.split())) >= MIN_TEXT_LAYER_CHARS:
        return False
    width, height = page.get_size()
    area = width * height
    if area <= 0:
        return False
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        left, bottom, right, top = image.get_bounds()
        if (right - left) * (top - bottom) >= MIN_IMAGE_COVER * area:
            return True
    return False


def read_pdf_page(page: Any, max_pixels: int) -> OcrResult:
    """Render one ``pypdfium2.PdfPage`` (its ``/Rotate`` applied, see :func:`render_scale` for the
    size) and read it with :func:`read_image`. Only this page's bitmap is held (≤ 16 MB)."""
    width, height = page.get_size()
    bitmap = page.render(scale=render_scale(width, height, max_pixels))
    try:
        image = bitmap.to_pil().convert("RGB")
    finally:
        bitmap.close()
    return read_image(image)


def read_image(image: Any) -> OcrResult:
    """Read the text of one image.

    The image is turned upright first (:func:`detect_rotation`), then read, its lines put in
    reading order (:func:`reading_order`). In a reader process (:mod:`jobs.reader_process`), the
    reading is done by the worker process that forked it, where the engine lives
    (:func:`jobs.reader_process.call_in_parent`): the reader renders or decodes the image under
    its memory limit, the engine runs without it.

    Args:
        image: a ``PIL.Image.Image`` of any mode (converted to RGB); its longer side is brought
            down to :data:`ENGINE_MAX_SIDE` pixels, as the engine would.

    Returns:
        An :class:`OcrResult`; ``text`` is ``""`` and ``confidence`` ``None`` when no text was found.
    """
    from jobs.reader_process import call_in_parent

    image = image.convert("RGB")
    if max(image.size) > ENGINE_MAX_SIDE:
        image = image.copy()
        image.thumbnail((ENGINE_MAX_SIDE, ENGINE_MAX_SIDE))
    return call_in_parent(_read_upright, image)


def _read_upright(image: Any) -> OcrResult:
    """:func:`read_image` of an RGB image of at most :data:`ENGINE_MAX_SIDE` pixels a side, in
    the process that holds the engine."""
    import numpy as np

    rotation = detect_rotation(image)
    if rotation:
        image = image.rotate(rotation, expand=True)
    output = engine()(np.asarray(image), use_det=True, use_cls=True, use_rec=True)
    if output.boxes is None or not output.txts:
        return OcrResult("", None, [], rotation)
    lines = []
    for box, text, score in zip(output.boxes, output.txts, output.scores):
        text = text.strip()
        if text:
            xs, ys = [point[0] for point in box], [point[1] for point in box]
            lines.append(OcrLine(text, float(score), (min(xs), min(ys), max(xs), max(ys))))
    if not lines:
        return OcrResult("", None, [], rotation)
    lines = reading_order(lines)
    return OcrResult("\n".join(line.text for line in lines),
                     sum(line.confidence for line in lines) / len(lines), lines, rotation)


def detect_rotation(image: Any) -> int:
    """Degrees (0, 90, 180 or 270) to turn ``image`` counter-clockwise so that its text is upright
    (method and measurements: module docstring). 0 when no text is detected."""
    import numpy as np

    small = image.copy()
    small.thumbnail((ORIENTATION_SIDE, ORIENTATION_SIDE))
    ocr = engine()
    pixels = np.asarray(small)
    detected = ocr(pixels, use_det=True, use_cls=False, use_rec=False)
    boxes = detected.boxes
    if boxes is None or len(boxes) == 0:
        return 0
    widths = np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1)
    heights = np.linalg.norm(boxes[:, 3] - boxes[:, 0], axis=1)
    # Weighted by length: a page's long lines say more than its page number or stray marks.
    vertical = float(np.sum(np.maximum(widths, heights)[heights > widths]))
    horizontal = float(np.sum(np.maximum(widths, heights)[heights <= widths]))
    # rapidocr crops box by box and turns a crop at least 1.5 times taller than wide a quarter
    # turn counter-clockwise: the classifier then sees a vertical line as a horizontal one.
    crops = ocr.crop_text_regions(pixels, boxes)
    _, classified = ocr.cls_and_rotate(crops)
    upside_down = 0.0
    upright = 0.0
    for crop, (label, score), width, height in zip(crops, classified.cls_res, widths, heights):
        if (height > width) != (vertical > horizontal):
            continue  # a box across the page's text direction (a table rule, a stamp): no vote
        if vertical > horizontal and crop.shape[0] > crop.shape[1]:
            continue  # a vertical box rapidocr did not turn (less than 1.5 times taller than wide)
        if label == "180":
            upside_down += score * max(width, height)
        else:
            upright += score * max(width, height)
    flipped = upside_down > upright
    if vertical > horizontal:
        # Text read correctly once its crops are turned a quarter turn counter-clockwise: the
        # page is turned the same way; "180" means the other quarter turn.
        return 270 if flipped else 90
    return 180 if flipped else 0


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """``lines`` in reading order by a recursive XY cut: split into columns at the vertical gaps
    no line crosses (left part first), else into bands at the horizontal gaps no line crosses
    (top part first), and so on in each part; a part no gap splits is read top to bottom, then
    left to right. Columns first: two columns set on the same baselines share their row gaps,
    and splitting rows first would interleave them."""
    if len(lines) <= 1:
        return list(lines)
    for axis in (0, 1):  # 0: split into columns (a vertical gap); 1: into bands
        parts = _split(lines, axis)
        if len(parts) > 1:
            return [line for part in parts for line in reading_order(part)]
    return _rows(lines)


def _rows(lines: list[OcrLine]) -> list[OcrLine]:
    """Lines top to bottom, boxes of one line (tops within half a line's height) left to right."""
    height = _median_height(lines)
    ordered = sorted(lines, key=lambda line: line.box[1])
    rows: list[list[OcrLine]] = [[ordered[0]]]
    for line in ordered[1:]:
        if line.box[1] - rows[-1][0].box[1] > height / 2:
            rows.append([line])
        else:
            rows[-1].append(line)
    return [line for row in rows for line in sorted(row, key=lambda line: line.box[0])]


def _median_height(lines: list[OcrLine]) -> float:
    heights = sorted(line.box[3] - line.box[1] for line in lines)
    return heights[len(heights) // 2]


def _split(lines: list[OcrLine], axis: int) -> list[list[OcrLine]]:
    """``lines`` split at every gap along ``axis`` (0: x, 1: y) that no line crosses. Gaps
    narrower than :data:`_ROW_GAP` of a line's height between rows (the leading of running
    text, which two columns set on the same baselines share) and :data:`_COLUMN_GAP` between
    columns (the space between words) do not split."""
    start, end = axis, axis + 2
    ordered = sorted(lines, key=lambda line: line.box[start])
    min_gap = _median_height(lines) * (_ROW_GAP if axis == 1 else _COLUMN_GAP)
    parts: list[list[OcrLine]] = [[ordered[0]]]
    reach = ordered[0].box[end]
    for line in ordered[1:]:
        if line.box[start] - reach > min_gap:
            parts.append([line])
        else:
            parts[-1].append(line)
        reach = max(reach, line.box[end])
    return parts
