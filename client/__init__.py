"""Python client, worker SDK and CLI for mediajobs.

    from mediajobs.client import MediaJobsClient

    with MediaJobsClient("127.0.0.1:50051") as client:
        job = client.create_job("TRANSCODE", priority="HIGH", template_id="mp4-h264-360p",
                                params={"source": "incoming/a.mov"})
        for msg in client.watch_jobs(job_ids=[job.id], include_progress=False):
            print(msg.revision, msg.events[0].job.state if msg.events else 'progress')

    from mediajobs.client import Worker

    worker = Worker("127.0.0.1:50051", concurrency=8)

    @worker.handler("CHECKSUM")
    def checksum(ctx):
        ctx.report_progress(50, "hashing")
        return {"sha256": hashlib.sha256(open(ctx.params["path"], "rb").read()).hexdigest()}

    worker.run_sync()  # until SIGTERM/SIGINT
"""
from __future__ import annotations

from .client import DEFAULT_TARGET, MediaJobsClient, parse_priority, parse_state, tls_credentials
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
    "tls_credentials",
]
