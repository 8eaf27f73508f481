"""fashion: multi-label fashion-style image classification with TensorFlow/Keras.

One module per stage of the data's path:
  sources   -> list files (original `id,url,l0..lN`, CSV with header, stdin)
  fetching  -> HTTP (requests + urllib3 Retry), file://, local paths, URL cache
  imaging   -> byte sniffing, OpenCV decode, orientation/mode fixes, resize, encode
  splits    -> deterministic (iterative-stratified) train/val split
  records   -> tf.train.Example shards, dataset.json manifest, verification
  ingest    -> the generate_dataset.py job (parallel, resumable)
  reports   -> console summaries (class balance, co-occurrence)
"""

import os

# TensorFlow's C++ INFO/WARNING lines drown the progress bars; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
