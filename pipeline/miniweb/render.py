"""Scenes, images and captions of the mini-web (see :mod:`pipeline.miniweb.generate`).

A :class:`Scene` is one or two coloured shapes on a textured, neutral background. It is sampled from a
numpy ``Generator`` and rendered deterministically (its texture comes from its own ``texture_seed``), so
the same seed always gives the same JPEG bytes. Captions describe what is drawn: English in varied
phrasing, real sentences in six other languages, or camera/screenshot file names.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Rgb = tuple[int, int, int]

COLORS: dict[str, Rgb] = {
    "red": (220, 30, 35), "blue": (35, 70, 225), "green": (30, 165, 55), "yellow": (245, 215, 35),
    "purple": (135, 45, 185), "orange": (250, 135, 20), "pink": (250, 120, 195), "white": (246, 246, 246),
    "brown": (125, 75, 35), "black": (18, 18, 18),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "heart", "cross", "ring", "pentagon")
EVAL_CLASSES: tuple[tuple[str, str], ...] = (
    ("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star"),
    ("purple", "hexagon"), ("orange", "diamond"), ("pink", "heart"), ("white", "cross"),
)
BACKGROUNDS: dict[str, Rgb] = {
    "grey": (128, 128, 128), "dark": (48, 48, 54), "black": (14, 14, 16),
    "white": (238, 238, 236), "light": (196, 198, 200), "beige": (222, 208, 178),
}
MIN_CONTRAST = 110.0  # RGB distance between an object's colour and its background


def class_name(color: str, shape: str) -> str:
    """The ImageFolder name of an eval class, e.g. ``red_circle``."""
    return f"{color}_{shape}"


@dataclass(frozen=True)
class Obj:
    """One shape: centre and radius in pixels, rotation in degrees."""

    shape: str
    color: str
    cx: float
    cy: float
    r: float
    rot: float


@dataclass(frozen=True)
class Scene:
    """What an image shows; ``texture_seed`` makes its rendering deterministic."""

    width: int
    height: int
    background: str
    objects: tuple[Obj, ...]
    texture_seed: int

    def describe(self) -> dict:
        """A JSON-friendly summary for the manifest."""
        return {"background": self.background, "size": [self.width, self.height],
                "objects": [{"color": o.color, "shape": o.shape} for o in self.objects]}


# ---- sampling ------------------------------------------------------------------------------------

def _contrasting_backgrounds(colors: list[str]) -> list[str]:
    def dist(a: Rgb, b: Rgb) -> float:
        return math.dist(a, b)
    return [bg for bg, rgb in BACKGROUNDS.items() if all(dist(rgb, COLORS[c]) >= MIN_CONTRAST for c in colors)]


def _place(rng: np.random.Generator, w: int, h: int, radii: list[float]) -> list[tuple[float, float]]:
    """Centres for objects of the given radii, inside the image and not overlapping (best effort)."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(30):
            c = (rng.uniform(r, w - r), rng.uniform(r, h - r))
            if all(math.dist(c, o) > r + ro + 2 for o, ro in zip(centres, radii)):
                break
        centres.append(c)
    return centres


def sample_scene(rng: np.random.Generator, objects: list[tuple[str, str]],
                 size_range: tuple[int, int] = (96, 320), square: bool = False) -> Scene:
    """A scene with the given (colour, shape) objects at random sizes and positions."""
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    h = w if square else int(np.clip(w * rng.uniform(0.7, 1.4), size_range[0], size_range[1]))
    lo, hi = (0.12, 0.36) if len(objects) == 1 else (0.10, 0.22)
    radii = [rng.uniform(lo, hi) * min(w, h) for _ in objects]
    centres = _place(rng, w, h, radii)
    backgrounds = _contrasting_backgrounds([c for c, _ in objects]) or ["grey"]
    objs = tuple(Obj(shape, color, cx, cy, r, float(rng.uniform(-180, 180)))
                 for (color, shape), (cx, cy), r in zip(objects, centres, radii))
    return Scene(w, h, str(rng.choice(backgrounds)), objs, int(rng.integers(2**31)))


def sample_objects(rng: np.random.Generator, n: int, eval_bias: float = 0.4) -> list[tuple[str, str]]:
    """``n`` (colour, shape) pairs; eval-class combinations are favoured, two objects often match."""
    def one() -> tuple[str, str]:
        if rng.random() < eval_bias:
            return EVAL_CLASSES[int(rng.integers(len(EVAL_CLASSES)))]
        return str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    first = one()
    return [first] + [first if rng.random() < 0.5 else one() for _ in range(n - 1)]


# ---- rendering -----------------------------------------------------------------------------------

def _low_freq(rng: np.random.Generator, w: int, h: int, amp: float) -> np.ndarray:
    """A smooth random field (bicubic upsampling of a few random values), shape (h, w)."""
    gw, gh = (int(v) for v in rng.integers(2, 6, size=2))
    grid = Image.fromarray(rng.normal(0, amp, (gh, gw)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32)


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Base colour + gradient + low-frequency blotches + optional stripes, float32 (h, w, 3)."""
    w, h = scene.width, scene.height
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    angle = rng.uniform(0, 2 * math.pi)
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    lum = (xx * c + yy * s) * np.float32(rng.uniform(20, 70)) + _low_freq(rng, w, h, rng.uniform(14, 30))
    if rng.random() < 0.3:
        phase = np.float32(2 * math.pi / rng.uniform(6 / w, 20 / w))  # stripes 6-20 px apart
        lum += 8 * np.sin(phase * (xx * c - yy * s * np.float32(h / w)))
    tint = (np.asarray(BACKGROUNDS[scene.background], dtype=np.float32) + rng.normal(0, 6, 3)).astype(np.float32)
    return tint[None, None, :] + lum[:, :, None]


def _regular(cx: float, cy: float, r: float, n: int, rot: float, inner: float | None = None) -> list:
    """Vertices of a regular polygon (or a star when ``inner`` is the inner radius ratio)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rad = r * (inner if inner and k % 2 else 1.0)
        a = math.radians(rot) + 2 * math.pi * k / steps - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _rotate(points: list, cx: float, cy: float, rot: float) -> list:
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _heart(r: float) -> list:
    ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    xs = 16 * np.sin(ts) ** 3
    ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    return [(x * r / 17, y * r / 17) for x, y in zip(xs, ys)]


def _cross(r: float) -> list:
    a = 0.34 * r
    return [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]


def draw_object(draw: ImageDraw.ImageDraw, o: Obj, fill: Rgb) -> None:
    """Draw one shape; squares, triangles, diamonds, hearts and crosses only tilt a little."""
    tilt = o.rot / 12  # within +-15 degrees, so a square never turns into a diamond
    if o.shape == "circle":
        draw.ellipse([o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r], fill=fill)
    elif o.shape == "ring":
        draw.ellipse([o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r], outline=fill, width=max(3, int(o.r / 3)))
    elif o.shape == "square":
        s = o.r * 0.85
        draw.polygon(_rotate([(-s, -s), (s, -s), (s, s), (-s, s)], o.cx, o.cy, tilt), fill=fill)
    elif o.shape == "triangle":
        draw.polygon(_regular(o.cx, o.cy + o.r * 0.2, o.r * 1.1, 3, tilt), fill=fill)
    elif o.shape == "star":
        draw.polygon(_regular(o.cx, o.cy, o.r, 5, o.rot, inner=0.45), fill=fill)
    elif o.shape in ("hexagon", "pentagon"):
        draw.polygon(_regular(o.cx, o.cy, o.r, 6 if o.shape == "hexagon" else 5, o.rot), fill=fill)
    elif o.shape == "diamond":
        draw.polygon(_rotate([(0, -o.r), (0.62 * o.r, 0), (0, o.r), (-0.62 * o.r, 0)], o.cx, o.cy, tilt), fill=fill)
    elif o.shape == "heart":
        draw.polygon(_rotate(_heart(o.r), o.cx, o.cy, tilt), fill=fill)
    elif o.shape == "cross":
        draw.polygon(_rotate(_cross(o.r), o.cx, o.cy, tilt), fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render_scene(scene: Scene) -> Image.Image:
    """Render a scene to an RGB image (deterministic)."""
    rng = np.random.default_rng(scene.texture_seed)
    bg = _background(scene, rng)
    bg = np.clip(bg, 0, 255, out=bg).astype(np.uint8)
    img = Image.fromarray(bg, mode="RGB")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        jitter = rng.integers(-14, 15, 3)
        draw_object(draw, o, tuple(int(v) for v in np.clip(np.array(COLORS[o.color]) + jitter, 0, 255)))
    noise = rng.standard_normal((scene.height, scene.width, 1), dtype=np.float32) * np.float32(rng.uniform(3, 10))
    noisy = np.asarray(img, dtype=np.float32) + noise
    return Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 88) -> bytes:
    """Encode an image as baseline JPEG."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


# ---- English captions ----------------------------------------------------------------------------

def _an(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("ss") else "s")


def _size_word(scene: Scene, o: Obj, rng: np.random.Generator) -> str:
    frac = o.r / min(scene.width, scene.height)
    if frac < 0.17:
        return str(rng.choice(["small", "tiny", "little"]))
    if frac > 0.28:
        return str(rng.choice(["large", "big"]))
    return ""


_POSITIONS = (("in the top left corner", "at the top", "in the top right corner"),
              ("on the left side", "in the middle", "on the right side"),
              ("in the bottom left corner", "at the bottom", "in the bottom right corner"))


def _position(scene: Scene, o: Obj) -> str:
    def third(v: float) -> int:
        return 0 if v < 0.38 else 2 if v > 0.62 else 1
    return _POSITIONS[third(o.cy / scene.height)][third(o.cx / scene.width)]


def _np(o: Obj, size: str = "") -> str:
    """Noun phrase with article: 'a small red circle'."""
    return _an(" ".join(w for w in (size, o.color, o.shape) if w))


_SINGLE = (
    "{np} on a {bg} background", "{np_size} {pos} of the image", "photo of {np}", "{np}",
    "close-up of {np_size} against a {bg} backdrop", "simple drawing of {np} on {bg} paper",
    "an illustration showing {np}", "{np_size} {pos} of a {bg} picture", "{color} {shape} icon on a {bg} background",
    "a picture of {np} with a textured {bg} background", "there is {np_size} {pos}", "{np} painted on a {bg} wall",
)
_SHORT = ("photo of {np}", "{np}")  # often too short for language ID: real alt texts are like that too
_SINGLE_DETAILED = tuple(t for t in _SINGLE if t not in _SHORT)
_PAIR_SAME = ("two {color} {shapes} on a {bg} background", "photo of two {color} {shapes}",
              "a pair of {color} {shapes}", "two {color} {shapes} on {bg} paper")
_PAIR_MIXED = ("{np1} and {np2} on a {bg} background", "{np1} next to {np2}", "photo of {np1} and {np2}",
               "{np1} {pos1} and {np2} {pos2}")


def english_caption(scene: Scene, rng: np.random.Generator, detailed: bool = False) -> str:
    """A natural English description of the scene, in one of many phrasings.

    ``detailed``: skip the shortest phrasings ("a red circle"), which language ID may not call English.
    """
    objs = scene.objects
    bg = scene.background
    if len(objs) == 1:
        o = objs[0]
        text = str(rng.choice(_SINGLE_DETAILED if detailed else _SINGLE)).format(
            np=_np(o), np_size=_np(o, _size_word(scene, o, rng)), pos=_position(scene, o), bg=bg,
            color=o.color, shape=o.shape)
    elif (objs[0].color, objs[0].shape) == (objs[1].color, objs[1].shape):
        text = str(rng.choice(_PAIR_SAME)).format(color=objs[0].color, shapes=_plural(objs[0].shape), bg=bg)
    else:
        a, b = objs[0], objs[1]
        pos1, pos2 = _position(scene, a), _position(scene, b)
        templates = _PAIR_MIXED if pos1 != pos2 else _PAIR_MIXED[:3]
        text = str(rng.choice(templates)).format(np1=_np(a), np2=_np(b), pos1=pos1, pos2=pos2, bg=bg)
    return _finish(text, rng)


def _finish(text: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.25 else text


# ---- other languages -----------------------------------------------------------------------------
# Per language: shape -> (noun, gender), colour -> (masculine/common form, feminine/other form),
# background -> adjective, and templates. Only single-object scenes get non-English captions.

_FOREIGN: dict[str, dict] = {
    "fr": {
        "shapes": {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
                   "star": ("étoile", "f"), "hexagon": ("hexagone", "m"), "diamond": ("losange", "m"),
                   "heart": ("cœur", "m"), "cross": ("croix", "f"), "ring": ("anneau", "m"),
                   "pentagon": ("pentagone", "m")},
        "colors": {"red": ("rouge", "rouge"), "blue": ("bleu", "bleue"), "green": ("vert", "verte"),
                   "yellow": ("jaune", "jaune"), "purple": ("violet", "violette"), "orange": ("orange", "orange"),
                   "pink": ("rose", "rose"), "white": ("blanc", "blanche"), "brown": ("marron", "marron"),
                   "black": ("noir", "noire")},
        "bg": {"grey": "gris", "dark": "sombre", "black": "noir", "white": "blanc", "light": "clair",
               "beige": "beige"},
        "art": {"m": "un", "f": "une"},
        "templates": ("{art} {n} {a} sur un fond {bg}", "photo d'{art} {n} {a}",
                      "dessin simple : {art} {n} {a} sur fond {bg}", "une image avec {art} {n} {a} au milieu"),
    },
    "es": {
        "shapes": {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
                   "star": ("estrella", "f"), "hexagon": ("hexágono", "m"), "diamond": ("rombo", "m"),
                   "heart": ("corazón", "m"), "cross": ("cruz", "f"), "ring": ("anillo", "m"),
                   "pentagon": ("pentágono", "m")},
        "colors": {"red": ("rojo", "roja"), "blue": ("azul", "azul"), "green": ("verde", "verde"),
                   "yellow": ("amarillo", "amarilla"), "purple": ("morado", "morada"),
                   "orange": ("naranja", "naranja"), "pink": ("rosa", "rosa"), "white": ("blanco", "blanca"),
                   "brown": ("marrón", "marrón"), "black": ("negro", "negra")},
        "bg": {"grey": "gris", "dark": "oscuro", "black": "negro", "white": "blanco", "light": "claro",
               "beige": "beige"},
        "art": {"m": "un", "f": "una"},
        "templates": ("{art} {n} {a} sobre un fondo {bg}", "foto de {art} {n} {a}",
                      "dibujo sencillo de {art} {n} {a} sobre fondo {bg}", "una imagen con {art} {n} {a} en el centro"),
    },
    "it": {
        "shapes": {"circle": ("cerchio", "m"), "square": ("quadrato", "m"), "triangle": ("triangolo", "m"),
                   "star": ("stella", "f"), "hexagon": ("esagono", "m"), "diamond": ("rombo", "m"),
                   "heart": ("cuore", "m"), "cross": ("croce", "f"), "ring": ("anello", "m"),
                   "pentagon": ("pentagono", "m")},
        "colors": {"red": ("rosso", "rossa"), "blue": ("blu", "blu"), "green": ("verde", "verde"),
                   "yellow": ("giallo", "gialla"), "purple": ("viola", "viola"), "orange": ("arancione", "arancione"),
                   "pink": ("rosa", "rosa"), "white": ("bianco", "bianca"), "brown": ("marrone", "marrone"),
                   "black": ("nero", "nera")},
        "bg": {"grey": "grigio", "dark": "scuro", "black": "nero", "white": "bianco", "light": "chiaro",
               "beige": "beige"},
        "art": {"m": "un", "f": "una"},
        "templates": ("{art} {n} {a} su uno sfondo {bg}", "foto di {art} {n} {a}",
                      "un semplice disegno di {art} {n} {a}", "questa immagine mostra {art} {n} {a} su sfondo {bg}"),
    },
    "pt": {
        "shapes": {"circle": ("círculo", "m"), "square": ("quadrado", "m"), "triangle": ("triângulo", "m"),
                   "star": ("estrela", "f"), "hexagon": ("hexágono", "m"), "diamond": ("losango", "m"),
                   "heart": ("coração", "m"), "cross": ("cruz", "f"), "ring": ("anel", "m"),
                   "pentagon": ("pentágono", "m")},
        "colors": {"red": ("vermelho", "vermelha"), "blue": ("azul", "azul"), "green": ("verde", "verde"),
                   "yellow": ("amarelo", "amarela"), "purple": ("roxo", "roxa"), "orange": ("laranja", "laranja"),
                   "pink": ("rosa", "rosa"), "white": ("branco", "branca"), "brown": ("marrom", "marrom"),
                   "black": ("preto", "preta")},
        "bg": {"grey": "cinza", "dark": "escuro", "black": "preto", "white": "branco", "light": "claro",
               "beige": "bege"},
        "art": {"m": "um", "f": "uma"},
        "templates": ("{art} {n} {a} sobre um fundo {bg}", "foto de {art} {n} {a}",
                      "desenho simples de {art} {n} {a} sobre fundo {bg}", "uma imagem com {art} {n} {a} no centro"),
    },
}


def _foreign_romance(lang: str, o: Obj, bg: str, rng: np.random.Generator) -> str:
    t = _FOREIGN[lang]
    noun, gender = t["shapes"][o.shape]
    adj = t["colors"][o.color][0 if gender == "m" else 1]
    art = t["art"][gender]
    return str(rng.choice(t["templates"])).format(art=art, n=noun, a=adj, bg=t["bg"][bg])


_DE_SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
              "star": ("Stern", "m"), "hexagon": ("Sechseck", "n"), "diamond": ("Raute", "f"),
              "heart": ("Herz", "n"), "cross": ("Kreuz", "n"), "ring": ("Ring", "m"), "pentagon": ("Fünfeck", "n")}
_DE_COLORS = {"red": "rot", "blue": "blau", "green": "grün", "yellow": "gelb", "purple": "violett",
              "orange": "orangefarben", "pink": "rosafarben", "white": "weiß", "brown": "braun", "black": "schwarz"}
_DE_BG = {"grey": "grauem", "dark": "dunklem", "black": "schwarzem", "white": "weißem", "light": "hellem",
          "beige": "beigefarbenem"}
_DE_NOM = {"m": ("ein", "er"), "n": ("ein", "es"), "f": ("eine", "e")}
_DE_ACC = {"m": ("einen", "en"), "n": ("ein", "es"), "f": ("eine", "e")}
_DE_DAT = {"m": ("einem", "en"), "n": ("einem", "en"), "f": ("einer", "en")}


def _foreign_de(o: Obj, bg: str, rng: np.random.Generator) -> str:
    noun, g = _DE_SHAPES[o.shape]
    stem = _DE_COLORS[o.color]

    def phrase(table: dict) -> str:
        art, ending = table[g]
        return f"{art} {stem}{ending} {noun}"
    return str(rng.choice([
        f"{phrase(_DE_NOM)} auf {_DE_BG[bg]} Hintergrund", f"Foto von {phrase(_DE_DAT)}",
        f"eine einfache Zeichnung mit {phrase(_DE_DAT)}", f"das Bild zeigt {phrase(_DE_ACC)} auf {_DE_BG[bg]} Grund",
    ]))


_NL_SHAPES = {"circle": ("cirkel", "de"), "square": ("vierkant", "het"), "triangle": ("driehoek", "de"),
              "star": ("ster", "de"), "hexagon": ("zeshoek", "de"), "diamond": ("ruit", "de"),
              "heart": ("hart", "het"), "cross": ("kruis", "het"), "ring": ("ring", "de"),
              "pentagon": ("vijfhoek", "de")}
_NL_COLORS = {"red": ("rood", "rode"), "blue": ("blauw", "blauwe"), "green": ("groen", "groene"),
              "yellow": ("geel", "gele"), "purple": ("paars", "paarse"), "orange": ("oranje", "oranje"),
              "pink": ("roze", "roze"), "white": ("wit", "witte"), "brown": ("bruin", "bruine"),
              "black": ("zwart", "zwarte")}
_NL_BG = {"grey": "grijze", "dark": "donkere", "black": "zwarte", "white": "witte", "light": "lichte",
          "beige": "beige"}


def _foreign_nl(o: Obj, bg: str, rng: np.random.Generator) -> str:
    noun, article = _NL_SHAPES[o.shape]
    adj = _NL_COLORS[o.color][0 if article == "het" else 1]
    return str(rng.choice([
        f"een {adj} {noun} op een {_NL_BG[bg]} achtergrond", f"foto van een {adj} {noun}",
        f"een eenvoudige tekening van een {adj} {noun}", f"op deze afbeelding zie je een {adj} {noun}",
    ]))


FOREIGN_LANGS = ("fr", "de", "es", "it", "pt", "nl")


def foreign_caption(scene: Scene, lang: str, rng: np.random.Generator) -> str:
    """A natural sentence in ``lang`` describing the (first) object of the scene."""
    o, bg = scene.objects[0], scene.background
    if lang == "de":
        text = _foreign_de(o, bg, rng)
    elif lang == "nl":
        text = _foreign_nl(o, bg, rng)
    else:
        text = _foreign_romance(lang, o, bg, rng)
    return text[0].upper() + text[1:]


# ---- file-name captions --------------------------------------------------------------------------

def filename_caption(rng: np.random.Generator) -> str:
    """An alt text that is really a camera, phone or screenshot file name, or a hash."""
    y, mo, d = int(rng.integers(2009, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    n4, n5 = int(rng.integers(1000, 10000)), int(rng.integers(0, 100000))
    options = [
        f"IMG_{n4}.JPG", f"DSC{n5:05d}.jpg", f"{y}{mo:02d}{d:02d}_{hh:02d}{mm:02d}{ss:02d}.jpg",
        f"image{int(rng.integers(1, 1000)):03d}.png", f"Screenshot {y}-{mo:02d}-{d:02d} at {hh:02d}.{mm:02d}.{ss:02d}.png",
        f"Screenshot_{y}{mo:02d}{d:02d}-{hh:02d}{mm:02d}{ss:02d}.png", rng.bytes(16).hex(),
        rng.bytes(20).hex() + ".jpg", f"P{int(rng.integers(1000000, 10000000))}.JPG",
        f"IMG-{y}{mo:02d}{d:02d}-WA{n4:04d}.jpg", f"photo_{y}-{mo:02d}-{d:02d}_{hh:02d}-{mm:02d}-{ss:02d}.jpg",
        f"DSCN{n4}.JPG",
    ]
    return str(options[int(rng.integers(len(options)))])


# ---- broken bodies and near-duplicate edits ------------------------------------------------------

def corrupt_body(jpeg: bytes, rng: np.random.Generator, variant: int) -> bytes:
    """A body that is not a decodable image: a truncated JPEG (even variant) or random bytes (odd)."""
    if variant % 2 == 0:
        return jpeg[: int(len(jpeg) * rng.uniform(0.25, 0.6))]
    return rng.bytes(int(rng.integers(2000, 9000)))


def html_body(title: str) -> bytes:
    """An HTML page, as served at an image URL by image viewers and soft-404s."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
            "<body><h1>Photo viewer</h1><p>This image is available to members only. "
            "<a href=\"/\">Back to the gallery</a></p></body></html>\n").encode()


NEAR_DUP_EDITS = ("jpeg_quality", "resize", "crop", "hflip")


def near_duplicate(img: Image.Image, edit: str, rng: np.random.Generator, strength: float = 1.0) -> tuple[bytes, dict]:
    """Apply one edit to an eval image; return the JPEG and the edit's parameters."""
    w, h = img.size
    quality = int(rng.integers(75, 93))
    if edit == "jpeg_quality":
        quality = int(round(12 + (1 - strength) * 30))
        params: dict = {}
    elif edit == "resize":
        scale = max(96 / min(w, h), 1 - 0.45 * strength)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img, params = img.resize(size, Image.LANCZOS), {"scale": round(scale, 3), "size": list(size)}
    elif edit == "crop":
        frac = 0.05 * strength  # removed per axis, split between the two sides: ~10% of the area
        left, top = rng.uniform(0.3, 0.7) * frac * w, rng.uniform(0.3, 0.7) * frac * h
        box = (round(left), round(top), round(left + (1 - frac) * w), round(top + (1 - frac) * h))
        area = 1 - (box[2] - box[0]) * (box[3] - box[1]) / (w * h)
        img, params = img.crop(box), {"box": list(box), "area_removed": round(area, 3)}
    elif edit == "hflip":
        img, params = img.transpose(Image.FLIP_LEFT_RIGHT), {}
    else:
        raise ValueError(f"unknown near-duplicate edit {edit!r}")
    return jpeg_bytes(img, quality), {"edit": edit, **params, "jpeg_quality": quality}
