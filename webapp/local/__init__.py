"""The local run tools: the embedded Redis and the run command's process supervisor."""
