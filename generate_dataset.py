#!/usr/bin/env python
"""Turn a labelled list of image URLs/paths into verified, sharded TFRecords. See --help."""

import sys

from fashion.cli import generate_dataset_main

if __name__ == "__main__":
    sys.exit(generate_dataset_main())
