"""SentencePiece tokenizer trained on the corpus copies, saved next to the model.

- Unigram model with identity normalization: full-width Chinese punctuation (，。！) stays as it
  is, so decoded copy is scored exactly as written. character_coverage=1.0: every Chinese
  character of the corpus is a token of its own, so any text is representable (character-aware).
- Attribute values are user-defined symbols: one token in the source AND wherever the copy
  mentions them, so mentioning a value is a single, directly copyable token.
- Attribute keys and control codes are control symbols: source-only, never produced by text.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from components.models.generator.focus import ANY, LENGTHS, TONES

PAD, UNK_ID, BOS, EOS = 0, 1, 2, 3
FOCUS_MARK = "<focus>"
MASKED = "<UNK>"  # the corpus' masked brand names: one token, never generated
MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"


def key_token(key: str) -> str:
    return f"<k:{key}>"


EXEMPLAR_MARK = "<exemplar>"


def control_tokens() -> list[str]:
    return [FOCUS_MARK, EXEMPLAR_MARK] + [f"<tone:{t}>" for t in (*TONES, ANY)] + [f"<len:{x}>" for x in (*LENGTHS, ANY)]


class CopyTokenizer:
    def __init__(self, model_proto: bytes, keys: Sequence[str]):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.keys = list(keys)
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size()
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        # What each token adds to the text when decoded (control tokens add nothing).
        self.piece_texts = [
            "" if self.sp.is_control(i) or self.sp.is_unknown(i) else p.replace("\u2581", " ")
            for i, p in enumerate(self.pieces)
        ]
        # Never generated: control codes, unknown, and the masked-brand placeholder.
        self.non_text_ids = [
            i for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i) or self.pieces[i] == MASKED
        ]

    @classmethod
    def train(
        cls, texts: Iterable[str], keys: Sequence[str], values: Sequence[str], vocab_size: int
    ) -> CopyTokenizer:
        import sentencepiece as spm

        keys = sorted(set(keys))
        # Longest first so that a value containing another (中长裙 / 长裙) wins.
        values = sorted({v for v in values if v and " " not in v} | {MASKED}, key=lambda v: (-len(v), v))
        texts = list(texts)
        specials = len(keys) + len(control_tokens()) + len(values) + 4
        # Every character must be a piece (character_coverage=1.0): a small corpus or a small
        # requested size gets a vocabulary just big enough for that plus some merged pieces.
        vocab_size = max(vocab_size, len(set("".join(texts))) + specials + 64)
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=False,
            max_sentencepiece_length=8,
            user_defined_symbols=values,
            control_symbols=[key_token(k) for k in keys] + control_tokens(),
            pad_id=PAD,
            unk_id=UNK_ID,
            bos_id=BOS,
            eos_id=EOS,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
        )
        return cls(buffer.getvalue(), keys)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(self.model_proto)
        (directory / META_FILE).write_text(json.dumps({"keys": self.keys}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> CopyTokenizer:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        return cls((directory / MODEL_FILE).read_bytes(), meta["keys"])

    def token_id(self, piece: str) -> int:
        token = self.sp.piece_to_id(piece)
        if token == UNK_ID:
            raise KeyError(f"{piece!r} is not in the tokenizer vocabulary")
        return token

    def encode_text(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def encode_source(
        self,
        attributes: dict[str, list[str]],
        focus: Sequence[str],
        tone: str,
        length: str,
        max_len: int,
        exemplar: str | None = None,
        max_exemplar_len: int = 0,
    ) -> list[int]:
        """[tone] [len] then `<k:key> [<focus>] value` for every pair, then optionally
        `<exemplar>` + a retrieved copy to edit (truncated to max_exemplar_len), then EOS.
        Where it all does not fit in max_len, the exemplar is cut first: the attributes are the
        product's facts, the exemplar only a hint."""
        ids = [self.token_id(f"<tone:{tone}>"), self.token_id(f"<len:{length}>")]
        focus_id = self.token_id(FOCUS_MARK)
        for key, values in attributes.items():
            key_id = self.sp.piece_to_id(key_token(key))
            for value in values:
                if key_id != UNK_ID:
                    ids.append(key_id)
                if value in focus:
                    ids.append(focus_id)
                ids.extend(self.encode_text(value))
        room = max_len - 2 - len(ids)  # for EOS and the exemplar mark
        if exemplar and room > 0 and max_exemplar_len > 0:
            ids += [self.token_id(EXEMPLAR_MARK)] + self.encode_text(exemplar)[: min(max_exemplar_len, room)]
        return ids[: max_len - 1] + [EOS]

    def pairs_past(self, attributes: dict[str, list[str]], max_len: int) -> list[str]:
        """`key#value` pairs that `encode_source` cuts off at max_len (the model never sees them)."""
        used, cut = 2, []  # tone and length codes
        for key, values in attributes.items():
            has_key = self.sp.piece_to_id(key_token(key)) != UNK_ID
            for value in values:
                used += has_key + len(self.encode_text(value))  # a focus mark adds one more; not counted
                if used > max_len - 1:
                    cut.append(f"{key}#{value}")
        return cut

    def encode_target(self, text: str, max_len: int) -> list[int]:
        """BOS + text + EOS, the text truncated to fit max_len."""
        return [BOS] + self.encode_text(text)[: max_len - 2] + [EOS]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.piece_texts[i] for i in ids if i not in (PAD, BOS, EOS)).strip()
