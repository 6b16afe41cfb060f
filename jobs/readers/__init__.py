"""One reader per document format: bytes → :class:`jobs.readers.base.Extraction`."""
