"""What RQ workers run: the document job and its stages (extract, chunk, embed, store)."""
