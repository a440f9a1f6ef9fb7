"""Fetching and decoding a job's images, inside the worker (the input contract: `podstream.jobspec`).

An item's `image` is an http(s) URL, a data URL or base64, or `input:<sha256>` (an image staged on a relay,
resolved through the job's `inputs.url`). Fetches are bounded in size and time, refuse private addresses
unless listed (`PODSTREAM_INPUT_HOSTS`), connect only to the addresses they checked, and verify `sha256`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from PIL import Image

from podstream.jobspec import REF_PREFIX, SHA256_PATTERN, Item, Limits, canonical_host


class ImageError(ValueError):
    """An item's image could not be fetched or decoded; `code` goes into its error envelope."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def image_source(item: Item, inputs_url: str | None) -> tuple[str, str | None]:
    """What to load for an item's image, and the sha256 its bytes must have: an `input:<sha256>` reference
    becomes the job's `inputs.url` for it (`ImageError` when the job has none, or the reference is bad)."""
    image = item.image or ""
    if not image.startswith(REF_PREFIX):
        return image, item.image_sha256
    sha256 = image[len(REF_PREFIX) :]
    if re.fullmatch(SHA256_PATTERN, sha256) is None:
        raise ImageError(
            "bad_image", "an input: reference is input:<the image's sha256 as 64 lowercase hex digits>"
        )
    if inputs_url is None:
        raise ImageError(
            "bad_image",
            "an input: reference needs the job's inputs.url, which the relay that staged the image adds: "
            "submit the job through that relay",
        )
    if "{sig}" in inputs_url and not item.image_sig:
        raise ImageError(
            "bad_image", "this input: reference has no image_sig, which the job's inputs.url needs"
        )
    return inputs_url.replace("{sha256}", sha256).replace("{sig}", item.image_sig or ""), sha256


def load_image(ref: str, limits: Limits = Limits(), sha256: str | None = None) -> Image.Image:
    """Fetch (http/https, size- and time-limited) or decode (data URL, base64) an image as RGB. With `sha256`,
    the image's bytes (as fetched or decoded, before any image decoding) must hash to it."""
    if ref.startswith(("http://", "https://")):
        data = _fetch(ref, limits)
    else:
        payload = ref
        if ref.startswith("data:"):
            header, sep, payload = ref.partition(",")
            if not sep or ";base64" not in header:
                raise ImageError("bad_image", "a data URL image must be base64 (data:image/...;base64,...)")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("bad_image", "image is neither an http(s) URL nor valid base64") from None
    if len(data) > limits.max_image_bytes:
        raise ImageError("image_too_large", f"image is {len(data)} bytes, at most {limits.max_image_bytes}")
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise ImageError(
                "image_sha256_mismatch",
                f"the image's bytes hash to sha256 {got[:12]}..., the item's image_sha256 is {sha256[:12]}...: "
                "not the image the job names (changed or replaced since it was given)",
            )
    return decode_image(data, limits)


def decode_image(data: bytes, limits: Limits = Limits()) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if width * height > limits.max_image_pixels:
                raise ImageError(
                    "image_too_large", f"image is {width}x{height}, over {limits.max_image_pixels} pixels"
                )
            return picture.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        # Pillow's own message ends in a repr (`cannot identify image file <_io.BytesIO object at 0x...>`).
        raise ImageError(
            "bad_image",
            "image cannot be decoded: not in a format Pillow reads (PNG, JPEG, WebP, GIF, BMP, ...)",
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError("bad_image", f"image cannot be decoded: {exc}") from None


def _fetch(url: str, limits: Limits) -> bytes:
    deadline = time.monotonic() + limits.fetch_timeout_s  # httpx's timeouts are per read, not in total
    try:
        # Redirects are followed here, not by httpx, so that every hop's URL is checked; every connection,
        # to whichever host, goes through `_PinnedBackend`, which checks the address it connects to. The proxy
        # variables are ignored: the address checked must be the one connected to.
        transport = _pinned_transport(limits)
        with httpx.Client(transport=transport, timeout=limits.fetch_timeout_s, trust_env=False) as client:
            for _hop in range(limits.max_redirects + 1):
                _check_url(url)
                try:
                    with client.stream("GET", url) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = str(response.url.join(response.headers["location"]))
                            continue
                        return _read_image(response, url, limits, deadline)
                except _Blocked as exc:
                    raise _refusal(url, exc.address, exc.kind) from None
                except _Unresolved as exc:
                    raise ImageError(
                        "fetch_failed", f"GET {_short(url)}: cannot resolve {exc.host}: {exc.reason}"
                    ) from None
            raise ImageError("fetch_failed", f"GET {_short(url)}: more than {limits.max_redirects} redirects")
    except httpx.TimeoutException:
        raise ImageError(
            "fetch_failed", f"GET {_short(url)} timed out after {limits.fetch_timeout_s:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise ImageError("fetch_failed", f"GET {_short(url)} failed: {exc}") from None


class _Blocked(Exception):
    """`_PinnedBackend` refused to connect: `address` is of a `kind` a job may not reach."""

    def __init__(self, address: str, kind: str) -> None:
        super().__init__(f"{address} is a {kind} address")
        self.address = address
        self.kind = kind


class _Unresolved(Exception):
    """`_PinnedBackend` could not resolve the host it was asked to connect to."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host}: {reason}")
        self.host = host
        self.reason = reason


def _pinned_transport(limits: Limits) -> httpx.HTTPTransport:
    """An httpx transport whose connections are made by `_PinnedBackend`: TLS (SNI, certificate) and the Host
    header still name the URL's host, only the TCP connection goes to the checked address."""

    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend; its pool is rebuilt with one (the same settings otherwise: no proxy,
    # HTTP/1.1, its default TLS context).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=_PinnedBackend(limits)
    )
    return transport


class _PinnedBackend(httpcore.NetworkBackend):
    """Resolves a host once, checks every address it resolves to, and connects to those very addresses.

    Checking a name's addresses and then letting the HTTP client resolve it again would leave a window: a
    name whose DNS answers a public address to the check and a private one to the connection (DNS rebinding)
    would reach the private address with one request before any check of the peer could refuse it. Here the
    name is resolved exactly once. A host in `PODSTREAM_INPUT_HOSTS` (or any host with
    `PODSTREAM_ALLOW_PRIVATE_URLS`) is connected to as usual, unchecked."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if self._limits.allow_private_urls or _listed_host(host, port, self._limits):
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = _resolve(host, port)
        for address in addresses:  # all of them before any connection: one bad answer refuses the name
            kind = blocked_kind(address)
            if kind is not None:
                raise _Blocked(address, kind)
        error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except Exception as exc:  # httpcore's ConnectError / ConnectTimeout: try the next address
                error = exc
        assert error is not None  # `_resolve` answers at least one address
        raise error

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _resolve(host: str, port: int) -> list[str]:
    """The addresses of `host`, each once, in the resolver's order."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise _Unresolved(host, str(exc)) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise _Unresolved(host, "no address")
    return addresses


def _read_image(response: Any, url: str, limits: Limits, deadline: float) -> bytes:
    """The body of a 200 answer, within the size limit and the fetch's total deadline."""
    if response.status_code != 200:
        raise ImageError("fetch_failed", f"GET {_short(url)} answered {response.status_code}")
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_image_bytes:
        raise ImageError(
            "image_too_large", f"{_short(url)} is {declared} bytes, at most {limits.max_image_bytes}"
        )
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("total time exceeded")
        if len(body) > limits.max_image_bytes:
            raise ImageError("image_too_large", f"{_short(url)} is over {limits.max_image_bytes} bytes")
    return bytes(body)


def _check_url(url: str) -> None:
    """Refuse a URL that is not http(s). (Its host's addresses are checked when connecting: `_PinnedBackend`.)"""
    import urllib.parse

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ImageError("url_refused", f"{_short(url)} is not an http(s) URL")


def _host_port(url: str) -> tuple[str, str]:
    """The URL's host as the allow-list writes it, and `host:port` (the scheme's port when none is given).

    Parsed by httpx, which connects: a URL that another parser reads differently cannot pass as listed."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "", ""
    host = canonical_host(parsed.host)
    return host, f"{host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def _listed(url: str, limits: Limits) -> bool:
    """Whether the URL's host (and port, for an entry that has one) is in `PODSTREAM_INPUT_HOSTS`."""
    host, host_port = _host_port(url) if limits.input_hosts else ("", "")
    return bool(host) and (host in limits.input_hosts or host_port in limits.input_hosts)


def _listed_host(host: str, port: int, limits: Limits) -> bool:
    """`_listed` for the host and port a connection is made to (as httpx parsed them from the URL)."""
    if not limits.input_hosts or not host:
        return False
    canonical = canonical_host(host)
    return canonical in limits.input_hosts or f"{canonical}:{port}" in limits.input_hosts


def _refusal(url: str, address: str, kind: str) -> ImageError:
    host_port = _host_port(url)[1] or "host:port"
    return ImageError(
        "url_refused",
        f"GET {_short(url)} refused: {address} is a {kind} address. To let the worker fetch from this host, "
        f"set PODSTREAM_INPUT_HOSTS={host_port} (or PODSTREAM_ALLOW_PRIVATE_URLS=1: every private address)",
    )


def blocked_kind(address: str) -> str | None:
    """Why a job may not make the worker connect to `address` (loopback, private, ...), or None."""
    import ipaddress

    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    kinds = [
        ("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified), ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast), ("private", ip.is_private), ("reserved", ip.is_reserved),
    ]  # fmt: skip
    return next((kind for kind, matched in kinds if matched), None)


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."
