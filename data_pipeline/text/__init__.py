"""Common Crawl WARC/WET -> tokenized WebDataset text shards, run on Ray.

Stages, in order (each drop is counted by stage and reason and lands in ``rejected/*.parquet``):
read -> extract -> lang -> gopher_repetition -> gopher_quality -> c4 -> fineweb -> pii ->
exact/near dedup (global) -> tokenizer training -> tokenize -> pack into shards.

Per-input-file work (read..pii, then tokenize) runs as one Ray task per file and is written to
``<out>/_work/`` atomically, so a killed run resumes from what is there and any number of workers
gives the same bytes. Entry point: :func:`data_pipeline.text.pipeline.run_pipeline`.
"""
