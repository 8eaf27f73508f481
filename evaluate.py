#!/usr/bin/env python
"""Evaluate a bundle on a dataset split and write a report. See --help."""

import sys

from fashion.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
