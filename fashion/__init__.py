"""fashion: multi-label fashion-style image classification with TensorFlow/Keras.

One folder per stage, imports pointing down (ARCHITECTURE.md is the map):
  cli      the four commands' mains
  ingest   generate_dataset.py     train   train.py     predict   detect.py, evaluate.py
  model    the network, losses, metrics, tasks
  data     list files, fetching, imaging, TFRecords, tf.data
  config   one config object per command, its options and choices
  core     errors, atomic files, storage, locks, console, interrupts, processes
"""

import os

# TensorFlow's C++ INFO/WARNING lines drown the progress bars; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
