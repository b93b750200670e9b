"""``headforcing batch``: a prompt file to a folder of videos and a manifest, over the ranks of
a ``torchrun`` launch or in one process (docs/distributed.md)."""

from headforcing.batch.items import BatchItem, read_items
from headforcing.batch.layout import Job, expand_jobs, video_name
from headforcing.batch.manifest import MANIFEST, finished, read_rows
from headforcing.batch.runner import BatchReport, check_outputs, run_batch

__all__ = [
    "MANIFEST",
    "BatchItem",
    "BatchReport",
    "Job",
    "check_outputs",
    "expand_jobs",
    "finished",
    "read_items",
    "read_rows",
    "run_batch",
    "video_name",
]
