"""Quotas (per project; this version serves one): pending jobs, bulk uploads
being written, live jobs online, and requests per second per API key.
Beyond one, calls fail RESOURCE_EXHAUSTED with an ErrorInfo naming the quota
(reason QUOTA_EXCEEDED, metadata quota and limit) and a RetryInfo."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from .errors import ServiceError


@dataclass
class Quotas:
    pending_jobs: int = 0  # 0: no quota
    open_bulk_uploads: int = 16
    live_jobs_online: int = 0
    requests_per_second: float = 0.0  # per API key (--auth keys)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key_id: str) -> None:
        """One request of `key_id` out of its token bucket (a second's worth
        of burst); RESOURCE_EXHAUSTED when it is empty."""
        rate = self.requests_per_second
        if rate <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (rate, now))
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            raise exceeded("requests_per_second", rate, "requests per second with this API key",
                           retry_s=(1.0 - tokens) / rate)
        self._buckets[key_id] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._buckets.clear()


def exceeded(quota: str, limit: float, what: str, retry_s: float = 5.0) -> ServiceError:
    shown = f"{limit:g}"
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED",
        f"quota {quota} exceeded: at most {shown} {what}; retry later with back-off, or ask for a higher "
        f"--quota-{quota.replace('_', '-')}",
        metadata={"quota": quota, "limit": shown}, retry_delay_s=retry_s)
