"""generate_dataset.py: lists, folders and old TFRecords become verified, sharded TFRecords. The job (job),
single-label and TFRecord sources (class_sources, tfrecord_source), the fetch-and-decode worker processes
(workers), the train/val split (splits), the shard plan and writer (shards), the manifest's parts (manifest),
the console summaries (reports), and the same job on Apache Beam (beam).

May import: fashion.core, fashion.config, fashion.data, fashion.model; not fashion.train or fashion.predict.
"""
