"""Workflows on top of the job protocol: a batch's callback (chord), rate limits shared by every
worker."""
