"""Two tokenizers side by side: which tokens they share, text round trips, and the checks that they can work together.

A token is *shared* when both vocabularies hold a token of the same text (Timor et al., ICML 2025, token-level
intersection). A token's text is its vocabulary string with the tokenizer's space marker undone: byte-level BPE
strings (``"Ġthe"``) are mapped back to their bytes, SentencePiece's ``"▁"`` becomes a space. Special tokens are
not shared by text; the two EOS tokens are paired instead. Tokens that are not whole UTF-8 text (byte-fallback
``<0x..>`` pieces, partial bytes) are never shared.
"""

from __future__ import annotations

import functools
import json
import re

import torch

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of every byte, inverted (byte-level BPE vocabularies use them)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def _decoder_types(tokenizer) -> set[str]:
    """The ``tokenizers`` decoder types of a fast tokenizer (a ``Sequence`` is opened), empty for others."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return {part.get("type") for part in parts if part}


def token_texts(tokenizer) -> dict[int, str]:
    """The text of every non-special token of ``tokenizer``, by id (tokens that are not whole text left out)."""
    byte_level = "ByteLevel" in _decoder_types(tokenizer)
    decoder = byte_decoder()
    special = set(tokenizer.all_special_ids)
    texts = {}
    for piece, i in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if i in special or _BYTE_PIECE.match(piece):
            continue
        if byte_level:
            try:
                text = bytes(decoder[c] for c in piece).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue
        else:
            text = piece.replace("▁", " ")
        if text and "\ufffd" not in text:
            texts.setdefault(i, text)
    return texts


class TokenMap:
    """Ids of the shared tokens in both vocabularies.

    Attributes:
        draft_to_target: ``# [V_draft]`` int64, the target id of each shared draft id, -1 elsewhere.
        target_to_draft: ``# [V_target]`` int64, the converse.
        shared: the number of tokens shared by text (the two EOS tokens are paired too, not counted here).
    """

    def __init__(self, target_tokenizer, draft_tokenizer, target_vocab: int, draft_vocab: int):
        by_text = {}
        for i, text in token_texts(target_tokenizer).items():
            if i < target_vocab:
                by_text.setdefault(text, i)
        pairs, taken = {}, set()  # draft id -> target id; target ids already paired
        for j, text in token_texts(draft_tokenizer).items():
            if j < draft_vocab and text in by_text and by_text[text] not in taken:
                pairs[j] = by_text[text]
                taken.add(by_text[text])
        self.shared = len(pairs)  # by text (the EOS pair below is not counted)
        eos_t, eos_d = target_tokenizer.eos_token_id, draft_tokenizer.eos_token_id
        if isinstance(eos_t, int) and isinstance(eos_d, int) and eos_t < target_vocab and eos_d < draft_vocab:
            pairs[eos_d] = eos_t
        self.draft_to_target = torch.full((draft_vocab,), -1, dtype=torch.int64)
        self.target_to_draft = torch.full((target_vocab,), -1, dtype=torch.int64)
        if pairs:
            d = torch.tensor(list(pairs.keys()), dtype=torch.int64)
            t = torch.tensor(list(pairs.values()), dtype=torch.int64)
            self.draft_to_target[d] = t
            self.target_to_draft[t] = d

    def to(self, device) -> TokenMap:
        self.draft_to_target = self.draft_to_target.to(device)
        self.target_to_draft = self.target_to_draft.to(device)
        return self

    def target_logits(self, draft_logits: torch.Tensor, target_vocab: int) -> torch.Tensor:
        """Draft logits ``# [b, V_draft]`` as logits over the target's ids ``# [b, V_target]``: a shared token's
        draft logit at its target id, -inf at every other id (softmax then renormalizes over the shared tokens)."""
        out = draft_logits.new_full((draft_logits.shape[0], target_vocab), float("-inf"))
        shared = self.draft_to_target >= 0  # [V_draft]
        out[:, self.draft_to_target[shared]] = draft_logits[:, shared]
        return out


def tokenizers_agree(target_tokenizer, draft_tokenizer) -> bool:
    """True when every id both tokenizers have is the same token (one family, maybe padded differently)."""
    target, draft = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    shared = min(len(target), len(draft))
    by_id_t = {i: s for s, i in target.items() if i < shared}
    by_id_d = {i: s for s, i in draft.items() if i < shared}
    return by_id_t == by_id_d


def check_tokenizer(tokenizer, role: str) -> None:
    """A tokenizer must encode text, decode ids and list its vocabulary; raise a clear error otherwise."""
    missing = [name for name in ("encode", "decode", "get_vocab", "batch_decode") if not callable(getattr(tokenizer, name, None))]
    if missing:
        raise TypeError(f"the {role} tokenizer ({type(tokenizer).__name__}) has no {', '.join(missing)}: a draft with "
                        "another tokenizer needs transformers tokenizers (e.g. AutoTokenizer.from_pretrained) on both "
                        "sides, to turn text into ids and back.")
    try:
        ids = tokenizer.encode("a b", add_special_tokens=False)
        text = tokenizer.decode(ids)
    except Exception as error:  # noqa: BLE001 - any failure means it cannot work here
        raise ValueError(f"the {role} tokenizer cannot encode and decode text ({error!r}).") from error
    if not isinstance(text, str) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"the {role} tokenizer's encode/decode do not return ids and text.")


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def continuation(tokenizer, context: list[int], new: list[int]) -> str:
    """The text ``new`` ids add after ``context`` ids (decoding both together, so spaces between them are right)."""
    base = tokenizer.decode(context, skip_special_tokens=True)
    full = tokenizer.decode(context + new, skip_special_tokens=True)
    return full[len(base):] if full.startswith(base) else tokenizer.decode(new, skip_special_tokens=True)


def retokenize(tokenizer, tail: list[int], text: str) -> list[int]:
    """Ids of ``text`` written after the ids ``tail`` (a row's last committed tokens): ``tail``'s text and ``text``
    tokenized together, ``tail`` removed from the front; ``text`` alone when that would change ``tail``."""
    ids = tokenizer.encode(tokenizer.decode(tail) + text, add_special_tokens=False) if tail else []
    if tail and ids[: len(tail)] == tail:
        return ids[len(tail):]
    return tokenizer.encode(text, add_special_tokens=False)
