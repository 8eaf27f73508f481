#!/usr/bin/env python
"""Per-category probabilities for images with a bundle from train.py. See --help."""

import sys

from fashion.cli import detect_main

if __name__ == "__main__":
    sys.exit(detect_main())
