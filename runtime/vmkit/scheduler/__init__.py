"""The scheduler daemon (`python -m vmkit.scheduler`) and what job lists are made of."""

from vmkit.scheduler.jobs import Job, JobContext

__all__ = ["Job", "JobContext"]
