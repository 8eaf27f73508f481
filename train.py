#!/usr/bin/env python
"""Train the multi-label model on a dataset made by generate_dataset.py. See --help."""

import sys

from fashion.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
