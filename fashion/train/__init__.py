"""train.py: the job that trains a bundle (job), its Keras callbacks (callbacks), optimisers (optim) and
learning-rate schedules (schedules), the devices and mixed precision (devices), and --lr-find (lr_finder).

May import: fashion.core, fashion.config, fashion.data, fashion.model; not fashion.ingest or fashion.predict.
"""
