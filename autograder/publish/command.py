"""The ``publish`` subcommand of ``python -m autograder``: its arguments, and what it prints.

The publishing itself (:mod:`autograder.publish.folder`, which imports torch and nbformat) is imported only when
the command runs, so that the command line answers ``--help`` and argument errors at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..course import SOLUTIONS_DIR

COMMAND = "publish"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m autograder publish`` (the command line's subcommand)."""
    parser.add_argument("directory", metavar="DIR", type=Path,
                        help="where to write (new, empty, or an earlier publication of this course)")
    parser.add_argument("--url", required=True,
                        help="where DIR will be served: https://github.com/ORG/REPO (push DIR to its main branch) "
                             "or any other http(s) web folder")
    parser.add_argument("--solutions-through", metavar="STAGE", default=None,
                        help="the last stage whose solutions are released (default: none, so only the first "
                             "stage is published); the next stage is the current assignment")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR,
                        help=f"folder of the source notebooks (default {SOLUTIONS_DIR})")


def run(args: argparse.Namespace) -> int:
    """``python -m autograder publish ...`` with parsed arguments; prints what was written. Returns the exit status."""
    from .folder import PublishError, publish

    try:
        publication = publish(args.directory, args.url, args.solutions_through, args.solutions)
    except PublishError as error:
        print(f"python -m autograder {COMMAND}: error: {error}", file=sys.stderr)
        return 2
    for warning in publication.warnings():
        print(warning, file=sys.stderr)
    print(f"Published {', '.join(publication.stages)} into {publication.directory} for {publication.site.url}")
    for name in publication.stages:
        print(f"  {name}: notebooks/{name}.ipynb installs {publication.package_urls[name]}")
        if publication.site.is_github:
            print(f"    open in Colab: {publication.site.colab_url(name)}")
    if publication.replaced:
        print("Replaced (written by an earlier publish):")
        for name in publication.replaced:
            print(f"  {name}{'  (edited by hand since then)' if name in publication.edited else ''}")
    if publication.stale:
        print("Left in place, no longer published (delete them yourself once no student needs them):")
        for name in publication.stale:
            print(f"  {name}")
    next_step = (f"push {publication.directory} to the main branch of {publication.site.url}"
                 if publication.site.is_github else f"copy {publication.directory} to {publication.site.url}")
    print(f"Next: {next_step}, then share the links in {publication.directory / 'README.md'}.")
    return 0
