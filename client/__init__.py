"""Python client and CLI for the mediajobs JobService.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as client:
        job = client.create_job("TRANSCODE", priority="HIGH", params={"input": "a.mov"})
        for msg in client.watch_jobs(job_ids=[job.id], include_progress=False):
            print(msg.revision, msg.event.job.state)
"""
from __future__ import annotations

from .client import DEFAULT_TARGET, MediaJobsClient, parse_priority, parse_state
from .errors import MediaJobsError, RevisionCompactedError
from .watch import Backoff, JobWatch, RetryInfo, is_retryable

__all__ = [
    "DEFAULT_TARGET",
    "Backoff",
    "JobWatch",
    "MediaJobsClient",
    "MediaJobsError",
    "RetryInfo",
    "RevisionCompactedError",
    "is_retryable",
    "parse_priority",
    "parse_state",
]
