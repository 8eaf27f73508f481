"""detect.py and evaluate.py: a trained bundle loaded, checked and run, and its exports (bundle), the detect
job (detect) and the evaluate job with its report (evaluate).

May import: fashion.core, fashion.config, fashion.data, fashion.model; not fashion.ingest or fashion.train.
"""
