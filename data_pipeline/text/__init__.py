"""Common Crawl WARC/WET (or parquet / JSON-lines datasets) -> tokenized WebDataset text shards, on Ray.

Stages, in order (each drop is counted by stage and reason and lands in ``rejected/*.parquet``):
read -> extract -> lang -> gopher_repetition -> gopher_quality -> c4 -> fineweb -> pii ->
exact/near dedup (global, a shuffle over partitions) -> tokenizer training -> tokenize -> pack
into shards.

Per-input-file work runs as one Ray task per file, the global steps as tasks over partitions
(``shuffle.py``) and per-file summaries, all written under the job's work directory atomically, so
a killed run resumes from what is there and any number of workers or partitions gives the same
bytes; the driver holds per-file summaries only. Entry point:
:func:`data_pipeline.text.pipeline.run_pipeline`; locations through :mod:`data_pipeline.storage`.
"""
