"""The content repository's routes (spec: Content repository).

Authenticated: /_matrix/client/v1/media/{download,thumbnail,config,preview_url}
(preview_url answers 404 M_UNRECOGNIZED unless url_preview_enabled).
Under /_matrix/media: upload, create (asynchronous upload), config and
preview_url, and the legacy unauthenticated download and thumbnail, which
answer 404 M_NOT_FOUND while enable_authenticated_media is on (as Synapse).

Upload bodies are streamed from `request.content`, so the application's
client_max_size (max_request_body_size, for JSON) does not cut them;
max_upload_size is enforced by the repository as the bytes arrive.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from prometheus_client import Counter

from ..errors import invalid_param, missing_param, not_found, unrecognized
from ..http import Handler, Router, json_response, query_int, query_str
from ..media.headers import is_valid_content_type, media_headers
from ..media.preview import UrlPreviewer
from ..media.repository import DEFAULT_TIMEOUT_MS, Served

if TYPE_CHECKING:
    from ..app import HomeServer

logger = logging.getLogger(__name__)

DOWNLOADED_BYTES = Counter(
    "homeserver_media_downloaded_bytes_total", "Bytes of media (and thumbnails) sent"
)

MAX_FILENAME_LENGTH = 255
# Thumbnail dimensions outside 1..this are refused (none is ever upscaled anyway).
MAX_THUMBNAIL_DIMENSION = 10000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MediaFileResponse(web.FileResponse):
    """A file from the media store, counted in the downloaded-bytes metric once sent."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        if self.status in (200, 206):
            DOWNLOADED_BYTES.inc(self.content_length or 0)
        return writer


def file_response(served: Served) -> web.StreamResponse:
    if not served.path.is_file():
        logger.error("media file %s is missing from the media store", served.path)
        raise not_found("Media not found")
    # Range requests (206), conditional requests and sendfile come with FileResponse.
    headers = media_headers(served.content_type, served.filename)
    return MediaFileResponse(served.path, headers=headers)


def upload_content_type(request: web.Request) -> str:
    """The declared type of an upload; application/octet-stream when none is given (as Synapse)."""
    value = request.headers.get("Content-Type", "").strip()
    if not value:
        return "application/octet-stream"
    if not is_valid_content_type(value):
        raise invalid_param("Content-Type must be a MIME type such as image/png")
    return value


def upload_filename(request: web.Request) -> str | None:
    try:
        params = parse_qsl(request.rel_url.raw_query_string, errors="strict")
    except UnicodeDecodeError:
        raise invalid_param("The filename parameter must be UTF-8") from None
    filename = next((v for k, v in params if k == "filename"), None)
    if not filename:
        return None
    if len(filename) > MAX_FILENAME_LENGTH:
        raise invalid_param(f"The filename may be at most {MAX_FILENAME_LENGTH} characters")
    if _CONTROL.search(filename):
        raise invalid_param("The filename may not contain control characters")
    return filename


def timeout_ms(request: web.Request) -> int:
    value = query_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS)
    assert value is not None
    if value < 0:
        raise invalid_param("timeout_ms must not be negative")
    return value


def dimension(request: web.Request, key: str) -> int:
    value = query_int(request, key)
    if value is None:
        raise missing_param(f"Missing query parameter: {key}")
    if not 1 <= value <= MAX_THUMBNAIL_DIMENSION:
        raise invalid_param(f"{key} must be between 1 and {MAX_THUMBNAIL_DIMENSION}")
    return value


def thumbnail_params(request: web.Request) -> tuple[int, int, str, bool]:
    width, height = dimension(request, "width"), dimension(request, "height")
    method = request.query.get("method", "scale")
    if method not in ("crop", "scale"):
        raise invalid_param("method must be 'crop' or 'scale'")
    animated = request.query.get("animated", "false")
    if animated not in ("true", "false"):
        raise invalid_param("animated must be true or false")
    return width, height, method, animated == "true"


def register(router: Router, hs: "HomeServer") -> None:
    media = hs.media
    config = hs.config

    async def upload(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        content_type = upload_content_type(request)
        filename = upload_filename(request)
        media.check_length(request.content_length)
        uri = await media.upload(requester.user_id, request.content, content_type, filename)
        return json_response({"content_uri": uri})

    async def create(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        uri, expires = await media.create(requester.user_id)
        return json_response({"content_uri": uri, "unused_expires_at": expires})

    async def upload_to(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request)
        content_type = upload_content_type(request)
        filename = upload_filename(request)
        media.check_length(request.content_length)
        await media.upload_to(
            requester.user_id,
            request.match_info["serverName"],
            request.match_info["mediaId"],
            request.content,
            content_type,
            filename,
        )
        return json_response({})

    async def download(request: web.Request) -> web.StreamResponse:
        found = await media.get_uploaded(
            request.match_info["serverName"], request.match_info["mediaId"], timeout_ms(request)
        )
        return file_response(media.download(found, request.match_info.get("fileName")))

    async def thumbnail(request: web.Request) -> web.StreamResponse:
        width, height, method, animated = thumbnail_params(request)
        found = await media.get_uploaded(
            request.match_info["serverName"], request.match_info["mediaId"], timeout_ms(request)
        )
        return file_response(await media.thumbnail(found, width, height, method, animated))

    def authenticated(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            await hs.auth.get_requester(request, allow_guest=True)
            return await handler(request)

        return wrapped

    def legacy(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if config.enable_authenticated_media:
                raise not_found("Not found")
            return await handler(request)

        return wrapped

    async def media_config(request: web.Request) -> web.Response:
        await hs.auth.get_requester(request, allow_guest=True)
        return json_response({"m.upload.size": config.max_upload_size})

    previewer = UrlPreviewer(config, media) if config.url_preview_enabled else None

    async def preview_url(request: web.Request) -> web.Response:
        requester = await hs.auth.get_requester(request, allow_guest=True)
        if previewer is None:
            raise unrecognized("URL previews are disabled on this server")
        url = query_str(request, "url")
        query_int(request, "ts")  # checked, then unused: a preview is of the page as it is now
        return json_response(await previewer.preview(url, requester.user_id))

    for version in ("v3", "r0"):
        prefix = f"/_matrix/media/{version}"
        router.add("POST", f"{prefix}/upload", upload)
        router.add("PUT", f"{prefix}/upload/{{serverName}}/{{mediaId}}", upload_to)
        router.add("GET", f"{prefix}/config", media_config)
        router.add("GET", f"{prefix}/preview_url", preview_url)
        router.add("GET", f"{prefix}/download/{{serverName}}/{{mediaId}}", legacy(download))
        router.add(
            "GET", f"{prefix}/download/{{serverName}}/{{mediaId}}/{{fileName}}", legacy(download)
        )
        router.add("GET", f"{prefix}/thumbnail/{{serverName}}/{{mediaId}}", legacy(thumbnail))
    router.add("POST", "/_matrix/media/v1/create", create)

    router.client("GET", "/media/config", media_config, versions=("v1",))
    router.client("GET", "/media/preview_url", preview_url, versions=("v1",))
    router.client(
        "GET", "/media/download/{serverName}/{mediaId}", authenticated(download), versions=("v1",)
    )
    router.client(
        "GET",
        "/media/download/{serverName}/{mediaId}/{fileName}",
        authenticated(download),
        versions=("v1",),
    )
    router.client(
        "GET", "/media/thumbnail/{serverName}/{mediaId}", authenticated(thumbnail), versions=("v1",)
    )
