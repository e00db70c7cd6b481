"""bridge.http.client against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.errors import DeliveryError, SourceError
from bridge.http import HttpClient, Response
from bridge.http.headers import parse_link_header, parse_retry_after, rate_limit_wait

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


@pytest.fixture
async def serve(aiohttp_server: ServerFactory) -> Callable[..., Awaitable[TestServer]]:
    """Start a server with the given {path: handler} routes."""

    async def start(routes: dict[str, Handler], method: str = "*") -> TestServer:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route(method, path, handler)
        return await aiohttp_server(app)

    return start


def closed_port() -> int:
    # A port that was free a moment ago; nothing listens on it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- pure helpers ---------------------------------------------------------------------------


def test_parse_retry_after_seconds_date_and_garbage() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    for garbage in (None, "", "soon", "-5", "nan", "inf", "Mon, 99 Foo 2024"):
        assert parse_retry_after(garbage, now) is None


def test_parse_link_header_github_format() -> None:
    value = (
        '<https://api.github.com/repositories/1/issues?page=2>; rel="next", '
        '<https://api.github.com/repositories/1/issues?page=5>; rel="last"'
    )
    assert parse_link_header(value, "https://api.github.com/repos/a/b/issues") == {
        "next": "https://api.github.com/repositories/1/issues?page=2",
        "last": "https://api.github.com/repositories/1/issues?page=5",
    }


def test_parse_link_header_relative_several_rels_and_odd_params() -> None:
    value = (
        '</items?page=2&x=a,b>; title="a, b; c"; rel="next last", '
        "<https://other.example/p1>; REL=prev; rel=ignored, "
        '</again>; rel="next"'
    )
    assert parse_link_header(value, "http://h.example/items?page=1") == {
        "next": "http://h.example/items?page=2&x=a,b",
        "last": "http://h.example/items?page=2&x=a,b",
        "prev": "https://other.example/p1",
    }
    assert parse_link_header(None, "http://h/") == {}
    assert parse_link_header("garbage, <no-rel>", "http://h/") == {}


def test_rate_limit_wait() -> None:
    now = 1_700_000_000.0
    assert rate_limit_wait(200, {"Retry-After": "5"}, now) is None
    assert rate_limit_wait(429, {"Retry-After": "5"}, now) == 5.0
    assert rate_limit_wait(429, {"x-ratelimit-reset": str(int(now) + 40)}, now) == 40.0
    assert rate_limit_wait(429, {}, now) == 60.0
    limited = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 90)}
    assert rate_limit_wait(403, limited, now) == 90.0
    assert rate_limit_wait(403, {"x-ratelimit-remaining": "12"}, now) is None
    assert rate_limit_wait(403, {}, now) is None
    assert rate_limit_wait(503, {"Retry-After": "7"}, now) == 7.0
    assert rate_limit_wait(503, {}, now) is None
    assert rate_limit_wait(429, {"x-ratelimit-reset": str(int(now) - 10)}, now) == 0.0


def test_check_raises_outside_2xx_but_not_for_304() -> None:
    def response(status: int, **headers: str) -> Response:
        return Response(status, "http://h/x", headers, b"", {}, 0.0)

    assert response(204).check().ok
    assert not response(304).check().ok
    with pytest.raises(SourceError, match=r"^HTTP 404 Not Found from http://h/x$"):
        response(404).check()
    with pytest.raises(SourceError, match=r"^HTTP 599 from http://h/x$"):
        response(599).check()
    with pytest.raises(SourceError) as caught:
        response(429, **{"Retry-After": "9"}).check()
    assert caught.value.retry_after == 9.0


# --- polling ---------------------------------------------------------------------------------


async def test_conditional_request_sends_validators_and_304_is_not_modified(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    seen: list[tuple[str | None, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        seen.append((inm, ims, request.headers.get("User-Agent")))
        if inm == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        headers = {"ETag": '"v1"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT"}
        return web.Response(body=b'{"a": 1}', headers=headers)

    server = await serve({"/doc": handler})
    url = str(server.make_url("/doc"))

    pages = await http.fetch_pages("GET", url)
    assert not pages.not_modified and pages.bodies == [b'{"a": 1}'] and pages.complete
    assert (pages.etag, pages.last_modified) == ('"v1"', "Wed, 01 May 2024 10:00:00 GMT")
    assert pages.first.ok and pages.first.url == url

    again = await http.fetch_pages("GET", url, etag=pages.etag, last_modified=pages.last_modified)
    assert again.not_modified and again.bodies == [] and again.complete
    assert again.first.status == 304
    # Echoed from the 304 when it has them, else what was passed in.
    assert (again.etag, again.last_modified) == ('"v1"', "Wed, 01 May 2024 10:00:00 GMT")

    assert seen[0][:2] == (None, None)
    assert seen[1][:2] == ('"v1"', "Wed, 01 May 2024 10:00:00 GMT")
    assert seen[1][2] is not None and seen[1][2].startswith("bridge/")


async def test_link_pagination_stops_at_max_pages(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    requests: list[tuple[str, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        requests.append(
            (request.path_qs, request.headers.get("If-None-Match"), request.headers.get("X-Key"))
        )
        resp = web.Response(body=f"[{page}]".encode(), headers={"ETag": f'"p{page}"'})
        if page < 3:  # two Link fields, as RFC 8288 allows
            resp.headers.add("Link", f'</items?page={page + 1}>; rel="next"')
            resp.headers.add("Link", '</items?page=3>; rel="last"')
        return resp

    server = await serve({"/items": handler})
    url = str(server.make_url("/items"))

    pages = await http.fetch_pages(
        "GET", url, headers={"X-Key": "k"}, params={"page": "1"}, etag='"old"', max_pages=2
    )
    assert pages.bodies == [b"[1]", b"[2]"]
    assert not pages.complete
    assert pages.etag == '"p1"'
    assert pages.first.links == {"next": f"{url}?page=2", "last": f"{url}?page=3"}
    # The next page goes without validators and without the original params.
    assert requests == [("/items?page=1", '"old"', "k"), ("/items?page=2", None, "k")]

    everything = await http.fetch_pages("GET", url, max_pages=5)
    assert everything.bodies == [b"[1]", b"[2]", b"[3]"] and everything.complete


async def test_a_failing_page_raises(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def first(request: web.Request) -> web.Response:
        return web.Response(body=b"[]", headers={"Link": '</broken>; rel="next"'})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    server = await serve({"/": first, "/broken": broken})
    with pytest.raises(SourceError, match=r"HTTP 500 Internal Server Error from .*/broken"):
        await http.fetch_pages("GET", str(server.make_url("/")), max_pages=3)


async def test_max_bytes_with_content_length_chunked_gzip_and_over_pages(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"y" * 1000)
        await resp.write_eof()
        return resp

    async def bomb(request: web.Request) -> web.Response:
        body = gzip.compress(b"0" * 100_000)
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def paged(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * 600, headers={"Link": '</paged>; rel="next"'})

    server = await serve({"/sized": sized, "/chunked": chunked, "/bomb": bomb, "/paged": paged})
    for path in ("/sized", "/chunked", "/bomb"):
        url = str(server.make_url(path))
        with pytest.raises(SourceError, match=r"is over 4\.88 KB \(max_bytes\)") as caught:
            await http.request("GET", url, max_bytes=5000 - 1 if path == "/sized" else 5000)
        assert url in str(caught.value)

    assert len((await http.request("GET", str(server.make_url("/sized")), max_bytes=5000)).body)
    url = str(server.make_url("/paged"))
    with pytest.raises(SourceError, match=r"over 1000 bytes in total \(max_bytes\)"):
        await http.fetch_pages("GET", url, max_bytes=1000, max_pages=3)
    assert len((await http.fetch_pages("GET", url, max_bytes=1200, max_pages=2)).bodies) == 2


async def test_connection_refused_names_the_url(http: HttpClient) -> None:
    url = f"http://127.0.0.1:{closed_port()}/feed"
    with pytest.raises(
        SourceError, match=r"^GET http://127\.0\.0\.1:\d+/feed: connection refused$"
    ):
        await http.request("GET", url)


async def test_invalid_urls(http: HttpClient) -> None:
    with pytest.raises(SourceError, match=r"not an http:// or https:// URL"):
        await http.request("GET", "ftp://127.0.0.1/x")
    with pytest.raises(SourceError, match=r"invalid URL"):
        await http.request("GET", "http:///nohost")


async def test_timeout(serve: Callable[..., Awaitable[TestServer]], http: HttpClient) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    server = await serve({"/slow": slow})
    url = str(server.make_url("/slow"))
    try:
        with pytest.raises(SourceError, match=r"^GET .*/slow: timed out after 0\.2s$"):
            await http.request("GET", url, timeout=0.2)
    finally:
        release.set()


async def test_redirects_followed_or_not_and_too_many(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/new")

    async def new(request: web.Request) -> web.Response:
        return web.Response(text="here")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    server = await serve({"/old": moved, "/new": new, "/loop": loop})
    followed = await http.request("GET", str(server.make_url("/old")))
    assert followed.status == 200 and followed.url == str(server.make_url("/new"))
    kept = await http.request("GET", str(server.make_url("/old")), follow_redirects=False)
    assert kept.status == 301 and kept.headers["Location"] == "/new"
    with pytest.raises(SourceError, match=r"/loop: too many redirects"):
        await http.request("GET", str(server.make_url("/loop")))


async def test_429_blocks_the_host_without_reaching_the_server(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    hits = 0

    async def limited(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(status=429, headers={"Retry-After": "30"})

    server = await serve({"/": limited})
    url = str(server.make_url("/"))
    host = f"{server.host}:{server.port}"

    first = await http.request("GET", url)
    assert first.status == 429 and hits == 1
    until = http.blocked_until(host)
    assert until is not None and until == pytest.approx(time.time() + 30, abs=2)

    with pytest.raises(SourceError, match=rf"^rate limited by {host}: waiting until .* UTC") as e:
        await http.fetch_pages("GET", url)
    assert e.value.retry_after == pytest.approx(30, abs=2)
    assert hits == 1

    # A plugin's own block keeps the later time.
    http.block(host, until - 10)
    assert http.blocked_until(host) == until
    http.block(host, time.time() - 1)
    assert http.blocked_until(host) == until


async def test_403_rate_limit_remaining_zero_uses_reset(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    reset = int(time.time()) + 120

    async def limited(request: web.Request) -> web.Response:
        headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
        return web.Response(status=403, headers=headers, text="API rate limit exceeded")

    server = await serve({"/": limited})
    with pytest.raises(SourceError, match=r"^HTTP 403 Forbidden from ") as caught:
        await http.fetch_pages("GET", str(server.make_url("/")))
    assert caught.value.retry_after == pytest.approx(120, abs=2)
    assert http.blocked_until(f"{server.host}:{server.port}") == reset


async def test_expired_block_lets_requests_through(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server = await serve({"/": ok})
    host = f"{server.host}:{server.port}"
    http.block(host, time.time() - 1)
    assert http.blocked_until(host) is None
    assert (await http.request("GET", str(server.make_url("/")))).ok


async def test_method_body_auth_and_headers_are_sent(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        auth = request.headers.get("Authorization", "")
        return web.Response(text=f"{request.method} {auth} {request.query_string} {body.decode()}")

    server = await serve({"/": echo})
    resp = await http.request(
        "POST", str(server.make_url("/")), data=b"hi", params={"q": "1"}, auth=("u", "p")
    )
    assert resp.body == b"POST Basic dTpw q=1 hi"
    assert resp.elapsed > 0


async def test_per_host_bound(serve: Callable[..., Awaitable[TestServer]]) -> None:
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="ok")

    server = await serve({"/": slow})
    url = str(server.make_url("/"))
    async with HttpClient(per_host=2) as http:
        results = await asyncio.gather(*(http.request("GET", url, timeout=1) for _ in range(7)))
    assert all(r.ok for r in results)
    assert peak == 2


async def test_closed_client_refuses(http: HttpClient) -> None:
    await http.close()
    await http.close()
    with pytest.raises(SourceError, match="closed"):
        await http.request("GET", "http://127.0.0.1:1/")
    with pytest.raises(DeliveryError, match="closed"):
        await http.post("http://127.0.0.1:1/", b"", {}, timeout=1)


# --- delivery --------------------------------------------------------------------------------


async def test_post_does_not_follow_a_redirect(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/hook":
            assert await request.read() == b'{"e": 1}'
            assert request.headers["Content-Type"] == "application/json"
            raise web.HTTPFound("/elsewhere")
        return web.Response(text="followed")

    server = await serve({"/hook": hook, "/elsewhere": hook})
    resp = await http.post(
        str(server.make_url("/hook")),
        b'{"e": 1}',
        {"Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status == 302 and not resp.ok
    assert resp.headers["Location"] == "/elsewhere"
    assert hits == ["/hook"]


async def test_post_keeps_at_most_64_kib_of_the_answer(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    async def chatty(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * 200_000)

    server = await serve({"/": chatty})
    resp = await http.post(str(server.make_url("/")), b"{}", {}, timeout=5)
    assert resp.ok and len(resp.body) == 64 * 1024


async def test_post_failures_are_delivery_errors(
    serve: Callable[..., Awaitable[TestServer]], http: HttpClient
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    # Only the origin is named: a chat webhook's path is its secret.
    with pytest.raises(DeliveryError, match=r"^POST http://127\.0\.0\.1:\d+: connection refused$"):
        await http.post(url, b"{}", {}, timeout=5)

    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    server = await serve({"/": slow})
    try:
        with pytest.raises(DeliveryError, match=r"timed out after 0\.2s"):
            await http.post(str(server.make_url("/")), b"{}", {}, timeout=0.2)
    finally:
        release.set()
