"""Images of a chat request: `image_url` parts read into bytes and checked before any
model is leased (bad input is a 400 that touches nothing else).

`data:` URLs always; `http(s)` URLs only when `server.fetch_image_urls` is on (off by
default: air-gapped sites, and a server that fetches what a client names is an SSRF
vector). Pillow reads only the image's header here, so a decompression bomb is refused
by its pixel count before libmtmd decodes it.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidRequest


@dataclass(frozen=True)
class ImageLimits:
    fetch_urls: bool = False
    max_images: int = 8  # per request
    max_pixels: int = 16_777_216  # per image (4096 x 4096)
    max_bytes: int = 8 * 1024**2  # per fetched image
    fetch_timeout_s: float = 10.0


IMAGES_KEY = web.AppKey("image_limits", ImageLimits)


async def load_images(urls: list[tuple[str, str]], limits: ImageLimits) -> list[bytes]:
    """The images' bytes, in order, from (param, url) pairs; InvalidRequest names the first
    bad one's param (messages[0].content[1].image_url.url)."""
    if len(urls) > limits.max_images:
        raise InvalidRequest(f"the request has {len(urls)} images; at most {limits.max_images} are allowed",
                             param="messages")
    out = []
    for i, (param, url) in enumerate(urls, 1):
        try:
            data = await _read(url, i, limits)
            _check(data, i, limits.max_pixels)
        except InvalidRequest as e:
            raise InvalidRequest(str(e), param=param) from None
        out.append(data)
    return out


async def _read(url: str, i: int, limits: ImageLimits) -> bytes:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidRequest(f"image {i}: a data URL must be base64 (data:image/png;base64,...)", param="messages")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"image {i}: the data URL is not valid base64", param="messages") from None
    if url.startswith(("http://", "https://")):
        if not limits.fetch_urls:
            raise InvalidRequest(f"image {i}: this server does not fetch image URLs (server.fetch_image_urls); "
                                 "send the image as a data: URL", param="messages")
        return await _fetch(url, i, limits)
    raise InvalidRequest(f"image {i}: image_url must be a data: URL" + (" or an http(s) URL" if limits.fetch_urls else ""),
                         param="messages")


async def _fetch(url: str, i: int, limits: ImageLimits) -> bytes:
    timeout = aiohttp.ClientTimeout(total=limits.fetch_timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
            if r.status != 200:
                raise InvalidRequest(f"image {i}: fetching {url} returned HTTP {r.status}", param="messages")
            data = await r.content.read(limits.max_bytes + 1)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise InvalidRequest(f"image {i}: fetching {url} failed ({e.__class__.__name__})", param="messages") from None
    if len(data) > limits.max_bytes:
        raise InvalidRequest(f"image {i}: {url} is larger than {limits.max_bytes} bytes", param="messages")
    return data


def _check(data: bytes, i: int, max_pixels: int) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        w = h = max_pixels + 1
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(f"image {i} could not be decoded (not a PNG, JPEG, GIF, BMP or WebP image?)",
                             param="messages") from None
    if w * h > max_pixels:
        raise InvalidRequest(f"image {i} has {w}x{h} pixels; at most {max_pixels} are allowed", param="messages")
