"""HTTP calls to servers and the router: timeouts everywhere, retries from urllib3."""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import PdbenchError


class HTTPCallError(PdbenchError):
    """A control call failed; the message names the URL."""


def session(retries: int = 3) -> requests.Session:
    """A session that retries connection errors and 502/503/504 with backoff.

    POSTs are retried too: every control call pdbench makes is idempotent (setting
    slow_down to a value, starting a profile is guarded by the caller).
    """
    retry = Retry(
        total=retries,
        connect=retries,
        read=0,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),
        raise_on_status=False,
    )
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    return s


_SESSION = session()


def call(method: str, url: str, body: Any = None, timeout_s: float = 30.0,
         retry: bool = True) -> requests.Response:
    """One call; raises HTTPCallError naming the URL on a connection error or non-2xx."""
    sess = _SESSION if retry else requests
    try:
        response = sess.request(method, url, json=body, timeout=timeout_s)
    except requests.RequestException as exc:
        raise HTTPCallError(f"{method} {url} failed: {exc}") from None
    if not response.ok:
        raise HTTPCallError(
            f"{method} {url} answered {response.status_code}: {response.text.strip()[:300]}"
        )
    return response


def probe(url: str, timeout_s: float = 5.0) -> int | None:
    """Status code of a GET without retries, or None when nothing answers."""
    try:
        return requests.get(url, timeout=timeout_s).status_code
    except requests.RequestException:
        return None
