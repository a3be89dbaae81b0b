"""Requests to other origins (token services, storage redirects) and through proxies, on a
``requests.Session``; imported only when a transport first needs one, so a pass against a
registry's own origin never loads ``requests`` and ``urllib3`` (a tenth of the start-up).

Errors come out as :mod:`.connections`' :class:`WireError` and :class:`TLSError`, on the
request and while its body is read, so the transport has one set of rules for both paths.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from reconciler.registry.connections import TLSError, WireError, reason_of
from reconciler.registry.trust import default_context


class _Adapter(HTTPAdapter):
    """An HTTPAdapter whose pools (direct and through a proxy) use one TLS context."""

    def __init__(self, context: ssl.SSLContext, maxsize: int) -> None:
        self._context = context
        super().__init__(pool_connections=4, pool_maxsize=maxsize, max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("ssl_context", self._context)
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # The context decides what is trusted; requests would add certifi's bundle.
        if url.lower().startswith("https"):
            conn.cert_reqs = "CERT_REQUIRED"


def session(base_url: str, own: ssl.SSLContext | None, size: int, agent: str) -> requests.Session:
    """A session trusting what the common trust store trusts, and for the registry's own
    origin (``base_url``) its own context ``own`` (its CA, its client certificate)."""
    made = requests.Session()
    made.trust_env = False  # never ~/.netrc; proxies are read per origin by the transport
    other = _Adapter(default_context(), size)
    made.mount("http://", other)
    made.mount("https://", other)
    if own is not None:
        made.mount(base_url + "/", _Adapter(own, size))
    made.headers["User-Agent"] = agent
    return made


def send(made: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request, its body left to read from ``raw``; no redirect followed, no retry."""
    try:
        response = made.request(method, url, stream=True, allow_redirects=False, **kwargs)
    except requests.exceptions.SSLError as exc:
        raise TLSError(reason_of(str(exc), type(exc).__name__)) from None
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        raise WireError(reason_of(str(exc), type(exc).__name__)) from None
    response.raw = _Translated(response.raw)
    return response


def proxies(url: str) -> dict[str, str]:
    """The environment's proxies for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``, as
    ``requests`` reads them)."""
    found = requests.utils.get_environ_proxies(url)
    return {k: v for k, v in found.items() if k in ("http", "https", "all")}


class _Translated:
    """urllib3's response body, its errors as :class:`WireError`."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def stream(self, amount: int, decode_content: bool = True) -> Iterator[bytes]:
        """The body in pieces."""
        try:
            yield from self._raw.stream(amount, decode_content=decode_content)
        except urllib3.exceptions.ReadTimeoutError:
            raise WireError("Read timed out") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WireError(reason_of(str(exc), "Connection aborted")) from None

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        """Up to the bytes asked for."""
        try:
            data: bytes = self._raw.read(*args, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise WireError(reason_of(str(exc), "Connection aborted")) from None
        return data

    def release_conn(self) -> None:
        """Back to urllib3's pool."""
        self._raw.release_conn()

    def close(self) -> None:
        """Drop the connection."""
        self._raw.close()
