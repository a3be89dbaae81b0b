"""Transport rules and API edge cases, against tiny loopback servers written here."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from reconciler.registry import (
    OCI_INDEX,
    AuthenticationFailed,
    DigestMismatch,
    DockerCredentials,
    HostConfig,
    HttpRegistry,
    RegistryRefused,
    RequestStats,
    ResponseTooLarge,
    RetryPolicy,
)
from reconciler.registry.pacing import RateLimiter, backoff, retry_after

Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[http.server.BaseHTTPRequestHandler], Reply]


class FakeServer:
    """Answers (method, path-without-query) from a route table; records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.seen.append((self.command, self.path, dict(self.headers)))
                route = server.routes.get((self.command, self.path.split("?")[0]))
                status, headers, body = route(self) if route else (404, {}, b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"

    def route(self, method: str, path: str, reply: Route) -> None:
        self.routes[(method, path)] = reply

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


def client(host: str, **kwargs: object) -> HttpRegistry:
    config = HostConfig(plain_http=True, retry=RetryPolicy(attempts=2, base=0.0, cap=0.0))
    return HttpRegistry(host, config, **kwargs)  # type: ignore[arg-type]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = RetryPolicy(base=0.2, cap=1.0)
    for failures in range(1, 10):
        assert 0.0 <= backoff(policy, failures) <= min(1.0, 0.2 * 2 ** (failures - 1))


def test_retry_after_accepts_seconds_and_dates_and_is_capped() -> None:
    policy = RetryPolicy(retry_after_cap=30.0)
    assert retry_after("7", policy) == 7.0
    assert retry_after("999", policy) == 30.0
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    seconds = retry_after(future, policy)
    assert seconds is not None and 15 <= seconds <= 20
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=20), usegmt=True)
    assert retry_after(past, policy) == 0.0
    assert retry_after("soon", policy) is None
    assert retry_after(None, policy) is None


def test_request_stats_count_by_host_method_and_status() -> None:
    stats = RequestStats()
    stats.record("h", "GET", "200")
    stats.record("h", "PUT", "201")
    stats.record("g", "DELETE", "error")
    assert stats.total() == 3 and stats.total(host="h") == 2 and stats.total(status="201") == 1
    assert stats.writes() == 2 and stats.writes("h") == 1


def test_authorization_is_not_forwarded_to_another_host_on_redirect(
    server: FakeServer, tmp_path: Path
) -> None:
    storage = FakeServer()
    try:
        blob = b"layer bytes"
        digest = sha(blob)

        def guarded(handler: http.server.BaseHTTPRequestHandler) -> Reply:
            if "Authorization" not in handler.headers:
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": f"http://{storage.host}/bucket/{digest}?sig=SECRET"}, b""

        server.route("GET", f"/v2/r/blobs/{digest}", guarded)
        storage.route("GET", f"/bucket/{digest}", lambda h: (200, {}, blob))
        (tmp_path / "config.json").write_text(
            json.dumps({"auths": {server.host: {"auth": base64.b64encode(b"u:pw").decode()}}})
        )
        registry = client(server.host, credentials=DockerCredentials(str(tmp_path)))
        with registry.open_blob("r", digest) as chunks:
            assert b"".join(chunks) == blob
        assert "Authorization" in server.seen[-1][2]
        assert storage.seen and "Authorization" not in storage.seen[0][2]
    finally:
        storage.close()


def test_list_tags_follows_link_pagination_and_tolerates_null(server: FakeServer) -> None:
    pages = {
        "/v2/r/tags/list": (["a", "b"], '</v2/r/tags/list?n=2&last=b>; rel="next"'),
        "/v2/r/tags/list?n=2&last=b": (None, '</v2/r/tags/list?n=2&last=c>; rel="next"'),
        "/v2/r/tags/list?n=2&last=c": (["c"], ""),
    }

    def page(handler: http.server.BaseHTTPRequestHandler) -> Reply:
        tags, link = pages[handler.path]
        headers = {"Link": link} if link else {}
        return 200, headers, json.dumps({"name": "r", "tags": tags}).encode()

    server.route("GET", "/v2/r/tags/list", page)
    assert client(server.host).list_tags("r") == ["a", "b", "c"]


def test_resolve_hashes_the_body_when_head_has_no_digest_header(server: FakeServer) -> None:
    manifest = json.dumps({"mediaType": OCI_INDEX, "manifests": []}).encode()
    server.route("HEAD", "/v2/r/manifests/v1", lambda h: (200, {}, b""))
    server.route(
        "GET", "/v2/r/manifests/v1", lambda h: (200, {"Content-Type": OCI_INDEX}, manifest)
    )
    assert client(server.host).resolve("r", "v1") == sha(manifest)
    accept = server.seen[0][2]["Accept"]
    assert "application/vnd.oci.image.manifest.v1+json" in accept and OCI_INDEX in accept


def test_a_registry_that_rewrites_a_manifest_is_caught(server: FakeServer) -> None:
    manifest = b'{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    server.route(
        "PUT",
        "/v2/r/manifests/v1",
        lambda h: (201, {"Docker-Content-Digest": sha(b"rewritten")}, b""),
    )
    with pytest.raises(DigestMismatch, match="rewrote"):
        client(server.host).put_manifest("r", "v1", manifest)
    assert server.seen[0][2]["Content-Type"] == OCI_INDEX


def test_the_referrers_api_is_used_when_offered(server: FakeServer) -> None:
    digest = sha(b"subject")
    referrer = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(b"r"),
                "size": 1, "artifactType": "application/x"}  # fmt: skip
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [referrer]})
    server.route("GET", f"/v2/r/referrers/{digest}", lambda h: (200, {}, body.encode()))
    registry = client(server.host)
    assert [d.digest for d in registry.referrers("r", digest)] == [sha(b"r")]
    assert registry.has_referrers_api is True


def test_tag_delete_uses_the_tag_delete_api_where_it_exists(server: FakeServer) -> None:
    server.route(
        "HEAD", "/v2/r/manifests/v1", lambda h: (200, {"Docker-Content-Digest": sha(b"m")}, b"")
    )
    server.route("DELETE", "/v2/r/manifests/v1", lambda h: (202, {}, b""))
    client(server.host).delete_tag("r", "v1")
    assert [(m, p) for m, p, _ in server.seen][-1] == ("DELETE", "/v2/r/manifests/v1")


def test_the_rate_limiter_spaces_request_starts() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.acquire()
    assert slept == [0.25, 0.25, 0.25]
    now[0] += 10
    limiter.acquire()  # idle time is not banked into a burst
    assert len(slept) == 3


# --------------------------------------------------------------------------- caps and origins


def test_a_manifest_over_the_cap_is_refused_before_it_is_read(server: FakeServer) -> None:
    huge = b"{" + b" " * (5 << 20) + b"}"
    server.route("GET", "/v2/r/manifests/v1", lambda h: (200, {"Content-Type": OCI_INDEX}, huge))
    with pytest.raises(ResponseTooLarge, match="limit"):
        client(server.host).get_manifest("r", "v1")


def test_a_body_without_a_length_is_cut_at_the_cap(server: FakeServer) -> None:
    def chunked(handler: http.server.BaseHTTPRequestHandler) -> Reply:
        # Announce no length: the client must stop reading by itself.
        return 200, {"Content-Length": ""}, b"x" * (17 << 20)

    server.route("GET", "/v2/r/tags/list", chunked)
    with pytest.raises(ResponseTooLarge):
        client(server.host).list_tags("r")


def test_a_small_blob_is_read_capped_and_checked(server: FakeServer) -> None:
    blob = b"a record's body"
    server.route("GET", f"/v2/r/blobs/{sha(blob)}", lambda h: (200, {}, blob))
    registry = client(server.host)
    assert registry.read_blob("r", sha(blob), 1024) == blob
    with pytest.raises(ResponseTooLarge):
        registry.read_blob("r", sha(blob), 4)
    liar = sha(b"something else")
    server.route("GET", f"/v2/r/blobs/{liar}", lambda h: (200, {}, blob))
    with pytest.raises(DigestMismatch):
        registry.read_blob("r", liar, 1024)


def test_an_error_body_is_cut_not_refused(server: FakeServer) -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": "x" * (1 << 20)}]}).encode()
    server.route("GET", "/v2/r/manifests/v1", lambda h: (403, {}, body))
    with pytest.raises(AuthenticationFailed) as caught:
        client(server.host).get_manifest("r", "v1")
    assert len(str(caught.value)) < 2000


def test_a_401_from_another_origin_is_not_answered_with_credentials(
    server: FakeServer, tmp_path: Path
) -> None:
    other = FakeServer()
    try:
        data = b"upload"
        server.route(
            "POST",
            "/v2/r/blobs/uploads/",
            lambda h: (202, {"Location": f"http://{other.host}/upload/1"}, b""),
        )
        other.route(
            "PUT", "/upload/1", lambda h: (401, {"WWW-Authenticate": 'Basic realm="x"'}, b"")
        )
        (tmp_path / "config.json").write_text(
            json.dumps({"auths": {server.host: {"auth": base64.b64encode(b"u:pw").decode()}}})
        )
        registry = client(server.host, credentials=DockerCredentials(str(tmp_path)))
        with pytest.raises(AuthenticationFailed):
            registry.put_blob("r", sha(data), len(data), [data])
        assert [m for m, _, _ in other.seen] == ["PUT"]  # asked once, never answered
        assert "Authorization" not in other.seen[0][2]
    finally:
        other.close()


def _image_naming(blob: bytes) -> bytes:
    desc = {"mediaType": "application/octet-stream", "digest": sha(blob), "size": len(blob)}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {**desc, "mediaType": "application/vnd.oci.empty.v1+json"},
            "layers": [desc],
        }
    ).encode()


@pytest.mark.parametrize("present", [True, False], ids=["blobs-there", "blob-missing"])
def test_a_manifest_refused_as_naming_unknown_blobs_is_sent_again_only_if_they_exist(
    server: FakeServer, present: bool
) -> None:
    """distribution's filesystem storage can answer MANIFEST_BLOB_UNKNOWN while another
    request rewrites a blob's link: the PUT is sent again when every blob is there."""
    blob = b"{}"
    manifest = _image_naming(blob)
    answers = iter([400, 201])
    unknown = json.dumps({"errors": [{"code": "MANIFEST_BLOB_UNKNOWN", "message": "x"}]})

    def put(handler: http.server.BaseHTTPRequestHandler) -> Reply:
        status = next(answers)
        body = unknown.encode() if status == 400 else b""
        return status, {"Docker-Content-Digest": sha(manifest)} if status == 201 else {}, body

    server.route("PUT", "/v2/r/manifests/v1", put)
    server.route("HEAD", f"/v2/r/blobs/{sha(blob)}", lambda h: (200 if present else 404, {}, b""))
    registry = client(server.host, sleep=lambda s: None)
    if present:
        assert registry.put_manifest("r", "v1", manifest) == sha(manifest)
    else:
        with pytest.raises(RegistryRefused, match="MANIFEST_BLOB_UNKNOWN"):
            registry.put_manifest("r", "v1", manifest)
    puts = [m for m, p, _ in server.seen if m == "PUT"]
    assert len(puts) == (2 if present else 1)
