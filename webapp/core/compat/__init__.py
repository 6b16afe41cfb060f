"""Private internals of the pinned libraries, fenced in: one module per library.

Where a library offers no public way to do what Docket needs, the private name is used here
only, each use with the reason no public API serves, and ``tests/core/test_compat.py`` checks
that every private name, signature and behaviour Docket relies on is still what the pinned
version has — an upgrade fails there, loudly, instead of breaking a worker silently. The README's
development notes list them.

Overrides of a library's private hooks in a subclass cannot move into a wrapper; they stay in
their subclass, and :data:`rq_private.OVERRIDDEN` (and its siblings) name them for the test.
"""
