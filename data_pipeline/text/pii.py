"""Replacing e-mail addresses and public IP addresses (as datatrove's PIIFormatter and FineWeb do).

IPv4 and IPv6 candidates are checked with :mod:`ipaddress` and only global addresses are replaced,
so private addresses, times like 12:30:45 and version strings that are not valid addresses stay.
"""

from __future__ import annotations

import ipaddress
import re

EMAIL = re.compile(r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                   r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")


def _ip_replacer(replacement: str, counter: list[int]):
    def sub(m: re.Match) -> str:
        try:
            ip = ipaddress.ip_address(m.group(0))
        except ValueError:
            return m.group(0)
        if not ip.is_global:
            return m.group(0)
        counter[0] += 1
        return replacement

    return sub


def scrub(text: str, email_replacement: str, ip_replacement: str) -> tuple[str, int]:
    """(text with e-mails and global IPs replaced, number of replacements)."""
    count = [0]

    def email_sub(m: re.Match) -> str:
        count[0] += 1
        return email_replacement

    if "@" in text:
        text = EMAIL.sub(email_sub, text)
    text = IPV4.sub(_ip_replacer(ip_replacement, count), text)
    if "::" in text or text.count(":") > 4:
        text = IPV6.sub(_ip_replacer(ip_replacement, count), text)
    return text, count[0]
