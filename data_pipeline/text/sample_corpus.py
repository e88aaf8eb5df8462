"""A small built-in web corpus: real English prose wrapped in HTML pages, written as a WARC.

The prose is the documentation of Python's standard library (docstring paragraphs that read as
sentences), so it is on every machine, deterministic for one Python version, and passes the
quality filters. Used by ``make demo``, the benchmarks and the tests; nothing is downloaded.
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
    if len(pool) < n * per_article:
        raise ValueError(f"only {len(pool)} distinct prose paragraphs for {n} articles of {per_article}")
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


def write_demo_warc(path: str | Path, n_articles: int = 40, per_article: int = 6) -> Path:
    """``n_articles`` HTML pages with navigation and footer boilerplate, as one gzip WARC."""
    w = WarcBuilder(path)
    for i, paras in enumerate(articles(n_articles, per_article)):
        url = f"https://docs.example.org/article/{i}"
        w.request(url)
        w.response(url, article_html(f"Article {i}", paras).encode())
    return w.close()
