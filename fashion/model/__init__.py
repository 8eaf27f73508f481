"""The network and what it is judged by: the keras.applications trunk and the task's heads (network), the
per-head losses (losses), numpy metrics and threshold tuning (metrics), matplotlib figures (plots), and one
object per task (tasks/: multilabel, multiclass, binary).

May import: fashion.core, fashion.config, fashion.data.
"""
