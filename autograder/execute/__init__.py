"""Phase 1 of grading: every collected notebook run by nbgrader's ``Autograde`` in a throw-away course folder, its
kernel sandboxed and capped, its test cells turned into probes and judged here, into ``<course>/executed/``."""
