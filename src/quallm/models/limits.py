"""Limits on the requests that reach a backend: in flight at once, and per minute.

The per-minute limiter is a small sliding window written here rather than taken from a rate-limit
library: it needs only a blocking acquire with a weight, shared by threads, and the libraries that do
this (pyrate-limiter, limits) bring their own storage back-ends and APIs that changed between majors.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from quallm.models.base import ChatModel, ChatRequest, Completion, ModelWrapper

_WINDOW = 60.0


class LimitedModel(ModelWrapper):
    """At most ``limit`` requests in flight through the wrapped model, across all threads."""

    def __init__(self, inner: ChatModel, limit: int) -> None:
        super().__init__(inner)
        self._slots = threading.BoundedSemaphore(max(1, limit))

    def complete(self, request: ChatRequest) -> Completion:
        """Wait for a free slot, then forward."""
        with self._slots:
            return self.inner.complete(request)


class RateLimitedModel(ModelWrapper):
    """At most ``rpm`` requests and ``tpm`` tokens sent in any 60 seconds (either may be None: no limit).

    A request's tokens are its prompt (counted with the model's tokenizer) plus its ``max_tokens``,
    which is what providers reserve against a tokens-per-minute limit when the request arrives. It sits
    inside the response cache, so answers from the cache never wait.
    """

    def __init__(
        self,
        inner: ChatModel,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.rpm = rpm if rpm and rpm > 0 else None
        self.tpm = tpm if tpm and tpm > 0 else None
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[tuple[float, int]] = deque()  # (time, tokens) of requests in the window
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting, for progress and tests

    def cost(self, request: ChatRequest) -> int:
        """Tokens a request counts against ``tpm``."""
        return sum(self.inner.count_tokens(m.content) for m in request.messages) + request.max_tokens

    def _admit(self, cost: int) -> float:
        """Record the request and return 0, or return how long to wait before trying again."""
        with self._lock:
            now = self._clock()
            while self._sent and now - self._sent[0][0] >= _WINDOW:
                self._sent.popleft()
            used = sum(c for _, c in self._sent)
            fits_rpm = self.rpm is None or len(self._sent) < self.rpm
            # A request larger than the whole budget goes alone in an empty window rather than never.
            fits_tpm = self.tpm is None or used + cost <= self.tpm or not self._sent
            if fits_rpm and fits_tpm:
                self._sent.append((now, cost))
                return 0.0
            return max(0.01, _WINDOW - (now - self._sent[0][0]))

    def complete(self, request: ChatRequest) -> Completion:
        """Wait until the request fits both limits, then forward."""
        cost = self.cost(request) if self.tpm else 0
        while (wait := self._admit(cost)) > 0:
            self.waited += wait
            self._sleep(wait)
        return self.inner.complete(request)
