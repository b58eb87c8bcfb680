"""A token bucket: `rate` tokens a second flow into a bucket that holds at most `burst`; a
request takes one token, or is refused with the time until one will be there.

Pure: the caller passes the clock's reading (any monotonic seconds), so the rule is tested
with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens a second, > 0
    burst: int  # the most tokens the bucket holds, >= 1
    tokens: float
    updated: float  # the clock reading `tokens` is as of

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        return cls(rate, burst, float(burst), now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be (nothing
        is taken then)."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
