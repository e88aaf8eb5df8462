"""Quality filters with their published defaults: Gopher quality and repetition (Rae et al. 2021,
table A1), C4's line and page rules (Raffel et al. 2020) and FineWeb's rules (Penedo et al. 2024),
following datatrove's reading of them. Each check returns the reason it drops a document, so
every drop is counted by rule.

Words are ``\\w+`` runs and single punctuation characters (close to NLTK's word_tokenize, without
needing its data files); punctuation tokens are not counted as words where the papers say "words".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

WORD_RE = re.compile(r"\w+|[^\w\s]")
PARAGRAPH_RE = re.compile(r"\n{2,}")
SENTENCE_END_RE = re.compile(r"[.!?]+(?:[\"')\]]*)(?=\s|$)")
CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
END_PUNCT = (".", "?", "!", '"', "'")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def words_of(text: str) -> list[str]:
    return WORD_RE.findall(text)


REAL_WORD_RE = re.compile(r"\w+")  # the word tokens of WORD_RE, without the punctuation ones
ALPHA_WORD_RE = re.compile(r"\w*[^\W\d_]\w*")  # one match per word holding a letter
STOP_WORD_RE = re.compile(r"\b(?:" + "|".join(sorted(STOP_WORDS)) + r")\b", re.IGNORECASE)


@dataclass(frozen=True)
class GopherQuality:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3.0
    max_avg_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2

    def check(self, text: str, words: list[str], scores: dict) -> str | None:
        real = REAL_WORD_RE.findall(text)
        n = len(real)
        scores["words"] = n
        if n < self.min_doc_words:
            return "short_doc"
        if n > self.max_doc_words:
            return "long_doc"
        avg = sum(map(len, real)) / n
        if avg < self.min_avg_word_length:
            return "below_avg_word_length"
        if avg > self.max_avg_word_length:
            return "above_avg_word_length"
        if text.count("#") / n > self.max_symbol_word_ratio:
            return "too_many_hashes"
        if (text.count("...") + text.count("…")) / n > self.max_symbol_word_ratio:
            return "too_many_ellipsis"
        lines = text.splitlines() or [""]
        if sum(s.lstrip().startswith("•") for s in lines) / len(lines) > self.max_bullet_lines_ratio:
            return "too_many_bullets"
        if sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return "too_many_end_ellipsis"
        alpha = len(ALPHA_WORD_RE.findall(text)) / n
        scores["alpha_ratio"] = round(alpha, 4)
        if alpha < self.min_alpha_words_ratio:
            return "below_alpha_threshold"
        stops = STOP_WORD_RE.finditer(text)
        if sum(1 for _, _ in zip(range(self.min_stop_words), stops)) < self.min_stop_words:
            return "not_enough_stop_words"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, characters in them), first occurrences not counted."""
    seen: set[str] = set()
    dup = chars = 0
    for x in items:
        if x in seen:
            dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return dup, chars


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """Word n-grams as tuples (hashing a tuple is much cheaper than joining a string); the
    n-gram's character length is that of ``" ".join(gram)``, as in the papers."""
    return list(zip(*(words[i:] for i in range(n))))


def _gram_len(gram: tuple[str, ...]) -> int:
    return sum(map(len, gram)) + len(gram) - 1


def _all_duplicate_chars(ngrams: list[tuple[str, ...]], n: int) -> int:
    """Characters in repeated n-grams, skipping past each repeat so overlapping ones count once."""
    seen: set[tuple[str, ...]] = set()
    chars = idx = 0
    while idx < len(ngrams):
        g = ngrams[idx]
        if g in seen:
            chars += _gram_len(g)
            idx += n
        else:
            seen.add(g)
            idx += 1
    return chars


@dataclass(frozen=True)
class GopherRepetition:
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def check(self, text: str, words: list[str], scores: dict) -> str | None:
        size = max(len(text), 1)
        paragraphs = PARAGRAPH_RE.split(text.strip())
        dup, chars = _duplicates(paragraphs)
        if dup / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if chars / size > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = text.splitlines() or [""]
        dup, chars = _duplicates(lines)
        scores["dup_line_frac"] = round(dup / len(lines), 4)
        if dup / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if chars / size > self.dup_line_char_frac:
            return "dup_line_char_frac"
        for n, frac in self.top_n_grams:
            grams = _ngrams(words, n)
            if grams:
                gram, count = Counter(grams).most_common(1)[0]
                if _gram_len(gram) * count / size > frac:
                    return f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            grams = _ngrams(words, n)
            chars = _all_duplicate_chars(grams, n) if grams else 0
            if chars / size > frac:
                return f"duplicated_{n}_grams"
            if chars == 0:  # no repeated n-gram means no repeated longer one either
                break
        return None


@dataclass(frozen=True)
class C4:
    """C4 line rules (keep lines ending in terminal punctuation with >= 3 words, drop javascript and
    policy lines, strip citations) and page rules (lorem ipsum, curly bracket, >= 5 sentences).
    Returns the kept lines as the new text."""

    terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000

    def apply(self, text: str) -> tuple[str | None, str]:
        kept, sentences = [], 0
        for raw in text.splitlines():
            line = raw.strip()
            words = line.split()
            if any(len(w) > self.max_word_length for w in words):
                continue
            line = CITATION_RE.sub("", line)
            if self.terminal_punct and (not line.endswith(END_PUNCT) or line.endswith("...")):
                continue
            if len(words) < self.min_words_per_line:
                continue
            low = line.lower()
            if "lorem ipsum" in low:
                return "lorem_ipsum", text
            if "javascript" in low:
                continue
            if "{" in line:
                return "curly_bracket", text
            if any(p in low for p in POLICY):
                continue
            sentences += max(1, len(SENTENCE_END_RE.findall(line)))
            kept.append(line)
        if sentences < self.min_num_sentences:
            return "too_few_sentences", text
        return None, "\n".join(kept).strip()


@dataclass(frozen=True)
class FineWeb:
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def check(self, text: str, words: list[str], scores: dict) -> str | None:
        lines = text.split("\n")
        ratio = sum(line.endswith(END_PUNCT) for line in lines) / len(lines)
        scores["line_punct_ratio"] = round(ratio, 4)
        if ratio <= self.line_punct_thr:
            return "line_punct_ratio"
        if sum(len(line) <= self.short_line_length for line in lines) / len(lines) >= self.short_line_thr:
            return "short_line_ratio"
        chars = _duplicates([line for line in lines if line.strip()])[1]
        if chars / max(len(text.replace("\n", "")), 1) >= self.char_duplicates_ratio:
            return "char_dup_ratio"
        if text.count("\n") / max(len(words), 1) > self.new_line_ratio:
            return "list_ratio"
        return None


RULES = {"gopher_quality": GopherQuality, "gopher_repetition": GopherRepetition, "c4": C4, "fineweb": FineWeb}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["c4.min_num_sentences=3", ...]`` -> ``{"c4": {"min_num_sentences": 3}}``, checked against
    the rule's fields (values are JSON, so lists and numbers work; bare words are strings)."""
    import dataclasses
    import json

    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        rule, _, name = key.partition(".")
        if not sep or rule not in RULES:
            raise ValueError(f"--filter {item}: expected RULE.PARAM=VALUE with RULE one of {', '.join(RULES)}")
        fields = {f.name: f for f in dataclasses.fields(RULES[rule])}
        if name not in fields:
            raise ValueError(f"--filter {item}: {rule} has no parameter {name!r} (has {', '.join(fields)})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(rule, {})[name] = _typed(item, fields[name].default, value)
    return out


def _typed(item: str, default, value):
    """``value`` in the type of the parameter's default, or a ValueError naming the override."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = False
    if not ok:
        kind = type(default).__name__
        raise ValueError(f"--filter {item}: takes {'an' if kind[0] in 'aeiou' else 'a'} {kind} like {default!r}")
    return value


def build_rules(overrides: dict[str, dict], c4_terminal_punct: bool = True) -> dict:
    """The four rule objects with published defaults, then the user's overrides."""
    base = {"c4": {"terminal_punct": c4_terminal_punct}}
    return {name: cls(**{**base.get(name, {}), **overrides.get(name, {})}) for name, cls in RULES.items()}
