"""The Materials Project through its own client (``mp_api.client.MPRester``).

What crysray adds around the client, and why:

* **The key stays secret.** It comes from an argument or ``MP_API_KEY``, travels only in the
  ``x-api-key`` header, and every message crysray raises is scrubbed of it, so it can reach
  neither logs, manifests nor output files.
* **Transient errors are retried with back-off.** mp-api retries 429/502/504 only; its session
  is replaced by one that also retries 500 and 503 (``urllib3.Retry``, exponential back-off,
  ``Retry-After`` respected). ``CRYSRAY_MP_BACKOFF`` scales the back-off (seconds).
* **One readable line per failure** (``MPError``): a rejected key (401/403), an unreachable
  server, or a server that keeps failing after the retries.
* **Malformed records are skipped and counted**, never fatal.

``CRYSRAY_MP_ENDPOINT`` points the client at another server (a mirror, or a test server on
127.0.0.1); default the Materials Project's public API.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

KEY_ENV = "MP_API_KEY"
ENDPOINT_ENV = "CRYSRAY_MP_ENDPOINT"
BACKOFF_ENV = "CRYSRAY_MP_BACKOFF"
RETRIED_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRIES = 5
THERMO_TYPE = "GGA_GGA+U"  # the Materials Project's mixed GGA/GGA+U hull (MP2020 corrections)


class MPError(RuntimeError):
    """A Materials Project request failed; the message is one line and holds no key."""


def api_key(explicit: str | None = None) -> str:
    """The API key from ``explicit`` or ``$MP_API_KEY``; MPError if there is none."""
    key = explicit or os.environ.get(KEY_ENV, "")
    if not key.strip():
        raise MPError(
            f"no Materials Project API key: set {KEY_ENV} (or pass one explicitly); "
            "or use --hull local / --offline with a filled cache"
        )
    return key.strip()


def endpoint() -> str | None:
    return os.environ.get(ENDPOINT_ENV) or None


def _session(key: str) -> requests.Session:
    session = requests.Session()
    session.headers.update({"x-api-key": key, "user-agent": "crysray (mp-api)"})
    retry = Retry(
        total=MAX_RETRIES,
        status_forcelist=RETRIED_STATUSES,
        backoff_factor=float(os.environ.get(BACKOFF_ENV, "0.5")),
        allowed_methods=("GET",),
        respect_retry_after_header=True,
        raise_on_status=False,  # the last response reaches mp-api, which reports its status
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextmanager
def rester(key: str) -> Iterator:
    """An ``MPRester`` (plain dicts, no progress bars) whose failures become ``MPError``."""
    from mp_api.client import MPRester
    from mp_api.client.core.client import MPRestError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # version and thermo-type notices
            client = MPRester(
                api_key=key,
                endpoint=endpoint(),
                session=_session(key),
                use_document_model=False,
                mute_progress_bars=True,
            )
        with client:
            yield client
    except (MPRestError, requests.RequestException, ValueError) as e:  # ValueError: bad JSON
        raise MPError(_describe(e, key)) from None


def _describe(error: Exception, key: str) -> str:
    text = " ".join(str(error).split())
    if "valid API key" in text:
        message = f"not a valid Materials Project API key (32 characters expected): check {KEY_ENV}"
    elif " 401 " in f" {text} " or " 403 " in f" {text} ":
        message = f"the Materials Project rejected the API key (HTTP 401/403): check {KEY_ENV}"
    elif isinstance(error, requests.exceptions.ConnectionError) or "Connection" in text:
        where = endpoint() or "https://api.materialsproject.org"
        message = f"cannot reach the Materials Project at {where} ({type(error).__name__})"
    else:
        message = f"Materials Project request failed: {text[:300]}"
    return message.replace(key, "***") if key else message


def search(client, route: str, fields: list[str], **criteria) -> list[dict]:
    """``client.materials.<route>.search`` with plain-dict documents."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        docs = getattr(client.materials, route).search(**criteria, fields=fields)
    return [d if isinstance(d, dict) else d.model_dump() for d in docs]
