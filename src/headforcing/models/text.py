"""Prompts -> text context, as Wan uses it: umT5 over 512 tokens, the padding positions set to zero."""

from __future__ import annotations

import html
import re

import torch


def clean(prompt: str) -> str:
    """Wan's prompt cleaning (HTML entities, runs of whitespace); ftfy's mojibake repair when installed."""
    try:
        import ftfy

        prompt = ftfy.fix_text(prompt)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt)).strip())


class WanTextEncoder:
    """Embeddings [1, text_len, d_model] per prompt (the loaded model keeps the recent ones); the encoder can
    leave the GPU after use."""

    def __init__(self, tokenizer, encoder, text_len: int = 512, device="cpu"):
        self.tokenizer, self.encoder, self.text_len = tokenizer, encoder.to(device), text_len
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, prompt: str) -> torch.Tensor:
        batch = self.tokenizer(
            [clean(prompt)],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        context = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        context[:, int(mask.sum()) :] = 0  # [1, text_len, d_model]: the real tokens, then zeros
        return context.cpu()

    def offload(self) -> None:
        """Move the encoder to the CPU (prompts already encoded stay with the loaded model)."""
        self.encoder.to("cpu")
        self.device = torch.device("cpu")
