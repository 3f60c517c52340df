"""Phase 1 of grading on a Dask cluster (``grade --dask``): one task per notebook, run on a worker by a long-lived
grading child set up as a ``--jobs`` worker process; the executed notebooks come back to the client."""
