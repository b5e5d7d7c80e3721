"""URL previews: fetch a page for a client and describe it with OpenGraph data.

Fetching on behalf of users is a server-side request forgery risk, so a
URL is only fetched when:

- it is http(s), matches `url_preview_url_allowlist` (when one is set) and
  matches no entry of `url_preview_url_blacklist`;
- every address the connection may use is public: a literal IP in the URL
  is checked before anything is sent, and host names are resolved by a
  resolver that drops non-public addresses (private, loopback, link-local,
  CGNAT, multicast, reserved, documentation ranges, IPv4 embedded in IPv6)
  and those in `url_preview_ip_range_blacklist`, so the address checked is
  the address connected to (no DNS rebinding). Only
  `url_preview_ip_range_whitelist` can let a range through;
- redirects are followed by hand, each hop checked the same way;
- the body is at most `max_spider_size` bytes, the whole fetch at most
  `FETCH_TIMEOUT_SECONDS`, with no proxy from the environment and no
  compressed transfer (so the limit is on what is stored).

A page's `og:image` is fetched under the same rules and stored as media.
"""

from __future__ import annotations

import asyncio
import html.parser
import logging
import re
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlparse

import aiohttp
from yarl import URL

from ..config import Config
from ..errors import MatrixError, forbidden, invalid_param
from ..net import AddressPolicy, checking_connector, was_blocked
from .headers import base_type, is_valid_content_type
from .repository import MediaRepository

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 10
MAX_REDIRECTS = 5
MAX_URL_LENGTH = 2048
CACHE_SECONDS = 3600
CACHE_ENTRIES = 1000
_REDIRECTS = {301, 302, 303, 307, 308}
_USER_AGENT = "Mozilla/5.0 (compatible; MatrixHomeserver URL preview)"
_OG_KEYS = ("og:title", "og:description", "og:site_name", "og:type", "og:url")


@dataclass(frozen=True)
class Fetched:
    url: str
    content_type: str
    body: bytes


def _url_matches(entry: dict[str, str], url: str) -> bool:
    """Synapse's url_preview_url_blacklist rule: every part given matches its glob (or ^regex)."""
    parts = urlparse(url)
    values = {
        "scheme": parts.scheme,
        "netloc": parts.netloc,
        "path": parts.path,
        "params": parts.params,
        "query": parts.query,
        "fragment": parts.fragment,
        "username": parts.username,
        "password": parts.password,
        "hostname": parts.hostname,
        "port": str(parts.port) if parts.port is not None else None,
    }
    for part, pattern in entry.items():
        value = values.get(part)
        if value is None:
            return False
        if pattern.startswith("^"):
            if not re.match(pattern, value):
                return False
        elif not fnmatchcase(value, pattern):
            return False
    return True


class _OpenGraphParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title: str | None = None
        self.description: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k.lower(): v for k, v in attrs if v is not None}
        if tag == "meta":
            content = attributes.get("content")
            key = (attributes.get("property") or attributes.get("name") or "").lower()
            if content is None or not key:
                return
            if key.startswith("og:"):
                self.og.setdefault(key, content)
            elif key == "description":
                self.description = content
        elif tag == "title" and self.title is None:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = (self.title or "") + data


def _charset(content_type: str, body: bytes) -> str:
    m = re.search(r"charset=[\"']?([A-Za-z0-9_\-]+)", content_type, re.I) or re.search(
        rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_\-]+)", body[:4096], re.I
    )
    if m:
        name = m.group(1)
        name = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            "".encode(name)
            return name
        except LookupError:
            pass
    return "utf-8"


def parse_html(body: bytes, content_type: str) -> dict[str, str]:
    parser = _OpenGraphParser()
    parser.feed(body.decode(_charset(content_type, body), errors="replace"))
    parser.close()
    og = {k: v.strip()[:1000] for k, v in parser.og.items() if k in _OG_KEYS or k == "og:image"}
    if "og:title" not in og and parser.title and parser.title.strip():
        og["og:title"] = parser.title.strip()[:1000]
    if "og:description" not in og and parser.description:
        og["og:description"] = parser.description.strip()[:1000]
    return og


class UrlPreviewer:
    def __init__(self, config: Config, media: MediaRepository) -> None:
        self.config = config
        self.media = media
        self.policy = AddressPolicy(
            config.url_preview_ip_range_blacklist, config.url_preview_ip_range_whitelist
        )
        # url -> (expires at (monotonic), preview)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def check_url(self, url: str) -> None:
        """Refuse a URL by its form and the configured URL lists, before any request."""
        try:
            parsed = URL(url)
        except ValueError:
            raise invalid_param("Invalid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise invalid_param("Only http and https URLs can be previewed")
        allowlist = self.config.url_preview_url_allowlist
        if allowlist and not any(_url_matches(e, url) for e in allowlist):
            raise forbidden("URL is not in the list of URLs that may be previewed")
        if any(_url_matches(e, url) for e in self.config.url_preview_url_blacklist):
            raise forbidden("URL blocked by url_preview_url_blacklist")
        if not self.policy.allows_host(parsed.host):
            raise forbidden("IP address blocked")

    async def preview(self, url: str, user_id: str) -> dict[str, Any]:
        if len(url) > MAX_URL_LENGTH:
            raise invalid_param(f"URL may be at most {MAX_URL_LENGTH} characters")
        self.check_url(url)
        now = time.monotonic()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        fetched = await self.fetch(url)
        kind = base_type(fetched.content_type)
        result: dict[str, Any] = {}
        if kind in ("text/html", "application/xhtml+xml"):
            # Up to max_spider_size of HTML: parsed off the event loop.
            result = await asyncio.to_thread(parse_html, fetched.body, fetched.content_type)
            image_url = result.pop("og:image", None)
            if image_url:
                try:
                    image_url = str(URL(fetched.url).join(URL(image_url)))
                    self.check_url(image_url)
                    image = await self.fetch(image_url)
                except MatrixError as err:
                    logger.info("preview of %s: no image from %s: %s", url, image_url, err.error)
                else:
                    if base_type(image.content_type).startswith("image/"):
                        result.update(await self._store_image(image, user_id))
        elif kind.startswith("image/"):
            result = await self._store_image(fetched, user_id)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[url] = (now + CACHE_SECONDS, result)
        return result

    async def _store_image(self, image: Fetched, user_id: str) -> dict[str, Any]:
        content_type = base_type(image.content_type)
        if not is_valid_content_type(content_type):
            content_type = "application/octet-stream"
        name = URL(image.url).name or None
        uri = await self.media.store_content(user_id, image.body, content_type, name)
        return {
            "og:image": uri,
            "og:image:type": content_type,
            "matrix:image:size": len(image.body),
        }

    async def fetch(self, url: str) -> Fetched:
        """GET `url` under the rules above, following checked redirects."""
        connector = checking_connector(self.policy, limit=4)
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        ) as session:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_url(url)
                try:
                    async with session.get(url, allow_redirects=False, headers=headers) as resp:
                        if resp.status in _REDIRECTS:
                            location = resp.headers.get("Location")
                            if not location:
                                raise _bad_gateway(f"redirect without a Location from {url}")
                            url = str(resp.url.join(URL(location)))
                            continue
                        if resp.status != 200:
                            raise _bad_gateway(f"{url} answered {resp.status}")
                        body = await self._read_body(resp)
                        content_type = resp.headers.get("Content-Type", "application/octet-stream")
                        return Fetched(str(resp.url), content_type, body)
                except aiohttp.ClientConnectorError as err:
                    if was_blocked(err):
                        raise forbidden("IP address blocked") from None
                    raise _bad_gateway(f"could not connect to {URL(url).host}: {err}") from None
                except (aiohttp.ClientError, TimeoutError) as err:
                    raise _bad_gateway(f"fetching {url} failed: {err!r}") from None
            raise _bad_gateway("too many redirects")

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.config.max_spider_size
        if resp.content_length is not None and resp.content_length > limit:
            raise _too_large(limit)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)


def _bad_gateway(reason: str) -> MatrixError:
    logger.info("URL preview: %s", reason)
    return MatrixError(502, "M_UNKNOWN", "Failed to fetch the URL to preview")


def _too_large(limit: int) -> MatrixError:
    return MatrixError(502, "M_TOO_LARGE", f"The content is larger than {limit} bytes")
