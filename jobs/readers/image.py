"""Images (PNG, JPEG, TIFF with one page per frame, WebP) via Pillow, read by OCR (:mod:`jobs.ocr`).

Each frame's size is checked from its header before it is decoded (``MAX_IMAGE_PIXELS``), the
frame count against ``MAX_PDF_PAGES``; one frame is decoded at a time.
"""

from __future__ import annotations

import io
from typing import Callable

from jobs.document_errors import DocumentError, DocumentTooLarge
from jobs.readers.base import OCR_FOUND_NOTHING_WARNING, OCR_NEXT, OCR_STAGE, CharBudget, Extraction, Limits, Page, clean_text


def read_image(data: bytes, on_page: Callable[..., None] | None, limits: Limits, budget: CharBudget) -> Extraction:
    """The text of an image upload, one page per frame, read by OCR.

    Args:
        data: the file's bytes (PNG, JPEG, TIFF or WebP).
        on_page: progress, called ``on_page(done, total, "ocr_next")`` before each frame is read
            and ``on_page(done, total, "ocr")`` after.
        limits: ``ocr`` (``off`` refuses the image), ``max_pages`` (frames),
            ``max_image_pixels`` (pixels of a frame).
        budget: the document's character budget.

    Returns:
        An :class:`Extraction` of ``page_count`` frames; an image where OCR found no text has empty
        pages and a warning.

    Raises:
        DocumentError: ``ocr_disabled`` when ``limits.ocr`` is ``off``; ``damaged_file`` when
            Pillow cannot read it.
        DocumentTooLarge: ``too_many_pixels`` for a frame of more than ``limits.max_image_pixels``
            pixels, before it is decoded; ``too_many_pages`` for more than ``limits.max_pages``
            frames; ``too_many_chars``.
    """
    from PIL import Image, UnidentifiedImageError

    from jobs import ocr

    if limits.ocr == ocr.OFF:
        raise DocumentError("this is an image, and its text can only be read by OCR, which is turned off here "
                            "(OCR=off)", code="ocr_disabled")
    # Docket checks each frame's size itself (check_pixels) before decoding it; Pillow's own
    # guard (DecompressionBombError past 2 × Image.MAX_IMAGE_PIXELS) stays as a second line.
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError:
        width, height = _declared_size(data)
        ocr.check_pixels(width, height, limits.max_image_pixels, "The image")
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DocumentError(f"the image is damaged and could not be read ({exc})", code="damaged_file") from None
    with image:
        ocr.check_pixels(image.width, image.height, limits.max_image_pixels, "The image")
        try:
            total = getattr(image, "n_frames", 1)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DocumentError(f"the image is damaged and could not be read ({exc})", code="damaged_file") from None
        if total > limits.max_pages:
            raise DocumentTooLarge(
                f"The image has {total:,} frames (pages); the limit is {limits.max_pages:,} (MAX_PDF_PAGES).",
                code="too_many_pages", setting="MAX_PDF_PAGES", limit=limits.max_pages,
            )
        pages: list[Page] = []
        empty = 0
        for index in range(total):
            what = "The image" if total == 1 else f"Frame {index + 1} of the image"
            try:
                image.seek(index)
                ocr.check_pixels(image.width, image.height, limits.max_image_pixels, what)
                if on_page:
                    on_page(index, total, OCR_NEXT)
                image.draft("RGB", (ocr.ENGINE_MAX_SIDE, ocr.ENGINE_MAX_SIDE))  # JPEG: decode at a reduced size
                frame = image.convert("RGB")
            except DocumentError:
                raise
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                raise DocumentError(f"{what.lower()} is damaged and could not be read ({exc})",
                                    code="damaged_file") from None
            result = ocr.read_image(frame)
            del frame
            text = clean_text(result.text)
            budget.add(text, f" at frame {index + 1:,} of {total:,}" if total > 1 else "")
            empty += result.confidence is None
            pages.append(Page(index + 1, text, ocr_confidence=result.confidence))
            if on_page:
                on_page(index + 1, total, OCR_STAGE)
    extraction = Extraction(pages=pages, page_count=total)
    if empty:
        extraction.warnings.append(OCR_FOUND_NOTHING_WARNING if total == 1 else
                                   f"OCR found no text on {empty} of {total} frames of the image")
    return extraction


def _declared_size(data: bytes) -> tuple[int, int]:
    """Width and height an image's header declares, read with Pillow's guard lifted (the header
    only: nothing is decoded)."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    finally:
        Image.MAX_IMAGE_PIXELS = limit
