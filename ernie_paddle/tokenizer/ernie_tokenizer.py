"""The ERNIE 4.5 tokenizer read from a checkpoint folder (SentencePiece or tokenizer.json + JSON configs)."""

import json
from pathlib import Path

from ernie_paddle.errors import ErnieError
from ernie_paddle.tokenizer.backends import AddedToken, HFJsonBackend, SpmBackend
from ernie_paddle.tokenizer.chat_template import CHAT_TEMPLATE, render_chat
from ernie_paddle.tokenizer.detokenizer import IncrementalDetokenizer
from ernie_paddle.tokenizer.thinking_template import BUILTIN_TEMPLATES, THINKING_CHAT_TEMPLATE

END_OF_TURN = "<|im_end|>"  # the Thinking family's end of a turn
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

__all__ = ["ErnieTokenizer", "IncrementalDetokenizer"]


def _read_json(folder: Path, name: str, kind: type) -> object | None:
    path = folder / name
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ErnieError(f"is not valid JSON ({exc}); re-copy it from the model release", path) from exc
    if not isinstance(data, kind):
        raise ErnieError(f"must hold a JSON {kind.__name__}, found {type(data).__name__}", path)
    return data


def _token_text(value, path: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ErnieError(f"special token must be a string or {{'content': ...}}, found {value!r}", path)


def _added_tokens(folder: Path, config: dict, added_json: dict, specials: set[str]) -> list[AddedToken]:
    cfg_path = folder / "tokenizer_config.json"
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ErnieError("'added_tokens_decoder' must be an object of id -> token", cfg_path)
    out: dict[str, AddedToken] = {}
    for key, tok in decoder.items():
        if not str(key).isdigit() or not isinstance(tok, dict) or not isinstance(tok.get("content"), str):
            raise ErnieError(f"bad added_tokens_decoder entry {key!r}: {tok!r}", cfg_path)
        out[tok["content"]] = AddedToken(tok["content"], int(key), bool(tok.get("special", False)),
                                         bool(tok.get("lstrip", False)), bool(tok.get("rstrip", False)))
    for content, idx in added_json.items():
        if not isinstance(idx, int) or idx < 0:
            raise ErnieError(f"token {content!r} has a bad id {idx!r}", folder / "added_tokens.json")
        out.setdefault(content, AddedToken(content, idx, content in specials))
    return list(out.values())


class ErnieTokenizer:
    """Encode/decode text and render the chat template; ids match transformers' tokenizer on the same files."""

    def __init__(self, backend, specials: dict[str, str | None], chat_template: str | None,
                 add_bos_token: bool = False, add_eos_token: bool = False, folder: Path | None = None):
        self.backend = backend
        self.folder = folder
        self.chat_template = chat_template or CHAT_TEMPLATE
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self._post_process = False
        for name in SPECIAL_NAMES:
            setattr(self, name, specials.get(name))

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path) -> "ErnieTokenizer":
        """Read tokenizer.model (or tokenizer.json), tokenizer_config.json, special_tokens_map.json, added_tokens.json."""
        folder = Path(path)
        if not folder.is_dir():
            raise ErnieError("tokenizer folder does not exist", folder)
        config = _read_json(folder, "tokenizer_config.json", dict) or {}
        smap = _read_json(folder, "special_tokens_map.json", dict) or {}
        added_json = _read_json(folder, "added_tokens.json", dict) or {}
        specials = {}
        for name in SPECIAL_NAMES:
            value = config.get(name, smap.get(name))
            specials[name] = _token_text(value, folder / "tokenizer_config.json")
        lists = [config.get("additional_special_tokens") or smap.get("additional_special_tokens") or [],
                 config.get("extra_special_tokens") or []]
        extra = [t for lst in lists if isinstance(lst, list) for t in lst]
        if not all(isinstance(lst, list | dict) for lst in lists) or not all(isinstance(t, str | dict) for t in extra):
            raise ErnieError("additional special tokens must be a list of strings", folder / "tokenizer_config.json")
        special_texts = {t for t in specials.values() if t} | {_token_text(t, folder) for t in extra}
        added = _added_tokens(folder, config, added_json, special_texts)
        if (folder / "tokenizer.json").exists():
            backend = HFJsonBackend(folder / "tokenizer.json", added)
        elif (folder / "tokenizer.model").exists():
            backend = SpmBackend(folder / "tokenizer.model", added)
        else:
            raise ErnieError("no tokenizer.model (or tokenizer.json) in the checkpoint folder; copy it from the "
                             "model release", folder / "tokenizer.model")
        template = _chat_template(folder, config)
        if template is None and any(t.content == END_OF_TURN for t in added):  # a Thinking-family vocabulary
            template = THINKING_CHAT_TEMPLATE
        tok = cls(backend, specials, template, bool(config.get("add_bos_token", False)),
                  bool(config.get("add_eos_token", False)), folder)
        # A tokenizer.json without explicit flags in the config adds bos/eos through its own post-processor.
        tok._post_process = isinstance(backend, HFJsonBackend) and not (
            {"add_bos_token", "add_eos_token"} & config.keys())
        return tok

    # -- vocabulary ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.backend.size

    @property
    def vocab_size(self) -> int:
        return self.backend.size

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def convert_ids_to_tokens(self, ids) -> list[str | None]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    bos_token_id = property(lambda self: self.token_to_id(self.bos_token))
    eos_token_id = property(lambda self: self.token_to_id(self.eos_token))
    unk_token_id = property(lambda self: self.token_to_id(self.unk_token))
    pad_token_id = property(lambda self: self.token_to_id(self.pad_token))
    cls_token_id = property(lambda self: self.token_to_id(self.cls_token))
    sep_token_id = property(lambda self: self.token_to_id(self.sep_token))
    mask_token_id = property(lambda self: self.token_to_id(self.mask_token))

    @property
    def special_ids(self) -> set[int]:
        """Ids skipped by ``decode(..., skip_special_tokens=True)``."""
        return {i for i, t in self.backend.added_by_id.items() if t.special}

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a generation: eos, sep and ``<|im_end|>`` (the chat templates' end-of-turn tokens)."""
        end_of_turn = next((i for i, t in self.backend.added_by_id.items() if t.content == END_OF_TURN), None)
        ids = [self.eos_token_id, self.sep_token_id, end_of_turn]
        return sorted({i for i in ids if i is not None})

    # -- text <-> ids --------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; bos/eos are added only when the config asks (ERNIE: neither)."""
        if not isinstance(text, str):
            raise ErnieError(f"text to encode must be a string, got {type(text).__name__}")
        if self._post_process:
            return self.backend.encode(text, add_special_tokens)
        ids = self.backend.encode(text)
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id, *ids]
            if self.add_eos_token and self.eos_token_id is not None:
                ids = [*ids, self.eos_token_id]
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        """A fresh streaming detokenizer bound to this tokenizer."""
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False,
                            chat_template: str | None = None, **kwargs):
        """Render ``messages`` like transformers (special tokens visible to the template); ids if ``tokenize``."""
        variables = {name: getattr(self, name) for name in SPECIAL_NAMES if getattr(self, name) is not None}
        variables.update(kwargs)
        text = render_chat(chat_template or self.chat_template, messages, add_generation_prompt, **variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _chat_template(folder: Path, config: dict) -> str | None:
    """chat_template.jinja wins over the config entry (as in transformers), then chat_template.json; an entry
    that names a built-in template (``"ernie-4.5-thinking"``) stands for that template."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.exists():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ErnieError(f"is not UTF-8 text ({exc})", jinja_file) from exc
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is None:
        template = (_read_json(folder, "chat_template.json", dict) or {}).get("chat_template")
    if template is not None and not isinstance(template, str):
        raise ErnieError("'chat_template' must be a string", folder / "tokenizer_config.json")
    return BUILTIN_TEMPLATES.get(template, template)
