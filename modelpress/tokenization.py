"""The bundle's tokenizer without transformers: ``tokenizer.json`` run by the ``tokenizers`` library,
configured from ``tokenizer_config.json`` as transformers' fast tokenizer configures it.

A bundle's ``tokenizer/`` folder is what ``save_pretrained`` wrote on the pressing side. This module
reads it back the way ``PreTrainedTokenizerFast`` does: the pipeline (normalizer, pre-tokenizer, model,
post-processor with its special tokens and segment ids) is ``tokenizer.json``; padding side,
truncation side, ``model_max_length``, the special tokens (pad, eos, ...), ``clean_up_tokenization_spaces``
and the chat template come from ``tokenizer_config.json``. Each call sets truncation (longest-first,
``stride`` for overflowing windows) and padding (to the batch's longest or to ``max_length``) on the
Rust tokenizer exactly as transformers' ``set_truncation_and_padding`` does, so the ids, masks,
segment ids and character offsets are the same as transformers' (``tests/test_deploy.py`` holds them
to it). :class:`DeployTokenizer` answers the subset of transformers' tokenizer interface the
encoders (``modelpress.modalities``) and the generator (``modelpress.generation``) use.

Deploy-side (``modelpress.deploy_side``): imports numpy and tokenizers only; jinja2 only for a chat
template, when one is applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from modelpress.errors import BadInputError

#: transformers' "no limit" model_max_length (``VERY_LARGE_INTEGER``)
NO_LIMIT = int(1e30)
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before punctuation and English contractions."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


class DeployTokenizer:
    """A saved fast tokenizer folder, callable like transformers' tokenizer for what modelpress uses."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BadInputError(
                f"{folder}: no tokenizer.json (a bundle needs a fast tokenizer's file to tokenize without transformers)"
            )
        self._tok = Tokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        specials = {**_read_json(folder / "special_tokens_map.json"), **config}
        self.special_tokens = {k: t for k in SPECIAL_KEYS if (t := _token_text(specials.get(k))) is not None}
        stated = config.get("model_max_length")
        self.model_max_length = int(stated) if isinstance(stated, (int, float)) and stated > 0 else NO_LIMIT
        self.padding_side = config.get("padding_side") or "right"
        self.truncation_side = config.get("truncation_side") or "right"
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.chat_template = config.get("chat_template") or _read_text(folder / "chat_template.jinja")
        self.model_input_names = list(
            config.get("model_input_names") or ("input_ids", "token_type_ids", "attention_mask")
        )

    # -- special tokens ----------------------------------------------------------------------------
    def _id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self._tok.token_to_id(token)

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        self.special_tokens["pad_token"] = token

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tok.num_special_tokens_to_add(pair)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    # -- encoding ------------------------------------------------------------------------------------
    def _configure(self, *, truncation: bool, max_length: int | None, stride: int, padding: Any) -> None:
        """Truncation and padding on the Rust tokenizer, as transformers' ``set_truncation_and_padding``."""
        if truncation:
            self._tok.enable_truncation(
                max_length or self.model_max_length,
                stride=stride,
                strategy="longest_first",
                direction=self.truncation_side,
            )
        else:
            self._tok.no_truncation()
        if padding in (False, None, "do_not_pad"):
            self._tok.no_padding()
            return
        if self.pad_token_id is None:
            raise BadInputError("the bundle's tokenizer has no padding token; it cannot batch texts")
        self._tok.enable_padding(
            length=max_length if padding == "max_length" else None,
            direction=self.padding_side,
            pad_id=self.pad_token_id,
            pad_type_id=0,
            pad_token=self.pad_token,
        )

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool | str = False,
        stride: int = 0,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
        return_overflowing_tokens: bool = False,
    ) -> dict[str, Any]:
        """``input_ids``, ``token_type_ids``, ``attention_mask`` (+ ``offset_mapping``,
        ``overflow_to_sample_mapping``): lists per text, or arrays with ``return_tensors="np"``; one
        text (a str) gives the lists of that text alone."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            texts = list(zip(texts, pairs, strict=True))
        self._configure(truncation=truncation, max_length=max_length, stride=stride, padding=padding)
        rows, owner = [], []
        for i, encoding in enumerate(self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)):
            found = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows += found
            owner += [i] * len(found)
        out: dict[str, Any] = {
            "input_ids": [e.ids for e in rows],
            "token_type_ids": [e.type_ids for e in rows],
            "attention_mask": [e.attention_mask for e in rows],
        }
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in rows]
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = owner
        if return_tensors == "np":
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'np' (or None) without transformers")
        return {k: v[0] for k, v in out.items()} if single and not return_overflowing_tokens else out

    # -- decoding and chat -----------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # transformers skips the clean-up for BPE models: it would strip real spaces before punctuation
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False, tokenize: bool = True
    ) -> str | list[int]:
        """The chat rendered by the tokenizer's template (jinja2, sandboxed, as transformers renders
        it), tokenized without added special tokens when ``tokenize``."""
        if not self.chat_template:
            raise BadInputError("the bundle's tokenizer has no chat template")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise BadInputError("a chat template needs jinja2: pip install jinja2") from None

        def raise_exception(message: str) -> None:
            raise BadInputError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        text = env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens
        )
        return list(self(text, add_special_tokens=False)["input_ids"]) if tokenize else text


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None
