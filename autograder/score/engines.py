"""One database engine per gradebook while scoring, so nbgrader's queries are compiled once, not per notebook.

nbgrader opens a new ``Gradebook`` about nine times per notebook it scores, and each one makes a new SQLAlchemy
engine (whose cache of compiled queries starts empty) and checks that every table of the schema exists. Scoring a
class asks the same few dozen queries of every notebook, so most of phase 2's time went to compiling them again and
to those checks (profiled in benchmarks/README.md, "Phase 2"). :func:`shared_engines` makes every ``Gradebook``
of one database URL share one engine, its compiled queries, and one check of the tables, while the block runs.

Nothing else changes: each ``Gradebook`` still has its own session and still closes it (``engine.dispose()`` closes
the pooled connections, not the cache), so what is written and when it is committed is exactly as before.
"""

from __future__ import annotations

import contextlib


def _share() -> callable:
    """Make nbgrader's ``Gradebook`` objects of one database URL share one engine and check the tables once; returns
    what undoes it (and disposes of the engines)."""
    import nbgrader.api as api

    create_engine, create_all = api.create_engine, api.Base.metadata.create_all
    engines: dict[str, object] = {}
    checked: set[int] = set()

    def shared_engine(url, **options):
        key = repr((str(url), sorted(options.items())))
        if key not in engines:
            engines[key] = create_engine(url, **options)
        return engines[key]

    def create_tables_once(bind=None, **options):
        if id(bind) not in checked:
            create_all(bind=bind, **options)
            checked.add(id(bind))

    def undo() -> None:
        api.create_engine, api.Base.metadata.create_all = create_engine, create_all
        for engine in engines.values():
            engine.dispose()

    api.create_engine, api.Base.metadata.create_all = shared_engine, create_tables_once
    return undo


@contextlib.contextmanager
def shared_engines():
    """While the block runs, nbgrader's ``Gradebook`` objects of one database URL share one engine and check the
    tables once; the engines are disposed of at the end."""
    undo = _share()
    try:
        yield
    finally:
        undo()


def share_engines_for_good() -> None:
    """:func:`shared_engines` for the rest of this process: a scoring worker's, whose one database is its own copy."""
    _share()
