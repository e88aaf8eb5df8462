"""Real WARC/WET files for the text-pipeline tests, written with warcio from text on this machine.

Articles are prose paragraphs from the docstrings of standard-library modules (deterministic for
one Python version), wrapped in HTML with navigation and footer boilerplate. Edge cases are
added as named records so tests can find them by URL.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.text.sample_corpus import (  # noqa: F401 - re-exported for the tests
    BOILERPLATE_FOOT,
    BOILERPLATE_NAV,
    MODULES,
    WarcBuilder,
    article_html,
    articles,
    paragraphs,
    pydoc_html,
)

GERMAN = (
    "Die Stadt liegt am Ufer eines großen Flusses und hat eine lange Geschichte. Im Mittelalter war sie ein "
    "wichtiger Handelsplatz, an dem sich Kaufleute aus vielen Ländern trafen. Heute leben dort etwa hunderttausend "
    "Menschen, die in der Industrie, im Handel und in der Verwaltung arbeiten. Die Altstadt mit ihren engen Gassen "
    "und alten Häusern wird jedes Jahr von vielen Besuchern besichtigt. Besonders bekannt ist der Dom, dessen Bau "
    "mehr als zweihundert Jahre gedauert hat. Im Sommer finden auf dem Marktplatz zahlreiche Konzerte und Feste "
    "statt, zu denen auch Gäste aus der Umgebung kommen. Die Universität wurde im neunzehnten Jahrhundert gegründet "
    "und gehört heute zu den größten Hochschulen des Landes."
)


PII_SENTENCE = ("Questions about this module can be sent to jane.doe@example.com or to the mirror at 8.8.4.4, "
                "which answers every day.")
PII_SCRUBBED = ("Questions about this module can be sent to email@example.com or to the mirror at 192.0.2.1, "
                "which answers every day.")
ACCENTED = "The café on the corner served crème brûlée and a naïve smörgåsbord to every visitor who asked for it."
BIG_LINE_BYTES = 5_000_000


def near_copy(paras: list[str]) -> list[str]:
    """The same article with two words of its last paragraph changed."""
    words = paras[-1].split()
    words[1], words[3] = "certainly", "indeed"
    return paras[:-1] + [" ".join(words)]


def build_corpus(directory: str | Path, n_a: int = 10, n_b: int = 10, n_wet: int = 6) -> dict:
    """Three input files (gzip WARC, plain WARC, gzip WET) with the edge cases; returns what is where:
    {"files": [...], "html_documents": {file: n}, "expect_kept": {url: paragraphs}, "urls": {case: url}}."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arts = articles(n_a + n_b + n_wet + 3)
    a_arts, b_arts, wet_arts = arts[:n_a], arts[n_a:n_a + n_b], arts[n_a + n_b:n_a + n_b + n_wet]
    pii_art, cp_art, latin_art = arts[-3:]
    urls, expect, html_docs = {}, {}, {}

    a = WarcBuilder(d / "a.warc.gz")
    for i, paras in enumerate(a_arts):
        url = f"https://a.example.org/article/{i}"
        a.request(url)
        a.response(url, article_html(f"A{i}", paras).encode())
        a.metadata(url)
        expect[url] = paras
    urls["pii"] = "https://a.example.org/pii"
    a.response(urls["pii"], article_html("PII", pii_art + [PII_SENTENCE]).encode())
    expect[urls["pii"]] = pii_art + [PII_SCRUBBED]
    a.response("https://a.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(200), content_type="image/png")
    urls["redirect"] = "https://a.example.org/old"
    a.response(urls["redirect"], b"<html><body>Moved</body></html>", status="301 Moved Permanently",
               extra_headers=[("Location", "https://a.example.org/")])
    urls["pydoc"] = "https://a.example.org/pydoc/json"
    a.response(urls["pydoc"], pydoc_html("json").encode())
    a.close()
    html_docs["a.warc.gz"] = n_a + 3

    b = WarcBuilder(d / "b.warc", gzip=False)
    for i, paras in enumerate(b_arts):
        url = f"https://b.example.org/page/{i}"
        b.response(url, article_html(f"B{i}", paras).encode())
        expect[url] = paras
    urls["exact"] = "https://b.example.org/copy-of-a1"
    b.response(urls["exact"], article_html("copy", a_arts[1], boilerplate=False).encode())
    urls["near"] = "https://b.example.org/near-a2"
    b.response(urls["near"], article_html("near", near_copy(a_arts[2])).encode())
    urls["german"] = "https://b.example.org/de"
    b.response(urls["german"], article_html("Stadt", [GERMAN] * 1).encode())
    urls["cp1252"] = "https://b.example.org/cp1252"
    cp = cp_art[:1] + [ACCENTED] + cp_art[1:]
    b.response(urls["cp1252"], article_html("cafe", cp, charset=None).encode("cp1252"),
               content_type="text/html; charset=windows-1252")
    expect[urls["cp1252"]] = cp
    urls["latin1_meta"] = "https://b.example.org/latin1"
    lat = [ACCENTED] + latin_art[1:]
    b.response(urls["latin1_meta"], article_html("latin", lat, charset="iso-8859-1").encode("latin-1"),
               content_type="text/html")
    expect[urls["latin1_meta"]] = lat
    urls["binary"] = "https://b.example.org/binary"
    b.response(urls["binary"], bytes(range(256)) * 64)
    urls["empty"] = "https://b.example.org/empty"
    b.response(urls["empty"], b"")
    urls["big_line"] = "https://b.example.org/big"
    sentence = "the same words again and again make a very long line. "
    b.response(urls["big_line"], (b"<html><body><p>" + sentence.encode() * (BIG_LINE_BYTES // len(sentence))
                                  + b"</p></body></html>"))
    b.close()
    html_docs["b.warc"] = n_b + 8

    w = WarcBuilder(d / "c.warc.wet.gz")
    for i, paras in enumerate(wet_arts):
        url = f"https://c.example.org/text/{i}"
        w.conversion(url, "\n".join(paras))
        expect[url] = paras
    w.close()
    html_docs["c.warc.wet.gz"] = n_wet
    files = [str(d / n) for n in ("a.warc.gz", "b.warc", "c.warc.wet.gz")]
    return {"files": files, "html_documents": html_docs, "expect_kept": expect, "urls": urls}
