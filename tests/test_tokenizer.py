"""Tokenizer, chat template and streaming detokenizer checked against transformers on the same files."""

import json
import random

import pytest
import sentencepiece as spm

from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
from ernie_paddle.errors import ErnieError
from ernie_paddle.tokenizer.chat_template import CHAT_TEMPLATE
from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer, IncrementalDetokenizer

transformers = pytest.importorskip("transformers")

TRAIN_TEXT = [
    "The model reads text and writes text. 模型读取文本并生成文本。",
    "Streaming output goes to the client token by token, 逐个令牌地发送给客户端。",
    "Paddle and PyTorch agree on the logits 😀 当权重相同时结果一致 👍",
    "Numbers 2025 and 3.14 appear; 今天是星期五，天气晴朗。",
    "Hello, world! 你好，世界！ Good morning 早上好 🎉",
] * 40 + [f"line {i} 第{i}行 value {i * 7}" for i in range(300)]

TEXTS = [
    "Hello world, 你好世界！😀🦄 test  two  spaces",
    " leading space and trailing  ",
    "<|begin_of_sentence|>User: hi<mask:5> x<mask:1>\nAssistant: ok<|end_of_sentence|>",
    "a<pad>b<mask:2>c<unk>d <think> e</think>",
    "emoji 🦄🐉🧪 mixed 中文 and English\n\n\ttabs",
    "",
]
MESSAGES = [
    {"role": "system", "content": "你是一个有用的助手 🤖"},
    {"role": "user", "content": "Hello 你好 🦄"},
    {"role": "assistant", "content": "Hi! 很高兴见到你。"},
    {"role": "user", "content": "Tell me a joke 讲个笑话"},
]


def _entry(content, special=True):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """A SentencePiece model trained here, laid out like an ERNIE 4.5 -PT release (plus one non-special token)."""
    folder = tmp_path_factory.mktemp("release")
    masks = [f"<mask:{i}>" for i in range(4)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_TEXT), model_prefix=str(folder / "tokenizer"), vocab_size=600,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", unk_id=0, unk_piece="<unk>",
        bos_id=1, bos_piece="<|begin_of_sentence|>", eos_id=2, eos_piece="<|end_of_sentence|>", pad_id=3,
        pad_piece="<pad>", control_symbols=masks, num_threads=1, minloglevel=2)
    (folder / "tokenizer.vocab").unlink()
    size = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    names = ["<unk>", "<|begin_of_sentence|>", "<|end_of_sentence|>", "<pad>", *masks]
    decoder = {str(i): _entry(t) for i, t in enumerate(names)}
    extra = {f"<mask:{i}>": size + i - 4 for i in range(4, 8)} | {"<think>": size + 4, "</think>": size + 5}
    for tok, i in extra.items():
        decoder[str(i)] = _entry(tok, special=tok.startswith("<mask"))
    specials = {"bos_token": names[1], "eos_token": names[2], "unk_token": "<unk>", "pad_token": "<unk>",
                "cls_token": names[1], "sep_token": names[2], "mask_token": "<mask:1>"}
    config = {**specials, "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
              "legacy": True, "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False,
              "model_max_length": 131072, "added_tokens_decoder": decoder, "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "added_tokens.json").write_text(json.dumps(extra))
    return folder


@pytest.fixture(scope="module")
def hf_tok(release_dir):
    return transformers.AutoTokenizer.from_pretrained(str(release_dir))


@pytest.fixture(scope="module")
def json_dir(hf_tok, tmp_path_factory):
    """The same tokenizer saved by transformers as tokenizer.json (no tokenizer.model)."""
    folder = tmp_path_factory.mktemp("hfjson")
    hf_tok.save_pretrained(str(folder))
    assert not (folder / "tokenizer.model").exists()
    return folder


@pytest.fixture(params=["sentencepiece", "tokenizer.json"])
def ours(request, release_dir, json_dir):
    tok = ErnieTokenizer.from_folder(release_dir if request.param == "sentencepiece" else json_dir)
    assert type(tok.backend).__name__ == ("SpmBackend" if request.param == "sentencepiece" else "HFJsonBackend")
    return tok


def test_encode_decode_match_transformers(ours, hf_tok):
    assert len(ours) == len(hf_tok)
    for text in TEXTS:
        for add in (True, False):
            ids = hf_tok.encode(text, add_special_tokens=add)
            assert ours.encode(text, add_special_tokens=add) == ids, text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf_tok.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ours.encode(TEXTS[0])) == TEXTS[0]
    assert ours.decode(ours.encode(TEXTS[3]), skip_special_tokens=True) == "abcd <think> e</think>"


def test_special_ids_match_transformers(ours, hf_tok):
    for name in ("bos", "eos", "unk", "pad", "cls", "sep", "mask"):
        assert getattr(ours, f"{name}_token_id") == getattr(hf_tok, f"{name}_token_id"), name
    assert ours.eos_token_id == 2 and ours.stop_token_ids == [2]
    assert ours.token_to_id("<think>") == len(hf_tok) - 2
    assert ours.token_to_id("<think>") not in ours.special_ids and ours.token_to_id("<mask:7>") in ours.special_ids


@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(ours, hf_tok, gen):
    text = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
    assert ours.apply_chat_template(MESSAGES, add_generation_prompt=gen) == text
    assert text.startswith("<|begin_of_sentence|>你是一个有用的助手 🤖\nUser: Hello")
    assert text.endswith("User: Tell me a joke 讲个笑话\n" + ("Assistant: " if gen else ""))
    assert "Assistant: Hi! 很高兴见到你。<|end_of_sentence|>" in text
    ids = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=True)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert ids[0] == ours.cls_token_id and ours.sep_token_id in ids


def test_chat_template_globals_and_errors(ours):
    tmpl = "{{ bos_token }}{{ strftime_now('%Y') }}{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}"
    out = ours.apply_chat_template([{"role": "user", "content": "é"}], chat_template=tmpl)
    assert out.startswith("<|begin_of_sentence|>20") and out.endswith('"é"')
    with pytest.raises(ErnieError, match="no system"):
        ours.apply_chat_template(MESSAGES, chat_template="{{ raise_exception('no system') }}")
    with pytest.raises(ErnieError, match="non-empty"):
        ours.apply_chat_template([])
    with pytest.raises(ErnieError, match="role"):
        ours.apply_chat_template([{"content": "x"}])
    with pytest.raises(ErnieError, match="syntax"):
        ours.apply_chat_template(MESSAGES, chat_template="{% for %}")


def test_streaming_splits_no_utf8_character(ours):
    text = "Unicorn 🦄 and dragon 🐉 and 🧪 中文"
    ids = ours.encode(text)
    pieces = ours.convert_ids_to_tokens(ids)
    assert sum(p.startswith("<0x") for p in pieces) >= 8, "the rare emoji must go through byte fallback"
    det = ours.detokenizer()
    deltas = [det.add(i) for i in ids] + [det.flush()]
    assert "".join(deltas) == det.text == ours.decode(ids, skip_special_tokens=True) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas.count("") >= 3, "bytes of an emoji must be held back until the character is complete"


def test_streaming_equals_full_decode_on_random_ids(ours):
    rng = random.Random(0)
    for trial in range(30):
        text = "".join(rng.choice(TEXTS[:5]) for _ in range(3))
        ids = ours.encode(text)
        skip = trial % 2 == 0
        det = IncrementalDetokenizer(ours, skip_special_tokens=skip)
        pos, out = 0, []
        while pos < len(ids):  # feed in chunks of 1..3 ids, as a batched decoder would
            step = rng.randint(1, 3)
            out.append(det.add(ids[pos:pos + step]))
            pos += step
        out.append(det.flush())
        assert "".join(out) == ours.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in d for d in out[:-1])


def test_incomplete_tail_is_flushed(ours):
    ids = ours.encode("ok 🦄")[:-1]  # drop the last byte of the emoji
    det = ours.detokenizer()
    streamed = "".join(det.add(i) for i in ids)
    assert streamed == "ok "
    assert streamed + det.flush() == ours.decode(ids) and ours.decode(ids).endswith("\ufffd")


@pytest.mark.parametrize("vocab", [512, 1024])
def test_demo_tokenizer_has_exact_vocab_and_matches_transformers(tmp_path, vocab):
    write_demo_tokenizer(tmp_path, vocab)
    ours = ErnieTokenizer.from_folder(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(ours) == len(hf) == vocab
    assert ours.bos_token_id == ours.cls_token_id == 1 and ours.eos_token_id == ours.sep_token_id == 2
    assert ours.token_to_id("<mask:7>") == vocab - 1
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == hf.encode(text) and max(ids, default=0) < vocab
        assert ours.decode(ids) == hf.decode(ids)
    assert ours.apply_chat_template(MESSAGES) == hf.apply_chat_template(MESSAGES, tokenize=False,
                                                                        add_generation_prompt=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        assert json.loads((tmp_path / name).read_text())


def test_demo_tokenizer_is_deterministic_and_checks_size(tmp_path):
    write_demo_tokenizer(tmp_path / "a", 700)
    write_demo_tokenizer(tmp_path / "b", 700)
    assert (tmp_path / "a/tokenizer.model").read_bytes() == (tmp_path / "b/tokenizer.model").read_bytes()
    with pytest.raises(ErnieError, match="vocab_size"):
        write_demo_tokenizer(tmp_path / "c", 100)


@pytest.fixture
def copy_of(release_dir, tmp_path):
    def make():
        for f in release_dir.iterdir():
            (tmp_path / f.name).write_bytes(f.read_bytes())
        return tmp_path
    return make


@pytest.mark.parametrize("name, content, needle", [
    ("tokenizer.model", b"not a protobuf at all", "tokenizer.model"),
    ("tokenizer.model", b"", "tokenizer.model"),
    ("tokenizer_config.json", b"{ broken", "tokenizer_config.json"),
    ("tokenizer_config.json", b"[1, 2]", "tokenizer_config.json"),
    ("tokenizer_config.json", b'{"added_tokens_decoder": {"x": 1}}', "tokenizer_config.json"),
    ("tokenizer_config.json", b'{"bos_token": 5}', "tokenizer_config.json"),
    ("special_tokens_map.json", b"\xff\xfe garbage", "special_tokens_map.json"),
    ("added_tokens.json", b'{"<x>": "seven"}', "added_tokens.json"),
    ("added_tokens.json", b'["<x>"]', "added_tokens.json"),
])
def test_bad_files_raise_ernie_error_naming_the_file(copy_of, name, content, needle):
    folder = copy_of()
    (folder / name).write_bytes(content)
    with pytest.raises(ErnieError) as info:
        ErnieTokenizer.from_folder(folder)
    assert needle in str(info.value)


def test_missing_files_raise_ernie_error(copy_of, tmp_path):
    with pytest.raises(ErnieError, match="does not exist"):
        ErnieTokenizer.from_folder(tmp_path / "nowhere")
    folder = copy_of()
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ErnieError, match="tokenizer.model"):
        ErnieTokenizer.from_folder(folder)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ErnieError, match="tokenizer.json"):
        ErnieTokenizer.from_folder(folder)
