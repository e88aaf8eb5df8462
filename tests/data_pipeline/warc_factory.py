"""Real WARC/WET files for the text-pipeline tests, written with warcio from text on this machine.

Articles are prose paragraphs from the docstrings of standard-library modules (deterministic for
one Python version), wrapped in HTML with navigation and footer boilerplate. Edge cases are
added as named records so tests can find them by URL.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pydoc
import re
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

MODULES = ("argparse", "collections", "csv", "email.message", "functools", "http.client", "json", "logging",
           "pathlib", "pickle", "shutil", "subprocess", "tarfile", "threading", "typing", "unittest", "urllib.request",
           "zipfile", "asyncio.tasks", "decimal", "difflib", "fractions", "gettext", "heapq", "imaplib", "ipaddress",
           "locale", "mailbox", "optparse", "pdb", "pprint", "queue", "random", "sched", "smtplib", "socket",
           "ssl", "statistics", "string", "textwrap", "timeit", "turtle", "uuid", "warnings", "weakref", "xml.dom.minidom")

GERMAN = (
    "Die Stadt liegt am Ufer eines großen Flusses und hat eine lange Geschichte. Im Mittelalter war sie ein "
    "wichtiger Handelsplatz, an dem sich Kaufleute aus vielen Ländern trafen. Heute leben dort etwa hunderttausend "
    "Menschen, die in der Industrie, im Handel und in der Verwaltung arbeiten. Die Altstadt mit ihren engen Gassen "
    "und alten Häusern wird jedes Jahr von vielen Besuchern besichtigt. Besonders bekannt ist der Dom, dessen Bau "
    "mehr als zweihundert Jahre gedauert hat. Im Sommer finden auf dem Marktplatz zahlreiche Konzerte und Feste "
    "statt, zu denen auch Gäste aus der Umgebung kommen. Die Universität wurde im neunzehnten Jahrhundert gegründet "
    "und gehört heute zu den größten Hochschulen des Landes."
)
BOILERPLATE_NAV = ["Home", "About us", "Products", "Contact", "Login", "Search"]
BOILERPLATE_FOOT = ["This site uses cookies to improve your experience.", "Privacy policy", "Terms of use",
                    "Copyright 2024 Example Corp. All rights reserved."]


def _prose(doc: str) -> list[str]:
    """Paragraphs of a docstring that read as sentences (no code, no tables)."""
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        text = " ".join(para.split())
        if (len(text.split()) >= 12 and text.endswith(".") and not re.search(r"[{}<>|=\[\]#]|\.\.\.|::", text)
                and "lorem" not in text.lower()):
            out.append(text)
    return out


def paragraphs() -> list[str]:
    """All prose paragraphs of MODULES' docstrings, in a fixed order, without repeats."""
    seen, out = set(), []
    for name in MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""]
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == mod.__name__:
                docs.append(obj.__doc__ or "")
                if inspect.isclass(obj):
                    docs += [m.__doc__ or "" for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
        for doc in docs:
            for p in _prose(doc if isinstance(doc, str) else ""):
                if p not in seen:
                    seen.add(p)
                    out.append(p)
    return out


def _grams(text: str, n: int = 5) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def articles(n: int, per_article: int = 8) -> list[list[str]]:
    """``n`` articles of ``per_article`` paragraphs each, no word 5-gram repeated anywhere in the
    corpus, so articles are neither repetitive (Gopher) nor near-duplicates of each other."""
    used: set[tuple[str, ...]] = set()
    pool: list[str] = []
    for p in paragraphs():
        grams = _grams(p)
        if len(set(grams)) == len(grams) and not used.intersection(grams):
            used.update(grams)
            pool.append(p)
    assert len(pool) >= n * per_article, f"only {len(pool)} distinct prose paragraphs for {n} articles"
    return [pool[i * per_article:(i + 1) * per_article] for i in range(n)]


def article_html(title: str, paras: list[str], charset: str | None = "utf-8", boilerplate: bool = True) -> str:
    meta = f'<meta charset="{charset}">' if charset else ""
    nav = "".join(f'<li><a href="/{w.lower()}">{w}</a></li>' for w in BOILERPLATE_NAV) if boilerplate else ""
    foot = "".join(f"<p>{w}</p>" for w in BOILERPLATE_FOOT) if boilerplate else ""
    body = "".join(f"<p>{p}</p>\n" for p in paras)
    return (f"<!DOCTYPE html><html><head>{meta}<title>{title}</title></head><body>"
            f"<nav><ul>{nav}</ul></nav><main><article><h1>{title}</h1>\n{body}</article></main>"
            f"<footer>{foot}</footer></body></html>")


class WarcBuilder:
    """Accumulates records and writes them with warcio; ``html`` / ``text`` add documents."""

    def __init__(self, path: str | Path, gzip: bool = True):
        self.path = Path(path)
        self.buf = io.BytesIO()
        self.writer = WARCWriter(self.buf, gzip=gzip)
        self.writer.write_record(self.writer.create_warcinfo_record(self.path.name, {"software": "warc_factory"}))

    def response(self, url: str, body: bytes, content_type: str | None = "text/html; charset=utf-8",
                 status: str = "200 OK", extra_headers: list | None = None) -> None:
        headers = [("Content-Type", content_type)] if content_type else []
        headers += extra_headers or []
        headers.append(("Content-Length", str(len(body))))
        http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
        self.writer.write_record(self.writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                                http_headers=http))

    def request(self, url: str) -> None:
        http = StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", "example.org")], is_http_request=True)
        self.writer.write_record(self.writer.create_warc_record(url, "request", payload=io.BytesIO(b""),
                                                                http_headers=http))

    def metadata(self, url: str) -> None:
        self.writer.write_record(self.writer.create_warc_record(url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 5\n"),
                                                                warc_content_type="application/warc-fields"))

    def conversion(self, url: str, text: str) -> None:
        self.writer.write_record(self.writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode()),
                                                                warc_content_type="text/plain"))

    def close(self) -> Path:
        self.path.write_bytes(self.buf.getvalue())
        return self.path


def pydoc_html(module: str) -> str:
    mod = importlib.import_module(module)
    return pydoc.HTMLDoc().page(pydoc.describe(mod), pydoc.HTMLDoc().document(mod))


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
