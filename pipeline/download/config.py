"""``DownloadConfig``: the options of ``wit download`` (re-exported by :mod:`pipeline.download.stage`).

The img2dataset engine's ``Img2datasetConfig`` takes the options it shares from here (:func:`same_option`,
with their bounds, and :data:`SHARD_OPTIONS`), so both engines define them once."""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Protocol

from dedup.match import MAX_DCT_DISTANCE, MAX_DISTANCE, MatchConfig
from pipeline.core.config import Config, field, output_options

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
class DownloadConfig(Config, section="download"):
    """Options of ``wit download`` (checked when built: field bounds, then :meth:`check`)."""

    engine: str = field("wit", help="wit: our Ray fetcher (per-host limits, opt-outs, pHash before resize); "
                        "img2dataset: img2dataset's own downloader on Ray (shared options only)",
                        choices=("wit", "img2dataset"))
    image_size: int = field(256, min=1, help="target size in pixels (see resize_mode)")
    resize_mode: str = field("keep_ratio", help="img2dataset resize mode: keep_ratio (shorter side = image_size, "
                                                "no crop, no padding), keep_ratio_largest, center_crop, border, no",
                             choices=RESIZE_MODES)
    resize_only_if_bigger: bool = field(False, help="only downscale, never upscale small images")
    min_image_size: int = field(0, min=0, help="drop images whose shorter side is smaller (reason image_too_small)")
    encode_format: str = field("jpg", choices=ENCODE_FORMATS, help="image format in the shards: jpg, png or webp")
    encode_quality: int = field(95, help="re-encoding quality (jpg/webp quality 0-100, png compression 0-9)",
                                min=0, max=100)
    number_sample_per_shard: int = field(10000, min=1, help="URLs per shard (a tar holds the successful ones)")
    keep_columns: tuple[str, ...] = field(("uid", "page_url"), help="input columns kept in the shard metadata "
                                                                    "(besides url and caption), when present")
    processes_count: int = field(0, min=0, key=False, help="CPUs of a local Ray started by this stage (0: all)")
    thread_count: int = field(64, min=1, key=False, help="download threads per shard task")
    timeout: float = field(10.0, gt=0, key=False, help="seconds one image may take in all (redirects and a slowly dripping "
                                            "body included); slower ones fail with reason timeout")
    connect_timeout: float = field(5.0, gt=0, key=False, help="seconds to wait for a TCP/TLS connection")
    read_timeout: float = field(5.0, gt=0, key=False, help="seconds to wait for the next bytes of a response")
    retries: int = field(0, min=0, key=False, help="extra attempts per image, only after a retryable failure "
                                        "(timeout, connection error, truncated body, HTTP 429/5xx)")
    retry_failed: bool = field(False, key=False, help="on a finished folder: re-fetch only the URLs that failed with a "
                                           "retryable reason and merge the new samples into their shards")
    shard_retries: int = field(2, min=0, key=False, help="re-runs of a shard task that raised or whose worker died")
    max_per_host: int = field(8, min=1, key=False, help="concurrent requests to one host, per download task (one task per "
                                             "worker process: a host sees at most max_per_host x workers)")
    max_redirects: int = field(5, min=0, help="redirects followed per image (each hop re-checked by the address guard)")
    max_image_bytes: int = field(16 << 20, min=1, help="largest image body in bytes (larger: reason too_large)")
    max_image_pixels: int = field(50_000_000, min=1, help="largest width x height decoded, read from the image header "
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
                                                 "the robust detector of `wit dedup`, same defaults", min=0, max=32)
    max_dct_distance: int = field(MAX_DCT_DISTANCE, help="a pHash candidate is an eval near-duplicate when its "
                                                         "256-bit DCT sign hashes differ in at most this many bits",
                                  min=0, max=256)
    drop_eval_duplicates: bool = field(False, help="leave eval near-duplicates out of the shards (reason "
                                                   "eval_duplicate) instead of only listing them in overlap/")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    progress: bool = field(True, key=False, help="show a progress bar over shards (only on a terminal)")

    def check(self) -> None:
        """Rules between options, and values a bound cannot express."""
        if self.encode_format == "png" and self.encode_quality > 9:
            self.fail("encode_quality", f"expected a png compression level between 0 and 9, got {self.encode_quality}")
        if not self.user_agent.strip() or set("\r\n") & set(self.user_agent):
            self.fail("user_agent", f"expected one non-empty line, got {self.user_agent!r}")
        check_keep_columns(self, RESERVED_COLUMNS)
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                self.fail("allowed_networks", f"expected addresses or CIDRs, got {net!r}")

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


def check_keep_columns(cfg: Config, reserved: frozenset[str]) -> None:
    """``keep_columns`` may not name a column the engine writes itself."""
    clash = sorted(set(cfg.keep_columns) & reserved)  # type: ignore[attr-defined]
    if clash:
        cfg.fail("keep_columns", f"{', '.join(clash)} is a column of the shards themselves "
                                 f"(reserved: {', '.join(sorted(reserved))})")


_OPTIONS = {f.name: f for f in dataclasses.fields(DownloadConfig)}


def same_option(name: str) -> Any:
    """A new dataclass field with the default, help and bounds of ``DownloadConfig.<name>``, for a config that
    has this option with the same meaning (the img2dataset engine's)."""
    option = _OPTIONS[name]
    return dataclasses.field(default=option.default, metadata=option.metadata)
