"""``DownloadConfig``: the options of ``wit download`` (re-exported by :mod:`pipeline.download.stage`).

The img2dataset engine's ``Img2datasetConfig`` takes the options it shares from here (:func:`same_option`,
:data:`SHARD_OPTIONS`, :func:`shard_checks`), so both engines define them once."""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Protocol

from dedup.match import MAX_DCT_DISTANCE, MAX_DISTANCE, MatchConfig
from pipeline.core.config import field, output_options
from pipeline.core.errors import WitError

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
# img2dataset's shard parquet columns (and our hashes), which input columns kept in the shards may not take
SHARD_COLUMNS = frozenset({"key", "caption", "url", "width", "height", "original_width", "original_height",
                           "status", "error_message", "exif", "md5", "sha256", "sha512", "phash", "phash_flip"})
RESERVED_COLUMNS = SHARD_COLUMNS | {"reason"}
# options of both engines that decide what a finished shard contains (part of the plan fingerprint)
SHARD_OPTIONS = ("image_size", "resize_mode", "resize_only_if_bigger", "min_image_size", "encode_format",
                 "encode_quality", "number_sample_per_shard", "keep_columns", "allow_private_networks")
DEFAULT_USER_AGENT = ("wit-builder/0.1 (+https://example.org/wit-builder; dataset crawler; "
                      "contact: wit-builder@example.org)")
DEFAULT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


SIZES_FILE = "sizes.json"  # shard name -> samples, as img2dataset writes it
OVERLAP_FILE = "overlap.parquet"


@dataclasses.dataclass
class DownloadConfig:
    """Options of ``wit download``."""

    engine: str = field("wit", help="wit: our Ray fetcher (per-host limits, opt-outs, pHash before resize); "
                        "img2dataset: img2dataset's own downloader on Ray (shared options only)")
    image_size: int = field(256, help="target size in pixels (see resize_mode)")
    resize_mode: str = field("keep_ratio", help="img2dataset resize mode: keep_ratio (shorter side = image_size, "
                                                "no crop, no padding), keep_ratio_largest, center_crop, border, no")
    resize_only_if_bigger: bool = field(False, help="only downscale, never upscale small images")
    min_image_size: int = field(0, help="drop images whose shorter side is smaller (reason image_too_small)")
    encode_format: str = field("jpg", help="image format in the shards: jpg, png or webp")
    encode_quality: int = field(95, help="re-encoding quality (jpg/webp quality 0-100, png compression 0-9)")
    number_sample_per_shard: int = field(10000, help="URLs per shard (a tar holds the successful ones)")
    keep_columns: tuple[str, ...] = field(("uid", "page_url"), help="input columns kept in the shard metadata "
                                                                    "(besides url and caption), when present")
    processes_count: int = field(0, key=False, help="CPUs of a local Ray started by this stage (0: all)")
    thread_count: int = field(64, key=False, help="download threads per shard task")
    timeout: float = field(10.0, key=False, help="seconds one image may take in all (redirects and a slowly dripping "
                                      "body included); slower ones fail with reason timeout")
    connect_timeout: float = field(5.0, key=False, help="seconds to wait for a TCP/TLS connection")
    read_timeout: float = field(5.0, key=False, help="seconds to wait for the next bytes of a response")
    retries: int = field(0, key=False, help="extra attempts per image, only after a retryable failure "
                                 "(timeout, connection error, truncated body, HTTP 429/5xx)")
    retry_failed: bool = field(False, key=False, help="on a finished folder: re-fetch only the URLs that failed with a "
                                           "retryable reason and merge the new samples into their shards")
    shard_retries: int = field(2, key=False, help="re-runs of a shard task that raised or whose worker died")
    max_per_host: int = field(8, key=False, help="concurrent requests to one host, per download task (one task per "
                                      "worker process: a host sees at most max_per_host x workers)")
    max_redirects: int = field(5, help="redirects followed per image (each hop re-checked by the address guard)")
    max_image_bytes: int = field(16 << 20, help="largest image body in bytes (larger: reason too_large)")
    max_image_pixels: int = field(50_000_000, help="largest width x height decoded, read from the image header "
                                                   "before decoding (decompression bombs: reason too_large)")
    user_agent: str = field(DEFAULT_USER_AGENT, help="User-Agent header: name your crawler, a URL about it "
                                                     "and a contact")
    robots_token: str = field("wit-builder", help="user-agent token matched by scoped X-Robots-Tag headers "
                                                  "(e.g. 'wit-builder: noai')")
    disallowed_header_directives: tuple[str, ...] = field(
        DEFAULT_DIRECTIVES, help="X-Robots-Tag directives that opt an image out (reason opted_out)")
    allow_private_networks: bool = field(False, help="allow loopback/private/link-local hosts (tests, intranets)")
    allowed_networks: tuple[str, ...] = field((), help="CIDRs allowed although private (e.g. 127.0.0.1/32 for a "
                                                       "local mirror); every other private address stays refused")
    fast_decode: bool = field(True, help="decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when that still "
                                         "leaves at least image_size pixels: same content, ~2x less decoding")
    max_distance: int = field(MAX_DISTANCE, help="pHash Hamming radius of the eval near-duplicate search (0-32): "
                                                 "the robust detector of `wit dedup`, same defaults")
    max_dct_distance: int = field(MAX_DCT_DISTANCE, help="a pHash candidate is an eval near-duplicate when its "
                                                         "256-bit DCT sign hashes differ in at most this many bits")
    drop_eval_duplicates: bool = field(False, help="leave eval near-duplicates out of the shards (reason "
                                                   "eval_duplicate) instead of only listing them in overlap/")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")

    def validate(self) -> None:
        """Raise ``WitError`` for an option out of range."""
        max_quality = 9 if self.encode_format == "png" else 100
        checks = [
            (self.engine in ("wit", "img2dataset"), "engine must be wit or img2dataset"),
            *shard_checks(self),
            (0 <= self.encode_quality <= max_quality, f"encode_quality must be between 0 and {max_quality}"),
            (self.thread_count > 0 and self.max_per_host > 0, "thread_count and max_per_host must be positive"),
            (min(self.timeout, self.connect_timeout, self.read_timeout) > 0, "timeouts must be positive"),
            (min(self.retries, self.shard_retries, self.max_redirects) >= 0,
             "retries, shard_retries and max_redirects may not be negative"),
            (self.max_image_bytes > 0 and self.max_image_pixels > 0, "max_image_bytes/pixels must be positive"),
            (self.user_agent.strip() != "" and not set("\r\n") & set(self.user_agent),
             "user_agent must be one non-empty line"),
            (0 <= self.max_distance <= 32, "max_distance must be between 0 and 32"),
            (0 <= self.max_dct_distance <= 256, "max_dct_distance must be between 0 and 256"),
            (not set(self.keep_columns) & RESERVED_COLUMNS,
             f"keep_columns may not name the shards' own columns ({', '.join(sorted(RESERVED_COLUMNS))})"),
        ]
        raise_first_failed("DownloadConfig", checks)
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise WitError(f"DownloadConfig: allowed_networks: {net!r} is not an address or CIDR") from None

    def shard_options(self) -> dict[str, Any]:
        """The options that decide what a finished shard contains (part of the plan fingerprint): all but
        those marked ``key=False`` (parallelism, timeouts and retries, whose failures ``retry_failed`` redoes)."""
        return output_options(self)

    def match_config(self) -> MatchConfig:
        """The eval near-duplicate detector's thresholds (:mod:`dedup.match`)."""
        return MatchConfig(self.max_distance, self.max_dct_distance)


# ---------------------------------------------------------------- what the img2dataset engine's config shares

class ShardShaping(Protocol):
    """A config of either engine (:class:`DownloadConfig`, ``Img2datasetConfig``), as plans and checks see it."""

    image_size: int
    resize_mode: str
    encode_format: str
    number_sample_per_shard: int
    keep_columns: tuple[str, ...]

    def shard_options(self) -> dict[str, Any]: ...


def shard_checks(cfg: ShardShaping) -> list[tuple[bool, str]]:
    """``(ok, message)`` range checks of the resize, encoding and shard-size options both engines have."""
    return [
        (cfg.resize_mode in RESIZE_MODES, f"resize_mode must be one of {', '.join(RESIZE_MODES)}"),
        (cfg.encode_format in ENCODE_FORMATS, f"encode_format must be one of {', '.join(ENCODE_FORMATS)}"),
        (cfg.image_size > 0, "image_size must be positive"),
        (cfg.number_sample_per_shard > 0, "number_sample_per_shard must be positive"),
    ]


def raise_first_failed(config_name: str, checks: list[tuple[bool, str]]) -> None:
    """Raise ``WitError("<config_name>: <message>")`` for the first failed ``(ok, message)`` check."""
    for ok, message in checks:
        if not ok:
            raise WitError(f"{config_name}: {message}")


_OPTIONS = {f.name: f for f in dataclasses.fields(DownloadConfig)}


def same_option(name: str) -> Any:
    """A new dataclass field with the default and help of ``DownloadConfig.<name>``, for a config that has
    this option with the same meaning (the img2dataset engine's)."""
    option = _OPTIONS[name]
    return field(option.default, help=option.metadata["help"])
