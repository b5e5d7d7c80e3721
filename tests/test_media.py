"""The media repository over real HTTP on both engines: uploads (direct and
asynchronous), downloads, thumbnails, the headers media is served with, and
every refusal. The throughput measurement at the end runs only when asked
(MEDIA_BENCH=1).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from homeserver.media.headers import CONTENT_SECURITY_POLICY

from .conftest import with_config

if TYPE_CHECKING:
    from .conftest import TestServer

MEDIA = "/_matrix/media/v3"
CLIENT_MEDIA = "/_matrix/client/v1/media"
SERVER = "test.local"


# ---------------------------------------------------------------- helpers


class Raw:
    """A response whose body is kept as bytes."""

    def __init__(self, status: int, body: bytes, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(
    server: TestServer,
    method: str,
    path: str,
    *,
    token: str | None = None,
    data: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Raw:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with server.http.request(
        method, server.url + path, data=data, headers=hdrs, params=params,
        skip_auto_headers=("Content-Type",),
    ) as resp:
        return Raw(resp.status, await resp.read(), resp.headers)


async def upload(
    server: TestServer,
    token: str,
    data: Any,
    content_type: str | None = "application/octet-stream",
    filename: str | None = None,
) -> Raw:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    params = {"filename": filename} if filename is not None else None
    return await raw(
        server, "POST", f"{MEDIA}/upload", token=token, data=data, headers=headers, params=params
    )


async def upload_ok(server: TestServer, token: str, data: bytes, content_type: str, **kw: Any) -> str:
    """Upload and return the media ID."""
    resp = await upload(server, token, data, content_type, **kw)
    assert resp.status == 200, resp.body
    uri = resp.json()["content_uri"]
    assert uri.startswith(f"mxc://{SERVER}/")
    return uri.rsplit("/", 1)[1]


async def download(server: TestServer, token: str | None, media_id: str, suffix: str = "", **kw: Any) -> Raw:
    return await raw(server, "GET", f"{CLIENT_MEDIA}/download/{SERVER}/{media_id}{suffix}", token=token, **kw)


async def thumbnail(server: TestServer, token: str, media_id: str, **params: Any) -> Raw:
    return await raw(
        server,
        "GET",
        f"{CLIENT_MEDIA}/thumbnail/{SERVER}/{media_id}",
        token=token,
        params={k: str(v) for k, v in params.items()},
    )


def assert_error(resp: Raw, status: int, errcode: str) -> None:
    assert resp.status == status, (resp.status, resp.body)
    body = resp.json()
    assert body["errcode"] == errcode, body
    assert isinstance(body["error"], str) and body["error"]


def image_bytes(fmt: str, size: tuple[int, int], mode: str = "RGB", **save: Any) -> bytes:
    image = Image.new(mode, size, (200, 30, 30) if mode == "RGB" else None)
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def animated_gif(size: tuple[int, int], frames: int = 3) -> bytes:
    images = [Image.new("RGB", size, (i * 80, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be width x height: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat)) + b"IDAT" + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def stored_files(server: TestServer) -> list[Path]:
    root = Path(server.hs.config.media_store_path) / "content"
    return sorted(p for p in root.rglob("*") if p.is_file())


async def user(server: TestServer, name: str = "alice") -> str:
    return (await server.register_user(name))["access_token"]


# ----------------------------------------------------------- round trips


async def test_upload_and_download_round_trip(server: TestServer) -> None:
    token = await user(server)
    data = b"hello, media\n"
    media_id = await upload_ok(server, token, data, "text/plain", filename="notes.txt")
    resp = await download(server, token, media_id)
    assert resp.status == 200
    assert resp.body == data
    assert resp.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert resp.headers["Content-Disposition"] == "inline; filename=notes.txt"
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "sandbox" in CONTENT_SECURITY_POLICY and "media-src 'self'" in CONTENT_SECURITY_POLICY
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Accept-Ranges"] == "bytes"
    # The file name in the path wins.
    resp = await download(server, token, media_id, "/other.txt")
    assert resp.body == data
    assert resp.headers["Content-Disposition"] == "inline; filename=other.txt"


async def test_unsafe_types_are_attachments(server: TestServer) -> None:
    token = await user(server)
    for content_type in ("text/html", "image/svg+xml", "application/javascript", "application/pdf"):
        media_id = await upload_ok(server, token, b"<script>alert(1)</script>", content_type)
        resp = await download(server, token, media_id)
        assert resp.headers["Content-Type"].startswith(content_type)
        assert resp.headers["Content-Disposition"] == "attachment", content_type
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_missing_content_type_is_octet_stream(server: TestServer) -> None:
    token = await user(server)
    resp = await upload(server, token, b"\x00\x01binary", content_type=None)
    assert resp.status == 200, resp.body
    media_id = resp.json()["content_uri"].rsplit("/", 1)[1]
    got = await download(server, token, media_id)
    assert got.body == b"\x00\x01binary"
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == "attachment"


@pytest.mark.parametrize("content_type", ["image", "image/png\u00e9", "/png", "a b/c", "x/" + "y" * 300])
async def test_invalid_content_type_is_refused(server: TestServer, content_type: str) -> None:
    token = await user(server)
    headers = {"Content-Type": content_type.encode("utf-8").decode("latin-1")}
    resp = await raw(server, "POST", f"{MEDIA}/upload", token=token, data=b"x", headers=headers)
    assert_error(resp, 400, "M_INVALID_PARAM")


@with_config(max_upload_size=1024 * 1024, max_request_body_size=65536)
async def test_large_upload_near_the_limit(server: TestServer) -> None:
    """Exactly max_upload_size is accepted, far above max_request_body_size (the JSON limit)."""
    token = await user(server)
    data = os.urandom(1024 * 1024)
    media_id = await upload_ok(server, token, data, "application/zip", filename="big.zip")
    resp = await download(server, token, media_id)
    assert resp.status == 200
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(data).digest()
    assert resp.headers["Content-Type"] == "application/zip"
    assert resp.headers["Content-Disposition"] == "attachment; filename=big.zip"
    # Streamed in chunks (no Content-Length) it is the same.
    async def chunks() -> Any:
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    resp = await upload(server, token, chunks(), "application/zip")
    assert resp.status == 200, resp.body
    metrics = (await server.get("/metrics")).body
    assert "homeserver_media_uploaded_bytes_total" in metrics
    assert "homeserver_media_downloaded_bytes_total" in metrics


@with_config(max_upload_size=100_000)
async def test_over_the_limit_is_refused(server: TestServer) -> None:
    token = await user(server)
    # By its Content-Length, before it is read.
    resp = await upload(server, token, b"x" * 100_001)
    assert_error(resp, 413, "M_TOO_LARGE")

    # Chunked, with no Content-Length: refused as the bytes arrive.
    async def chunks() -> Any:
        for _ in range(3):
            yield b"y" * 40_000

    resp = await upload(server, token, chunks())
    assert_error(resp, 413, "M_TOO_LARGE")
    # Nothing was kept, not even a partial file.
    assert stored_files(server) == []
    tmp = Path(server.hs.config.media_store_path) / "tmp"
    assert list(tmp.iterdir()) == []
    config = await raw(server, "GET", f"{CLIENT_MEDIA}/config", token=token)
    assert config.json() == {"m.upload.size": 100_000}


async def test_empty_upload_is_refused(server: TestServer) -> None:
    token = await user(server)
    resp = await upload(server, token, b"")
    assert_error(resp, 400, "M_INVALID_PARAM")

    async def nothing() -> Any:
        for chunk in ():
            yield chunk

    resp = await upload(server, token, nothing())
    assert_error(resp, 400, "M_INVALID_PARAM")
    assert stored_files(server) == []


async def test_identical_uploads_share_one_file(server: TestServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    data = os.urandom(5000)
    first = await upload_ok(server, alice, data, "application/octet-stream", filename="a.bin")
    second = await upload_ok(server, bob, data, "text/plain", filename="b.txt")
    assert first != second
    files = stored_files(server)
    assert len(files) == 1
    assert files[0].name == hashlib.sha256(data).hexdigest()
    one, two = await download(server, alice, first), await download(server, alice, second)
    assert one.body == two.body == data
    assert one.headers["Content-Disposition"] == "attachment; filename=a.bin"
    assert two.headers["Content-Type"] == "text/plain; charset=UTF-8"
    media = await server.hs.storage.media.get_local_media(first)
    assert media is not None
    assert (media.user_id, media.media_length, media.sha256) == (
        "@alice:test.local", 5000, hashlib.sha256(data).hexdigest()
    )


async def test_file_names_never_reach_the_disk(server: TestServer) -> None:
    token = await user(server)
    name = "../../etc/passwd/\u00e9t\u00e9 \"quoted\";.txt"
    media_id = await upload_ok(server, token, b"payload", "text/plain", filename=name)
    (path,) = stored_files(server)
    assert path.name == hashlib.sha256(b"payload").hexdigest()
    assert path.is_relative_to(Path(server.hs.config.media_store_path))
    resp = await download(server, token, media_id)
    assert resp.headers["Content-Disposition"] == (
        "inline; filename*=utf-8''..%2F..%2Fetc%2Fpasswd%2F%C3%A9t%C3%A9%20%22quoted%22%3B.txt"
    )
    # Control characters, NUL, overlong and invalid UTF-8 names are refused.
    for bad in ("a\nb", "tab\there", "x" * 256):
        resp = await upload(server, token, b"x", filename=bad)
        assert_error(resp, 400, "M_INVALID_PARAM")
    for raw_query in ("filename=a%00b", "filename=%FF%FE"):
        resp = await raw(server, "POST", f"{MEDIA}/upload?{raw_query}", token=token, data=b"x")
        assert_error(resp, 400, "M_INVALID_PARAM")


async def test_range_requests(server: TestServer) -> None:
    token = await user(server)
    data = bytes(range(256)) * 40
    media_id = await upload_ok(server, token, data, "video/mp4")
    resp = await download(server, token, media_id, headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.body == data[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert resp.headers["Content-Type"] == "video/mp4"
    resp = await download(server, token, media_id, headers={"Range": "bytes=-10"})
    assert resp.status == 206 and resp.body == data[-10:]
    resp = await download(server, token, media_id, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status == 416


# ------------------------------------------------------------- refusals


async def test_download_refusals(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, b"data", "text/plain")
    # Authentication is required on the client API.
    resp = await download(server, None, media_id)
    assert_error(resp, 401, "M_MISSING_TOKEN")
    resp = await download(server, token, "NoSuchMediaHere")
    assert_error(resp, 404, "M_NOT_FOUND")
    # Another server's media: no federation, so not found (and no crash).
    resp = await raw(server, "GET", f"{CLIENT_MEDIA}/download/other.example/{media_id}", token=token)
    assert_error(resp, 404, "M_NOT_FOUND")
    resp = await raw(server, "GET", f"{CLIENT_MEDIA}/thumbnail/other.example/{media_id}",
                     token=token, params={"width": "32", "height": "32"})
    assert_error(resp, 404, "M_NOT_FOUND")
    for bad_id in ("a.b", "..x", "abc%20def", "abc%0A", "%C3%A9t%C3%A9", "x" * 256):
        resp = await download(server, token, bad_id)
        assert_error(resp, 400, "M_INVALID_PARAM")
    for bad_server in ("bad_server!", "a%2Fb"):
        resp = await raw(server, "GET", f"{CLIENT_MEDIA}/download/{bad_server}/{media_id}", token=token)
        assert_error(resp, 400, "M_INVALID_PARAM")
    resp = await download(server, token, media_id, params={"timeout_ms": "soon"})
    assert_error(resp, 400, "M_INVALID_PARAM")
    resp = await download(server, token, media_id, params={"timeout_ms": "-1"})
    assert_error(resp, 400, "M_INVALID_PARAM")
    resp = await upload(server, "not-a-token", b"x")
    assert_error(resp, 401, "M_UNKNOWN_TOKEN")


async def test_legacy_endpoints_are_off_with_authenticated_media(server: TestServer) -> None:
    # Clients learn from /versions to use the authenticated endpoints.
    versions = await server.get("/_matrix/client/versions")
    assert versions.body["unstable_features"]["org.matrix.msc3916.stable"] is True
    token = await user(server)
    media_id = await upload_ok(server, token, image_bytes("PNG", (100, 100)), "image/png")
    for path in (
        f"{MEDIA}/download/{SERVER}/{media_id}",
        f"{MEDIA}/download/{SERVER}/{media_id}/name.png",
        f"{MEDIA}/thumbnail/{SERVER}/{media_id}?width=32&height=32",
        f"/_matrix/media/r0/download/{SERVER}/{media_id}",
    ):
        resp = await raw(server, "GET", path, token=token)
        assert_error(resp, 404, "M_NOT_FOUND")
    # Upload, create and config stay under /_matrix/media.
    resp = await raw(server, "GET", f"{MEDIA}/config", token=token)
    assert resp.json() == {"m.upload.size": server.hs.config.max_upload_size}


@with_config(enable_authenticated_media=False)
async def test_legacy_endpoints_without_authenticated_media(server: TestServer) -> None:
    token = await user(server)
    data = image_bytes("PNG", (100, 100))
    media_id = await upload_ok(server, token, data, "image/png")
    resp = await raw(server, "GET", f"{MEDIA}/download/{SERVER}/{media_id}")
    assert resp.status == 200 and resp.body == data
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    resp = await raw(server, "GET", f"/_matrix/media/r0/download/{SERVER}/{media_id}/x.png")
    assert resp.status == 200 and resp.headers["Content-Disposition"] == "inline; filename=x.png"
    resp = await raw(server, "GET", f"{MEDIA}/thumbnail/{SERVER}/{media_id}",
                     params={"width": "32", "height": "32", "method": "crop"})
    assert resp.status == 200
    assert Image.open(io.BytesIO(resp.body)).size == (32, 32)
    # The authenticated endpoints still need a token.
    assert_error(await download(server, None, media_id), 401, "M_MISSING_TOKEN")


async def test_url_previews_are_disabled(server: TestServer) -> None:
    token = await user(server)
    for prefix in (CLIENT_MEDIA, MEDIA):
        resp = await raw(server, "GET", f"{prefix}/preview_url", token=token,
                         params={"url": "https://example.com/"})
        assert_error(resp, 404, "M_UNRECOGNIZED")
        assert "disabled" in resp.json()["error"]
        resp = await raw(server, "GET", f"{prefix}/preview_url", params={"url": "https://example.com/"})
        assert_error(resp, 401, "M_MISSING_TOKEN")


# ------------------------------------------------------------ URL previews


class Site:
    """A web site on 127.0.0.1 for previews to fetch, counting the requests it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.url = ""
        self.port = 0


PNG_200x100 = image_bytes("PNG", (200, 100))
PAGE = b"""<!doctype html><html><head><title>Ignored title</title>
<meta property="og:title" content="A &amp; B">
<meta property="og:description" content="What the page is about">
<meta property="og:image" content="/image.png">
<script>document.write("not run")</script></head><body>hello</body></html>"""


@pytest.fixture
async def site() -> Any:
    from aiohttp import web

    state = Site()

    async def handle(request: web.Request) -> web.StreamResponse:
        state.requests.append(request.path)
        path = request.path
        if path == "/page":
            return web.Response(body=PAGE, content_type="text/html")
        if path == "/latin1":
            body = "<title>Caf\u00e9</title><meta name=description content='Cr\u00e8me'>".encode("latin-1")
            return web.Response(body=body, headers={"Content-Type": "text/html; charset=iso-8859-1"})
        if path == "/image.png":
            return web.Response(body=PNG_200x100, content_type="image/png")
        if path == "/big":
            return web.Response(body=b"<html>" + b"x" * 200_000, content_type="text/html")
        if path == "/redirect":
            raise web.HTTPFound("/page")
        if path == "/loop":
            raise web.HTTPFound("/loop")
        if path == "/to-private":
            raise web.HTTPFound("http://10.1.2.3/")
        if path == "/to-localhost":
            raise web.HTTPFound(f"http://localhost:{state.port}/page")
        return web.Response(status=404, text="no")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    state.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{state.port}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def preview(server: TestServer, token: str, url: str, **params: str) -> Raw:
    return await raw(server, "GET", f"{CLIENT_MEDIA}/preview_url", token=token,
                     params={"url": url, **params})


PREVIEW_LOOPBACK = {
    "url_preview_enabled": True,
    "url_preview_ip_range_whitelist": ["127.0.0.1/32"],
    "url_preview_url_blacklist": [{"path": "/secret*"}],
    "max_spider_size": 100_000,
}


@with_config(**PREVIEW_LOOPBACK)
async def test_url_preview_of_a_page(server: TestServer, site: Site) -> None:
    token = await user(server)
    resp = await preview(server, token, f"{site.url}/page", ts="1700000000000")
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["og:title"] == "A & B"
    assert body["og:description"] == "What the page is about"
    assert body["og:image:type"] == "image/png"
    assert body["matrix:image:size"] == len(PNG_200x100)
    # The image is stored as media the user can download.
    media_id = body["og:image"].removeprefix(f"mxc://{SERVER}/")
    assert (await download(server, token, media_id)).body == PNG_200x100
    # Cached: asked again, the site is not fetched again.
    fetched = len(site.requests)
    assert (await preview(server, token, f"{site.url}/page")).json() == body
    assert len(site.requests) == fetched
    # Redirects are followed; <title> and meta description stand in for OpenGraph.
    resp = await preview(server, token, f"{site.url}/redirect")
    assert resp.json()["og:title"] == "A & B"
    resp = await preview(server, token, f"{site.url}/latin1")
    assert resp.json() == {"og:title": "Caf\u00e9", "og:description": "Cr\u00e8me"}
    # An image URL is itself the preview.
    resp = await preview(server, token, f"{site.url}/image.png")
    assert resp.json()["og:image"].startswith(f"mxc://{SERVER}/")


@with_config(**PREVIEW_LOOPBACK)
async def test_url_preview_refusals(server: TestServer, site: Site) -> None:
    token = await user(server)
    resp = await raw(server, "GET", f"{CLIENT_MEDIA}/preview_url", token=token)
    assert_error(resp, 400, "M_MISSING_PARAM")
    for bad in ("ftp://example.com/", "not a url", "http://", "/relative", "x" * 3000):
        assert_error(await preview(server, token, bad), 400, "M_INVALID_PARAM")
    assert_error(await preview(server, token, f"{site.url}/page", ts="soon"), 400, "M_INVALID_PARAM")
    assert_error(await preview(server, token, f"{site.url}/secret/x"), 403, "M_FORBIDDEN")
    assert_error(await preview(server, token, f"{site.url}/big"), 502, "M_TOO_LARGE")
    assert_error(await preview(server, token, f"{site.url}/missing"), 502, "M_UNKNOWN")
    assert_error(await preview(server, token, f"{site.url}/loop"), 502, "M_UNKNOWN")
    # Redirected to a private address: refused before connecting.
    assert_error(await preview(server, token, f"{site.url}/to-private"), 403, "M_FORBIDDEN")


@with_config(url_preview_enabled=True)
async def test_url_preview_never_fetches_private_addresses(server: TestServer, site: Site) -> None:
    token = await user(server)
    for url in (
        f"{site.url}/page",
        f"http://localhost:{site.port}/page",
        f"http://[::1]:{site.port}/page",
        f"http://[::ffff:127.0.0.1]:{site.port}/page",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
    ):
        resp = await preview(server, token, url)
        assert_error(resp, 403, "M_FORBIDDEN")
    # Legacy spellings of 127.0.0.1 are refused too (by the HTTP client or the resolver).
    for url in (f"http://127.1:{site.port}/page", f"http://2130706433:{site.port}/page",
                f"http://0x7f000001:{site.port}/page"):
        resp = await preview(server, token, url)
        assert resp.status in (403, 502), (url, resp.status, resp.body)
    assert site.requests == []


@with_config(url_preview_enabled=True, url_preview_ip_range_whitelist=["127.0.0.1/32"])
async def test_url_preview_whitelist_lets_only_its_ranges_through(server: TestServer, site: Site) -> None:
    """127.0.0.1 is let through; ::1, loopback too, is not."""
    token = await user(server)
    resp = await preview(server, token, f"http://[::1]:{site.port}/page")
    assert_error(resp, 403, "M_FORBIDDEN")
    assert site.requests == []


@with_config(
    url_preview_enabled=True,
    url_preview_ip_range_whitelist=["127.0.0.1/32"],
    url_preview_url_allowlist=[{"hostname": "*.example.org"}],
)
async def test_url_preview_allowlist(server: TestServer, site: Site) -> None:
    token = await user(server)
    assert_error(await preview(server, token, f"{site.url}/page"), 403, "M_FORBIDDEN")
    assert site.requests == []


# ------------------------------------------------------- asynchronous upload


async def create(server: TestServer, token: str) -> tuple[Raw, str]:
    resp = await raw(server, "POST", "/_matrix/media/v1/create", token=token)
    media_id = resp.json()["content_uri"].rsplit("/", 1)[1] if resp.status == 200 else ""
    return resp, media_id


async def put_upload(server: TestServer, token: str, media_id: str, data: bytes,
                     server_name: str = SERVER, content_type: str = "text/plain") -> Raw:
    return await raw(server, "PUT", f"{MEDIA}/upload/{server_name}/{media_id}", token=token,
                     data=data, headers={"Content-Type": content_type}, params={"filename": "late.txt"})


async def test_async_upload(server: TestServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    before = int(time.time() * 1000)
    resp, media_id = await create(server, alice)
    assert resp.status == 200
    body = resp.json()
    assert body["content_uri"] == f"mxc://{SERVER}/{media_id}"
    day = 24 * 3600 * 1000
    assert before + day <= body["unused_expires_at"] <= int(time.time() * 1000) + day

    # Not uploaded yet: the download waits, then gives up.
    resp = await download(server, alice, media_id, params={"timeout_ms": "0"})
    assert_error(resp, 504, "M_NOT_YET_UPLOADED")
    started = time.monotonic()
    resp = await download(server, alice, media_id, params={"timeout_ms": "300"})
    assert_error(resp, 504, "M_NOT_YET_UPLOADED")
    assert time.monotonic() - started >= 0.25

    # Only its creator may upload to it.
    assert_error(await put_upload(server, bob, media_id, b"bob's"), 403, "M_FORBIDDEN")
    assert_error(await put_upload(server, alice, media_id, b""), 400, "M_INVALID_PARAM")
    assert_error(await put_upload(server, alice, media_id, b"x", server_name="other.example"),
                 404, "M_NOT_FOUND")
    assert_error(await put_upload(server, alice, "NotCreatedByAnyone", b"x"), 404, "M_NOT_FOUND")
    assert_error(await put_upload(server, alice, "bad.id", b"x"), 400, "M_INVALID_PARAM")

    # A download waiting on it is answered as soon as it is uploaded.
    waiting = asyncio.create_task(download(server, bob, media_id, params={"timeout_ms": "10000"}))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    resp = await put_upload(server, alice, media_id, b"arrived late")
    assert resp.status == 200, resp.body
    assert resp.json() == {}
    got = await waiting
    assert time.monotonic() - started < 5
    assert got.status == 200 and got.body == b"arrived late"
    assert got.headers["Content-Disposition"] == "inline; filename=late.txt"

    # Only once.
    assert_error(await put_upload(server, alice, media_id, b"again"), 409, "M_CANNOT_OVERWRITE_MEDIA")
    assert (await download(server, alice, media_id)).body == b"arrived late"


@with_config(max_pending_media_uploads=2)
async def test_pending_uploads_are_limited(server: TestServer) -> None:
    alice, bob = await user(server, "alice"), await user(server, "bob")
    _, first = await create(server, alice)
    await create(server, alice)
    resp, _ = await create(server, alice)
    assert_error(resp, 429, "M_LIMIT_EXCEEDED")
    assert resp.json()["retry_after_ms"] > 0
    # Others are not affected, and an upload frees a place.
    assert (await create(server, bob))[0].status == 200
    assert (await put_upload(server, alice, first, b"done")).status == 200
    assert (await create(server, alice))[0].status == 200


@with_config(unused_expiration_time=200)
async def test_unused_media_ids_expire(server: TestServer) -> None:
    token = await user(server)
    _, media_id = await create(server, token)
    await asyncio.sleep(0.3)
    assert_error(await put_upload(server, token, media_id, b"too late"), 404, "M_NOT_FOUND")
    assert_error(await download(server, token, media_id), 404, "M_NOT_FOUND")


# ------------------------------------------------------------- thumbnails


async def test_thumbnails_of_png_scale_and_crop(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, image_bytes("PNG", (1000, 500)), "image/png")
    # The configured sizes were made at upload, and are stored once.
    sha = hashlib.sha256(image_bytes("PNG", (1000, 500))).hexdigest()
    assert await server.hs.storage.media.get_thumbnail(sha, 320, 160, "scale", False) is not None
    assert await server.hs.storage.media.get_thumbnail(sha, 96, 96, "crop", False) is not None

    cases = [
        # (width, height, method) asked -> size given: the best configured size,
        # never smaller than asked in both dimensions.
        ((300, 200, "scale"), (320, 160)),
        ((600, 400, "scale"), (640, 320)),
        ((700, 380, "scale"), (800, 400)),
        ((100, 50, "crop"), (320, 160)),
        ((96, 96, "crop"), (96, 96)),
        ((50, 50, "crop"), (96, 96)),
        ((20, 20, "crop"), (32, 32)),
    ]
    for (width, height, method), expected in cases:
        resp = await thumbnail(server, token, media_id, width=width, height=height, method=method)
        assert resp.status == 200, resp.body
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"] == "inline"
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        image = Image.open(io.BytesIO(resp.body))
        assert (image.format, image.size) == ("PNG", expected), (width, height, method)
    # method defaults to scale.
    resp = await thumbnail(server, token, media_id, width=300, height=200)
    assert Image.open(io.BytesIO(resp.body)).size == (320, 160)


async def test_thumbnail_of_jpeg_is_jpeg(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, image_bytes("JPEG", (800, 600)), "image/jpeg")
    resp = await thumbnail(server, token, media_id, width=320, height=240, method="scale")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(resp.body))
    assert (image.format, image.size) == ("JPEG", (320, 240))
    # Asked for more than the image has: the original, not an upscaled copy.
    resp = await thumbnail(server, token, media_id, width=1000, height=1000, method="scale")
    assert resp.body == image_bytes("JPEG", (800, 600))


async def test_exif_orientation_and_webp(server: TestServer) -> None:
    token = await user(server)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 200 wide, 400 high
    rotated = image_bytes("JPEG", (400, 200), exif=exif)
    media_id = await upload_ok(server, token, rotated, "image/jpeg")
    resp = await thumbnail(server, token, media_id, width=100, height=200, method="scale")
    assert Image.open(io.BytesIO(resp.body)).size == (120, 240)
    webp = await upload_ok(server, token, image_bytes("WEBP", (500, 500)), "image/webp")
    resp = await thumbnail(server, token, webp, width=96, height=96, method="crop")
    assert resp.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(resp.body)).size == (96, 96)


async def test_small_images_are_sent_as_they_are(server: TestServer) -> None:
    token = await user(server)
    data = image_bytes("PNG", (20, 10))
    media_id = await upload_ok(server, token, data, "image/png")
    for method in ("scale", "crop"):
        resp = await thumbnail(server, token, media_id, width=64, height=64, method=method)
        assert resp.status == 200 and resp.body == data
    # Larger than the image in one dimension only: never upscaled.
    resp = await thumbnail(server, token, media_id, width=15, height=64, method="crop")
    assert max(Image.open(io.BytesIO(resp.body)).size) <= 20


async def test_gif_thumbnails_animated_or_not(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, animated_gif((400, 400)), "image/gif")
    # Not asked for (or refused): a static image.
    for params in ({}, {"animated": "false"}):
        resp = await thumbnail(server, token, media_id, width=96, height=96, method="crop", **params)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(resp.body))
        assert image.size == (96, 96) and not getattr(image, "is_animated", False)
    resp = await thumbnail(server, token, media_id, width=96, height=96, method="crop", animated="true")
    assert resp.status == 200
    assert resp.headers["Content-Type"] in ("image/webp", "image/gif")
    image = Image.open(io.BytesIO(resp.body))
    assert image.size == (96, 96)
    assert image.is_animated and image.n_frames == 3
    # A still image asked for animated is thumbnailed as usual.
    still = await upload_ok(server, token, image_bytes("GIF", (400, 400)), "image/gif")
    resp = await thumbnail(server, token, still, width=96, height=96, method="crop", animated="true")
    assert resp.headers["Content-Type"] == "image/png"
    # A small animated image asked for a still: a still of it, not the original.
    small = animated_gif((20, 20))
    small_id = await upload_ok(server, token, small, "image/gif")
    resp = await thumbnail(server, token, small_id, width=96, height=96, animated="false")
    assert resp.headers["Content-Type"] == "image/png"
    resp = await thumbnail(server, token, small_id, width=96, height=96, animated="true")
    assert resp.body == small


@with_config(dynamic_thumbnails=True)
async def test_dynamic_thumbnails(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, image_bytes("PNG", (1000, 500)), "image/png")
    for (width, height, method), expected in [
        ((100, 100, "scale"), (100, 50)),
        ((100, 100, "crop"), (100, 100)),
        ((123, 45, "crop"), (123, 45)),
        ((2000, 100, "crop"), (1000, 50)),
    ]:
        resp = await thumbnail(server, token, media_id, width=width, height=height, method=method)
        assert resp.status == 200, resp.body
        assert Image.open(io.BytesIO(resp.body)).size == expected
    sha = hashlib.sha256(image_bytes("PNG", (1000, 500))).hexdigest()
    cached = await server.hs.storage.media.get_thumbnail(sha, 123, 45, "crop", False)
    assert cached is not None and cached.content_type == "image/png"


async def test_thumbnail_refusals(server: TestServer) -> None:
    token = await user(server)
    media_id = await upload_ok(server, token, image_bytes("PNG", (100, 100)), "image/png")
    for params, errcode in [
        ({"height": 32}, "M_MISSING_PARAM"),
        ({"width": 32}, "M_MISSING_PARAM"),
        ({"width": "abc", "height": 32}, "M_INVALID_PARAM"),
        ({"width": 0, "height": 32}, "M_INVALID_PARAM"),
        ({"width": -5, "height": 32}, "M_INVALID_PARAM"),
        ({"width": 32, "height": 100_001}, "M_INVALID_PARAM"),
        ({"width": 32, "height": 32, "method": "stretch"}, "M_INVALID_PARAM"),
        ({"width": 32, "height": 32, "animated": "yes"}, "M_INVALID_PARAM"),
    ]:
        assert_error(await thumbnail(server, token, media_id, **params), 400, errcode)
    # Not an image, or not one we read.
    for data, content_type in [
        (b"just text", "text/plain"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        (b"not really a png", "image/png"),
        (image_bytes("BMP", (50, 50)), "image/png"),  # a decoder we do not use
    ]:
        other = await upload_ok(server, token, data, content_type)
        assert_error(await thumbnail(server, token, other, width=32, height=32), 400, "M_UNKNOWN")
    assert_error(await thumbnail(server, token, "Unknown", width=32, height=32), 404, "M_NOT_FOUND")


async def test_decompression_bombs_are_not_decoded(server: TestServer) -> None:
    token = await user(server)
    bomb = png_header_only(30000, 30000)  # 900 megapixels in a few hundred bytes
    assert len(bomb) < 1000
    media_id = await upload_ok(server, token, bomb, "image/png")
    started = time.monotonic()
    resp = await thumbnail(server, token, media_id, width=32, height=32)
    assert_error(resp, 413, "M_TOO_LARGE")
    assert time.monotonic() - started < 2
    # The file itself is still there to download.
    assert (await download(server, token, media_id)).body == bomb


@with_config(max_image_pixels=10_000)
async def test_max_image_pixels(server: TestServer) -> None:
    token = await user(server)
    small = await upload_ok(server, token, image_bytes("PNG", (100, 100)), "image/png")
    large = await upload_ok(server, token, image_bytes("PNG", (101, 100)), "image/png")
    assert (await thumbnail(server, token, small, width=32, height=32)).status == 200
    assert_error(await thumbnail(server, token, large, width=32, height=32), 413, "M_TOO_LARGE")
    # An animation whose frames together pass the limit is sent still.
    gif = await upload_ok(server, token, animated_gif((80, 80), frames=3), "image/gif")
    resp = await thumbnail(server, token, gif, width=32, height=32, animated="true")
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"


# ---------------------------------------------------------- throughput


@pytest.mark.skipif(not os.environ.get("MEDIA_BENCH"), reason="a measurement: MEDIA_BENCH=1 to run")
@with_config(max_upload_size="60M")
async def test_throughput_of_a_50mb_file(server: TestServer) -> None:
    token = await user(server)
    data = os.urandom(50 * 1024 * 1024)
    started = time.perf_counter()
    media_id = await upload_ok(server, token, data, "application/octet-stream")
    upload_seconds = time.perf_counter() - started
    started = time.perf_counter()
    received = hashlib.sha256()
    async with server.http.get(
        f"{server.url}{CLIENT_MEDIA}/download/{SERVER}/{media_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        async for chunk in resp.content.iter_chunked(1 << 20):
            received.update(chunk)
    download_seconds = time.perf_counter() - started
    assert received.digest() == hashlib.sha256(data).digest()
    print(
        f"\n50 MB upload: {50 / upload_seconds:.0f} MB/s;"
        f" download: {50 / download_seconds:.0f} MB/s"
    )


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "raw_config, message",
    [
        ({"thumbnail_sizes": [{"width": 0, "height": 10}]}, "thumbnail_sizes[0]: width and height"),
        ({"thumbnail_sizes": [{"width": 10, "height": 10, "method": "fit"}]}, "thumbnail_sizes[0].method"),
        ({"max_image_pixels": 0}, "max_image_pixels: must be positive"),
        ({"max_upload_size": 0}, "max_upload_size: must be at least 1 byte"),
        ({"unused_expiration_time": 0}, "unused_expiration_time: must be positive"),
        ({"max_pending_media_uploads": 0}, "max_pending_media_uploads: must be at least 1"),
        ({"url_preview_ip_range_blacklist": ["10.0.0.0/33"]}, "url_preview_ip_range_blacklist[0]"),
        ({"url_preview_ip_range_whitelist": ["nonsense"]}, "url_preview_ip_range_whitelist[0]"),
        ({"url_preview_url_blacklist": [{"host": "x"}]}, "url_preview_url_blacklist[0].host: not a URL part"),
        ({"url_preview_url_blacklist": [{"path": "^("}]}, "url_preview_url_blacklist[0].path: invalid regex"),
        ({"url_preview_url_allowlist": [{"hostname": 5}]}, "url_preview_url_allowlist[0].hostname"),
        ({"url_preview_url_allowlist": [{}]}, "url_preview_url_allowlist[0]: expected a mapping"),
    ],
)
def test_media_config_errors_name_the_key(raw_config: dict, message: str) -> None:
    from homeserver.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"server_name": "example.com", **raw_config})
    assert message in str(info.value)


def test_media_config_parses_synapse_style_values() -> None:
    from homeserver.config import parse_config

    config, unknown = parse_config({
        "server_name": "example.com",
        "max_image_pixels": "16M",
        "unused_expiration_time": "1h",
        "thumbnail_sizes": [{"width": 64, "height": 64, "method": "crop"}],
        "url_preview_url_blacklist": [{"netloc": "*.internal"}, {"path": "^/private/"}],
    })
    assert unknown == []
    assert config.max_image_pixels == 16 * 1024 * 1024
    assert config.unused_expiration_time == 3_600_000
    assert [(s.width, s.height, s.method) for s in config.thumbnail_sizes] == [(64, 64, "crop")]
