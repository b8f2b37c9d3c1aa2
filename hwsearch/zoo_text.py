"""Text models from Hugging Face ``transformers`` configs on a synthetic token task.

Nothing is downloaded: each model is built from a config with random initialisation and
trained on :func:`token_data`, a generated sequence-classification task; trained weights are
cached like the reference model's (``$HWSEARCH_CACHE``). ``transformers`` is an optional extra
(``pip install -e ".[transformers]"``); importing this module without it raises ImportError
saying so.

* :func:`bert_tokens` — a 2-layer BERT-like encoder (hidden 64, 4 heads, intermediate 128),
  classified from the first ([CLS]) token through BERT's pooler;
* :func:`llama_tokens` — a 2-layer Llama-like decoder with grouped-query attention (hidden 64,
  4 query heads sharing 2 KV heads, SwiGLU intermediate 128, RoPE, RMSNorm), classified from the
  last token.

Both are wrapped in :class:`TokenClassifier`, whose forward takes the (batch, 16) int64 token
ids and returns (batch, 2) logits, so ``torch.export`` traces them.
``--model hwsearch.zoo_text:bert_tokens --data hwsearch.zoo_text:token_data`` names one.
"""
from __future__ import annotations

import torch
import torch.nn as nn

try:
    import transformers
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification
except ImportError as exc:  # an optional extra: say how to install it
    raise ImportError(f'hwsearch.zoo_text needs Hugging Face transformers ({exc}); install it with '
                      'pip install -e ".[transformers]"') from exc

from hwsearch.zoo import Dataset, trained_and_cached

__all__ = ["token_data", "TokenClassifier", "bert_tokens", "llama_tokens", "bert_config", "llama_config",
           "VOCAB", "SEQ_LEN", "PAD", "CLS", "FIRST", "SECOND", "BERT_TOKENS", "LLAMA_TOKENS"]


VOCAB = 64
SEQ_LEN = 16
PAD, CLS, FIRST, SECOND = 0, 1, 2, 3  # special token ids; fillers are 4..VOCAB-1
BERT_TOKENS = ("hwsearch.zoo_text:bert_tokens", "hwsearch.zoo_text:token_data")
LLAMA_TOKENS = ("hwsearch.zoo_text:llama_tokens", "hwsearch.zoo_text:token_data")
_REVISION = "tokens-order-v1"  # bump when a config, the task or the training recipe changes


def token_data(seed: int = 0, n_train: int = 4000, n_val: int = 1000) -> Dataset:
    """The "which comes first" task: (N, 16) int64 token ids — [CLS] at position 0, then 15
    tokens, of which exactly one is FIRST (2) and one is SECOND (3), at random distinct
    positions, the rest fillers drawn uniformly from 4..63. The label is 1 when FIRST comes
    before SECOND, else 0. Both classes hold the same tokens, so a bag-of-words model stays at
    chance (0.5): the model must compare positions. Deterministic for ``seed``; the classes
    are balanced by symmetry (about 50/50)."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    ids = torch.randint(SECOND + 1, VOCAB, (n, SEQ_LEN), generator=g)
    ids[:, 0] = CLS
    pos = torch.argsort(torch.rand(n, SEQ_LEN - 1, generator=g), dim=1)[:, :2] + 1  # distinct, in 1..15
    rows = torch.arange(n)
    ids[rows, pos[:, 0]] = FIRST
    ids[rows, pos[:, 1]] = SECOND
    y = (pos[:, 0] < pos[:, 1]).long()
    return Dataset(ids[n_train:], y[n_train:], ids[:n_train], y[:n_train], name="tokens-order")


class TokenClassifier(nn.Module):
    """Wraps a Hugging Face sequence classifier: ``forward(ids)`` takes (batch, tokens) int64
    token ids and returns the (batch, classes) logits as a plain tensor."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids).logits


def bert_config() -> BertConfig:
    """The BERT-like encoder's config: 2 layers, hidden 64, 4 heads, intermediate 128, no
    dropout, SDPA attention, 2 labels."""
    return BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=SEQ_LEN, type_vocab_size=1, num_labels=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                      pad_token_id=PAD, attn_implementation="sdpa")


def llama_config() -> LlamaConfig:
    """The Llama-like decoder's config: 2 layers, hidden 64, 4 query heads and 2 KV heads
    (grouped-query attention, head dim 16), SwiGLU intermediate 128, SDPA attention, 2 labels;
    PAD is its padding id (never in the data), so it classifies from the last token."""
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=SEQ_LEN,
                       num_labels=2, pad_token_id=PAD, bos_token_id=CLS, eos_token_id=None,
                       attn_implementation="sdpa")


def _trained(name: str, model: TokenClassifier, epochs: int, lr: float) -> tuple[nn.Module, torch.Tensor]:
    data = token_data()
    model = trained_and_cached(model, data, stem=f"{name}_tokens",
                               tag=f"{_REVISION}-{name}-e{epochs}-lr{lr}-{torch.__version__}-{transformers.__version__}",
                               what=f"{name} token model", epochs=epochs, lr=lr)
    return model, data.example_input


def bert_tokens(epochs: int = 20, *, trained: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The BERT-like encoder trained on :func:`token_data` and cached, with a (1, 16) example
    input (validation accuracy 0.999; about 18 s to train on 2 cores). ``trained=False``
    returns it randomly initialised (seed 0), untrained and uncached."""
    torch.manual_seed(0)
    model = TokenClassifier(BertForSequenceClassification(bert_config()))
    if not trained:
        return model.eval(), token_data().example_input
    return _trained("bert", model, epochs, 2e-3)


def llama_tokens(epochs: int = 10, *, trained: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The Llama-like GQA decoder trained on :func:`token_data` and cached, with a (1, 16)
    example input (validation accuracy 1.000; about 12 s to train on 2 cores).
    ``trained=False`` returns it randomly initialised (seed 0), untrained and uncached."""
    torch.manual_seed(0)
    model = TokenClassifier(LlamaForSequenceClassification(llama_config()))
    if not trained:
        return model.eval(), token_data().example_input
    return _trained("llama", model, epochs, 2e-3)
