"""The built-in ERNIE 4.5 Thinking chat template: turn structure, think mode, tools and tool history; when the
tokenizer uses it; VL thinking switches."""

import json

import pytest

from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
from ernie_paddle.tokenizer.chat_template import render_chat
from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer
from ernie_paddle.tokenizer.thinking_template import THINKING_CHAT_TEMPLATE
from ernie_paddle.tokenizer.vl_prompt import VL_CHAT_TEMPLATE

TOOL = {"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                         "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}


@pytest.fixture(scope="module")
def thinking_folder(tmp_path_factory):
    return write_demo_tokenizer(tmp_path_factory.mktemp("thinking-tok"), 1024, thinking=True)


def test_turns_and_think_mode(thinking_folder):
    tok = ErnieTokenizer.from_folder(thinking_folder)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(chat)
    assert text == ("<|im_start|>system\nBe brief.\n<global_setting>\nthink_mode=True\n</global_setting>"
                    "<|im_end|>\n\n<|im_start|>user\nHi<|im_end|>\n\n<|im_start|>assistant\n<think>\n")
    off = tok.apply_chat_template(chat, enable_thinking=False)
    assert "think_mode=False" in off and off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.apply_chat_template(chat, think_mode=False) == off
    assert not tok.apply_chat_template(chat, add_generation_prompt=False).endswith("assistant\n<think>\n")


def test_tools_and_tool_history(thinking_folder):
    tok = ErnieTokenizer.from_folder(thinking_folder)
    chat = [{"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"},
            {"role": "assistant", "content": "It is 3."}]
    text = tok.apply_chat_template(chat, tools=[TOOL], add_generation_prompt=False)
    assert "<tool_list>\n" + json.dumps(TOOL["function"], ensure_ascii=False) + "\n</tool_list>" in text
    assert ("<|im_start|>assistant\n<tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})
            + "\n</tool_call><|im_end|>") in text
    assert "<|im_start|>tool\n<tool_output>\n3\n</tool_output><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n<response>\nIt is 3.\n</response><|im_end|>\n\n")
    assert "<tool_list>" not in tok.apply_chat_template(chat)


def test_markers_are_single_tokens_kept_in_text_and_im_end_stops(thinking_folder):
    tok = ErnieTokenizer.from_folder(thinking_folder)
    ids = tok.encode("<think>\nx\n</think>\n\n<response>\ny\n</response>", add_special_tokens=False)
    assert tok.token_to_id("<think>") in ids and tok.token_to_id("</response>") in ids
    assert tok.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\n\n<response>\ny\n</response>"
    assert tok.token_to_id("<|im_end|>") in tok.stop_token_ids


def _config(folder):
    return json.loads((folder / "tokenizer_config.json").read_text())


def _write_config(folder, config):
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_when_the_builtin_template_is_used(thinking_folder, tmp_path):
    import shutil

    folder = shutil.copytree(thinking_folder, tmp_path / "tok")
    config = _config(folder)
    config["chat_template"] = "ernie-4.5-thinking"  # a name asks for the built-in template
    _write_config(folder, config)
    assert ErnieTokenizer.from_folder(folder).chat_template == THINKING_CHAT_TEMPLATE
    del config["chat_template"]  # no template, but the Thinking vocabulary
    _write_config(folder, config)
    assert ErnieTokenizer.from_folder(folder).chat_template == THINKING_CHAT_TEMPLATE
    (folder / "chat_template.jinja").write_text("{{ messages[0].content }}!")  # the checkpoint's own wins
    tok = ErnieTokenizer.from_folder(folder)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "x!"
    plain = write_demo_tokenizer(tmp_path / "plain", 1024)  # a plain ERNIE vocabulary keeps its template
    assert ErnieTokenizer.from_folder(plain).chat_template != THINKING_CHAT_TEMPLATE


@pytest.mark.parametrize("variables, thinking", [
    ({}, False), ({"enable_thinking": True}, True), ({"options": {"thinking_mode": "open"}}, True),
    ({"options": {"thinking_mode": "close"}}, False), ({"options": {}}, False),
])
def test_vl_thinking_switches(variables, thinking):
    text = render_chat(VL_CHAT_TEMPLATE, [{"role": "user", "content": "hi"}], **variables)
    assert text.endswith("Assistant: <think>") == thinking
    assert text.endswith("</think>\n\n") == (not thinking)
