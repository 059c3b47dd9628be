"""Python client, worker SDK and CLI for mediajobs.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as client:
        job = client.create_job("TRANSCODE", priority="HIGH", params={"input": "a.mov"})
        for msg in client.watch_jobs(job_ids=[job.id], include_progress=False):
            print(msg.revision, msg.events[0].job.state if msg.events else 'progress')

    from mediajobs.client import Worker

    worker = Worker("127.0.0.1:50051", concurrency=8)

    @worker.handler("TRANSCODE")
    def transcode(ctx):
        ctx.report_progress(50, "encoding")
        return {"output": ctx.params["input"] + ".mp4"}

    worker.run_sync()  # until SIGTERM/SIGINT
"""
from __future__ import annotations

from .client import DEFAULT_TARGET, MediaJobsClient, parse_priority, parse_state
from .errors import MediaJobsError, RevisionCompactedError
from .watch import Backoff, JobWatch, RetryInfo, is_retryable
from .worker import JobCancelled, JobContext, RetryableError, Worker

__all__ = [
    "DEFAULT_TARGET",
    "Backoff",
    "JobCancelled",
    "JobContext",
    "JobWatch",
    "MediaJobsClient",
    "MediaJobsError",
    "RetryInfo",
    "RetryableError",
    "RevisionCompactedError",
    "Worker",
    "is_retryable",
    "parse_priority",
    "parse_state",
]
