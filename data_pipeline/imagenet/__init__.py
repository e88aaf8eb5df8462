"""ImageNet-style images -> labelled WebDataset shards (``pretrain data imagenet``).

Modules: ``sources`` (find files, labels, class index; tars read in place), ``process`` (Pillow
decode/validate/resize/encode), ``shard_task`` (one shard = one Ray task), ``pipeline`` (plan and
run), ``outputs`` (manifest.json, _info.json, rejected/*.parquet), ``cli``.
"""
