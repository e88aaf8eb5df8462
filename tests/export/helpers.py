"""Shared checks for the export tests: run our model and the exported transformers model on the
same input and compare logits."""

from __future__ import annotations

import torch


def inputs(model_config, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if model_config.family == "vit":
        return torch.randn(2, model_config.num_channels, model_config.image_size, model_config.image_size, generator=g)
    return torch.randint(0, model_config.vocab_size, (2, 24), generator=g)


def hf_logits(out_dir, model_config, x: torch.Tensor) -> torch.Tensor:
    import transformers

    auto = {"gpt": transformers.AutoModelForCausalLM, "bert": transformers.AutoModelForMaskedLM,
            "vit": transformers.AutoModelForImageClassification}[model_config.family]
    model = auto.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        if model_config.family == "vit":
            return model(pixel_values=x).logits
        return model(input_ids=x).logits


def our_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)
