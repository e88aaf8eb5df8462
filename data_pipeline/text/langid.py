"""Language identification: py3langid (its model ships in the wheel) or fastText's lid.176.bin.

Both give (ISO 639-1 code, probability). Only the first ``max_chars`` characters are classified,
which is plenty for a language decision and keeps a 5 MB page from costing seconds.
"""

from __future__ import annotations

import functools


class LanguageId:
    def __init__(self, fasttext_model: str | None = None, max_chars: int = 4_000):
        self.max_chars = max_chars
        self.fasttext_model = fasttext_model
        if fasttext_model:
            try:
                import fasttext  # noqa: F401
            except ImportError as e:
                raise ValueError(f"--fasttext-model {fasttext_model}: the `fasttext` package is not installed") from e
            self._ft = _load_fasttext(fasttext_model)
        else:
            self._ident = _load_py3langid()

    def classify(self, text: str) -> tuple[str, float]:
        head = text[: self.max_chars]
        if self.fasttext_model:
            labels, probs = self._ft.predict(head.replace("\n", " "), k=1)
            return labels[0].replace("__label__", ""), float(probs[0])
        lang, prob = self._ident.classify(head)
        return str(lang), float(prob)


@functools.lru_cache(maxsize=2)
def _load_fasttext(path: str):
    import fasttext

    return fasttext.load_model(path)


@functools.lru_cache(maxsize=1)
def _load_py3langid():
    from py3langid import langid

    return langid.LanguageIdentifier.from_modelpath(langid.MODEL_DIR / langid.MODEL_FILE, norm_probs=True)
