"""File-name captions: camera, phone and screenshot names, timestamps, stock ids, hashes, sizes, slugs,
paths and camera exposure settings (``FILENAME_PATTERNS``, ``EXPOSURE_TOKEN``; RE2, case-insensitive).

:class:`FilenameRule` runs its patterns only on the rows of the shared screen (or of its own screen
when given custom patterns) and names the first pattern matched in the ``filename_pattern`` column.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filter.rules.base import Batch, ScreenedRule, alternation, regex_mask, regex_on, screened

_EXT = r"(?:jpe?g|jpe|jfif|png|gif|bmp|tiff?|webp|heic|heif|avif|svg|ico|raw|cr2|cr3|nef|arw|dng|orf|rw2|psd)"
_OPT_EXT = rf"(?:\.{_EXT})?"
_NUMBERED = r"(?:\s*\(\d+\)|\s+copy(?:\s\d+)?|[\s_\-]edit(?:ed)?)?"
#: Filename-like captions. Each entry is a tuple of RE2 patterns that must ALL match (case-insensitive).
FILENAME_PATTERNS: dict[str, tuple[str, ...]] = {
    # anything ending in an image extension: "IMG_2034.JPG", "sunset beach.jpg", "/img/a.png"
    "extension": (rf"\.{_EXT}$",),
    # only an extension or a MIME type: "jpg", ".PNG", "JPEG image", "image/jpeg", "PNG file"
    "bare_extension": (rf"^(?:image/)?\.?{_EXT}(?:\s+(?:image|file|photo|format|icon))?$",),
    # camera and phone names: IMG_2034, DSC00123, _DSC1234, P1010123, PXL_20210715_123456789, GOPR0123,
    # FB_IMG_1612345678901, received_1234567890, signal-2021-03-04-101112, Snapchat-123456789
    "camera": (r"^_?(?:img|image|imgp|dsc|dscn|dscf|dsc_|dcim|dcp|pic|pict|p|mvi|mvimg|gopr|gp|gh|gx|dji|sam|"
               r"wp|pxl|vid|cimg|imag|pano|burst|sdc|hpim|photo|foto|fb_img|mmexport|screenshot|received|"
               r"signal|snapchat|inshot)[\s_\-]*\d{3,}"
               r"[\w\-~.]*" + _NUMBERED + _OPT_EXT + "$",),
    # timestamps: 20160716_113957, 2016-07-16 11.39.57, WhatsApp Image 2021-03-04 at 10.11.12, Photo 12-03-2019
    "timestamp": (r"^(?:[a-z]+[\s_\-]){0,3}(?:19|20)\d\d[\-_.]?[01]\d[\-_.]?[0-3]\d[\sT_\-]*(?:at\s+)?"
                  r"[0-2]?\d[.:_\-h]?[0-5]\d(?:[.:_\-]?[0-5]\d)?(?:\s?[ap]m)?[\w\-~()]*" + _NUMBERED + _OPT_EXT + "$",),
    "date_name": (r"^(?:[a-z]+[\s_\-]){1,3}(?:(?:19|20)\d\d[\-_.][01]?\d[\-_.][0-3]?\d|[0-3]?\d[\-_.][01]?\d[\-_.]"
                  r"(?:19|20)\d\d)(?:[,\s_\-]+\d{1,2}[\s.:_\-]\d\d(?:[\s.:_\-]\d\d)?)?" + _NUMBERED + _OPT_EXT + "$",
                  r"^(?:whatsapp|photo|image|img|picture|pic|foto|video|vid|scan|capture|signal|snapshot|pasted|"
                  r"screenshot|screen|file|doc|pxl|burst|selfie)"),
    # screenshots with a date, time or number: "Screenshot 2021-03-04 at 10.11.12", "Screen Shot (12)"
    "screenshot": (r"^(?:screenshot|screen[\s_\-]?shot|bildschirmfoto|schermafbeelding|captura de pantalla|"
                   r"capture d.[ée]cran|скриншот|截图|スクリーンショット)"
                   r"[\s_\-]*(?:from|at|on|vom|de|van|du)?[\s_\-]*\(?\d[\d\s_\-.:,()]*(?:at|um|a las|à|om)?"
                   r"[\d\s_\-.:,()h]*(?:[ap]m)?(?:[_\-][\w.]+)?" + _OPT_EXT + "$",),
    # generic names, optionally numbered: "image001", "image (3)", "untitled-1", "unnamed", "download (2)"
    "generic": (r"^(?:image|img|images|photo|picture|pic|foto|bild|file|untitled|unnamed|download|thumb|"
                r"thumbnail|attachment|scan|capture|placeholder|spacer|blank|pixel|dummy|no[\s_\-]?image|"
                r"pasted[\s_\-]image|image[\s_\-]asset|temp|tmp|test|sticker|media|upload|default|avatar|"
                r"clip[\s_\-]?image|wp[\s_\-]image|cropped|large|small|medium|original|full)"
                r"(?:[\s_\-]*design)?[\s_\-]*\(?\d*\)?" + _OPT_EXT + "$",),
    # stock-photo and upload ids: "shutterstock_123456789", "iStock-1234567", "gettyimages-12345-612x612"
    "stock_id": (r"^(?:shutterstock|istock(?:photo)?|gettyimages|getty|adobestock|depositphotos|dreamstime|"
                 r"123rf|bigstock|fotolia|pexels(?:-photo)?|unsplash|pixabay|stock[\s_\-]?photo)"
                 r"[\s_\-]*\d{3,}[\w\-~.]*" + _OPT_EXT + "$",),
    # numbers and separators only: "12345", "2016-07-16", "001"
    "numeric": (r"^[\d\s_\-.:/#()]+$", r"\d"),
    # UUIDs and hex hashes: 3f2a...-..., d41d8cd98f00b204e9800998ecf8427e
    "uuid": (r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}[\w\-]*" + _OPT_EXT + "$",),
    "hex_hash": (r"^[0-9a-f]{12,}(?:[_\-][\w]+)*" + _OPT_EXT + "$", r"\d"),
    # Flickr-style ids: "52301234567_9f8e7d6c5b_k", "8713928394_a1b2c3d4e5_o.jpg"
    "id_token": (r"^\d{6,}(?:[_\-][\w]+)+" + _OPT_EXT + "$",),
    # long random tokens with several digits: "5dq8KZ3mXbT9aQw1", "a1b2c3d4e5f6g7h8"
    "random_token": (r"^[a-z0-9_\-]{16,}" + _OPT_EXT + "$", r"\d.*\d.*\d.*\d"),
    # banner and thumbnail sizes: "728x90", "banner-300x250", "thumb_150x150", "300 x 250 px"
    "size": (r"^(?:[\w\-]+[_\-\s])?\d{2,4}\s?[x×]\s?\d{2,4}(?:\s?px)?(?:[_\-\s][\w\-]+)?" + _OPT_EXT + "$",),
    # one token joined by underscores (snake_case file stems): "hero_banner_final", "Flag_of_Spain"
    "snake_case": (r"^[^\s]*[^\s_]_+[^\s_][^\s]*$",),
    # one token of three or more hyphenated parts with a digit: "hero-banner-2", "slide-03-new"
    "kebab_number": (r"^[a-z0-9]+(?:-[a-z0-9]+){2,}$", r"\d"),
    # one token of four or more hyphenated words (a slug): "red-leather-handbag-for-women"
    "slug": (r"^[a-z0-9]+(?:-[a-z0-9]+){3,}$",),
    # URLs and paths: "https://x.com/a", "www.example.com/img", "/uploads/2019/05/photo", "C:\Users\..."
    "url_or_path": (r"^(?:https?://|www\.|[a-z]:\\|/|\.\./|~/)\S+$",),
}
#: Camera exposure settings (f-number, shutter 1/N or N sec, ISO, EV); two or more mark camera metadata.
#: Focal lengths ("50mm") and plain fractions ("1/2") are left out: "a 35mm film camera" is a caption.
EXPOSURE_TOKEN = (r"(?:\bf/\s?\d+(?:\.\d+)?\b|\b1/\d{2,5}\s*(?:s|sec)?\b|\b\d+(?:\.\d+)?\s?sec\b|"
                  r"\biso[\s\-:]*\d{2,5}\b|[+\-]\d(?:\.\d+)?\s?ev\b)")


def _screen_regexes(patterns: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A screen for ``patterns``: each pattern's first regex and one exposure token."""
    return tuple(regexes[0] for regexes in patterns.values()) + (EXPOSURE_TOKEN,)


class FilenameRule(ScreenedRule):
    """Captions that are file names, camera names, timestamps, hashes, sizes or exposure settings.

    Score column ``filename_pattern``: the name of the first pattern matched (``exposure`` for camera
    settings), None for other rows. The screen (:func:`screened`, or this rule's own for custom
    patterns) finds the candidate rows; the patterns and the exposure count run on those only.
    """

    name = "filename"
    screen = _screen_regexes(FILENAME_PATTERNS)

    def __init__(self, patterns: dict[str, tuple[str, ...]] | None = None) -> None:
        self.patterns = dict(FILENAME_PATTERNS if patterns is None else patterns)

    def score(self, batch: Batch) -> None:
        batch.score("filename_pattern", self._which)

    def _candidates(self, batch: Batch) -> np.ndarray:
        if self.patterns == FILENAME_PATTERNS:
            return screened(batch)
        return regex_mask(batch.captions, alternation(_screen_regexes(self.patterns)))

    def _which(self, batch: Batch) -> np.ndarray:
        which = np.full(len(batch.captions), None, dtype=object)
        rows = np.flatnonzero(self._candidates(batch))
        if not len(rows):
            return which
        candidates = batch.captions.take(pa.array(rows, pa.int64()))
        for name, regexes in self.patterns.items():
            match = which[rows] == None  # noqa: E711 (the first pattern matched names the row)
            for regex in regexes:
                match[match] = regex_on(candidates, np.flatnonzero(match), regex)
            which[rows[match]] = name
        unmatched = np.flatnonzero(which[rows] == None)  # noqa: E711 (element-wise on an object array)
        if len(unmatched):
            which[rows[unmatched[_exposure_tokens(candidates, unmatched) >= 2]]] = "exposure"
        return which

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.columns["filename_pattern"] != None  # noqa: E711


def _exposure_tokens(captions: pa.Array, rows: np.ndarray) -> np.ndarray:
    """Exposure tokens in each of ``rows`` (indices into ``captions``)."""
    counts = pc.count_substring_regex(captions.take(pa.array(rows, pa.int64())), EXPOSURE_TOKEN, ignore_case=True)
    return np.asarray(counts.to_numpy(zero_copy_only=False))
