#!/usr/bin/env python
"""Serve a bundle from train.py over HTTP, with a page to try it. See --help."""

import sys

from fashion.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
