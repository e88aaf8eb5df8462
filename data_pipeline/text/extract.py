"""Main text from HTML in any charset (resiliparse by default, trafilatura selectable).

Charset: the HTTP header's charset when given, else resiliparse's detector (which reads <meta>
and falls back to uchardet), decoded with replacement so a wrong guess costs characters, not the
document. Binary payloads mislabelled as HTML are dropped before parsing.
"""

from __future__ import annotations

EXTRACTORS = ("resiliparse", "trafilatura")
_CONTROL_BYTES = bytes([*range(9), *range(14, 32)])


def decode_html(payload: bytes, charset: str | None) -> str:
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    encoding = charset or detect_encoding(payload)
    try:
        return bytes_to_str(payload, encoding)
    except (LookupError, ValueError):
        return bytes_to_str(payload, detect_encoding(payload))


def is_binary(payload: bytes) -> bool:
    """True for payloads with NUL bytes or mostly control bytes in their first 4 KiB."""
    head = payload[:4096]
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls / len(head) > 0.1


def tidy(text: str) -> str:
    """One stripped, non-empty line per block (as trafilatura writes it), so blank lines do not
    count as repeated lines in the Gopher rules."""
    return "\n".join(line for line in (raw.strip() for raw in text.splitlines()) if line)


def extract_text(html: str, extractor: str = "resiliparse") -> str:
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        text = extract_plain_text(HTMLTree.parse(html), main_content=True, alt_texts=False, links=False,
                                  list_bullets=False)
    elif extractor == "trafilatura":
        import trafilatura

        text = trafilatura.extract(html, include_comments=False, include_tables=True, deduplicate=False) or ""
    else:
        raise ValueError(f"extractor {extractor!r}: expected one of {EXTRACTORS}")
    return tidy(text)


def document_text(kind: str, payload: bytes, charset: str | None, extractor: str) -> tuple[str, str | None]:
    """(text, drop reason or None) for a read document."""
    if not payload.strip():
        return "", "empty_payload"
    if kind == "text":
        return tidy(payload.decode("utf-8", errors="replace")), None
    if is_binary(payload):
        return "", "binary"
    text = extract_text(decode_html(payload, charset), extractor)
    return text, (None if text else "no_text")
