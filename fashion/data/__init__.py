"""The data's formats and how bytes become pixels: list files (sources), the review file (review), HTTP and
local fetching (fetching), decoding and resizing (imaging), tf.train.Example shards and dataset.json
(records; tfrecord_lite writes them without TensorFlow), and the tf.data pipeline that reads them (pipeline).

May import: fashion.core, fashion.config.
"""
