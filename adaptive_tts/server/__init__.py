"""HTTP service: the seed's API over one shared SmartAdaptiveBackend, plus OpenAI's speech endpoint.

One model is loaded at start-up and every request shares it. What may run is decided in two places:

* the server holds at most ``max_jobs`` synthesis requests at once (admitted, or waiting for memory);
  one more is answered 503 with ``Retry-After`` at once, so a burst cannot pile up threads and sockets;
* the backend's budget manager and estimator decide, for each held request, whether it runs now, waits
  for running jobs to free memory (up to ``BackendOptions.wait_timeout_s``), or is refused — a refusal
  (:class:`~adaptive_tts.backend.SynthesisRefused`) is also a 503 with ``Retry-After`` and the numbers.

The backend's ``stream()`` admits a request and returns its :class:`~adaptive_tts.synthesis.Synthesis`
before any audio is decoded, so a refusal or a bad text becomes a JSON error before response headers
are sent, not a broken stream. Admission and every chunk run on a worker thread (synthesis is CPU-bound
and would stall the event loop, and with it ``/health`` and ``/system-status``), and whatever ends a
response — the last chunk, an error, a client that went away — closes the synthesis, which releases the
job's memory reservation.

What lives where:

* :mod:`.schemas` – the pydantic request and response models (the hardware payload's derived from the
  runtime's dataclasses);
* :mod:`.errors` – :class:`ServerBusy`, :class:`SafeJSONResponse` and the exception handlers: every
  error is a JSON body with ``detail``;
* :mod:`.body` – :class:`CheckedBodyRoute`, which refuses a body over :data:`MAX_BODY_BYTES` or not
  UTF-8 before FastAPI parses it;
* :mod:`.service` – :class:`SynthesisService` (slots, worker threads, consuming a ``Synthesis``) and
  :class:`AudioStream`;
* :mod:`.routes` – the endpoints;
* :mod:`.app` – :func:`create_app` and its lifespan, which builds or adopts the backend.

Modules import only those above them in that list.
"""

from __future__ import annotations

from .app import create_app
from .body import MAX_BODY_BYTES, CheckedBodyRoute
from .errors import SafeJSONResponse, ServerBusy
from .routes import ESTIMATE_LENGTH_FACTOR
from .service import AudioStream, SynthesisService

__all__ = [
    "ESTIMATE_LENGTH_FACTOR",
    "MAX_BODY_BYTES",
    "AudioStream",
    "CheckedBodyRoute",
    "SafeJSONResponse",
    "ServerBusy",
    "SynthesisService",
    "create_app",
]
