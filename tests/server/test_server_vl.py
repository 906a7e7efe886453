"""ERNIE 4.5 VL behind the server: image_url parts (data: URL, local path) give the runtime's greedy tokens."""

import base64
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from server_env import ADMIN_KEY, MODEL_NAME, USER_KEYS, ServerProcess

GREEDY = dict(max_tokens=8, temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})


def _image(seed, h, w):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    """(server, runtime in this process, messages with a data: URL image and a local-path image)."""
    from ernie_paddle.devkit.vl_demo import make_tiny_vl_checkpoint
    from ernie_paddle.runtime.vl import load_vl

    root = tmp_path_factory.mktemp("vl-server")
    folder = make_tiny_vl_checkpoint(root / "ernie-vl-tiny")
    _image(1, 56, 56).save(root / "a.png")
    _image(2, 84, 112).save(root / "b.png")
    data_url = "data:image/png;base64," + base64.b64encode((root / "a.png").read_bytes()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": str(root / "b.png")}},
        {"type": "text", "text": "and this."}]}]
    (root / "keys.txt").write_text("\n".join(USER_KEYS) + "\n")
    (root / "admin.txt").write_text(ADMIN_KEY + "\n")
    (root / "images").mkdir()
    (root / "b.png").rename(root / "images" / "b.png")
    messages[0]["content"][2]["image_url"]["url"] = str(root / "images" / "b.png")
    proc = ServerProcess(folder, root / "data", root / "keys.txt", root / "admin.txt", root / "server.log",
                         extra_args=("--image-dir", str(root / "images")))
    proc.start()
    yield proc, load_vl(folder, device="cpu"), messages
    proc.stop()


@pytest.fixture
def vl_client(vl):
    return openai.OpenAI(base_url=vl[0].base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=120)


def _greedy(runtime, messages, n=8):
    inputs = runtime.inputs(messages=messages)
    new = runtime.generate(inputs, max_new_tokens=n, stop_token_ids=[])[0, inputs.input_ids.shape[1]:].tolist()
    return inputs, new, runtime.tokenizer.decode(new, skip_special_tokens=True)


def test_two_images_give_the_runtime_greedy_tokens(vl, vl_client):
    _, runtime, messages = vl
    inputs, want, text = _greedy(runtime, messages)
    assert inputs.image_grid_thw.tolist() == [[1, 4, 4], [1, 6, 8]]  # both images made it into the prompt
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, **GREEDY)
    assert r.choices[0].model_extra["token_ids"] == want and len(want) == 8
    assert r.choices[0].message.content == text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == inputs.input_ids.shape[1] and r.usage.completion_tokens == 8
    stream = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, stream=True,
                                               stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    ids = [t for c in chunks for ch in c.choices for t in ch.model_extra.get("token_ids") or []]
    assert ids == want and chunks[-1].usage.completion_tokens == 8
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == text


def test_text_only_chat_on_a_vl_model(vl, vl_client):
    _, runtime, _ = vl
    messages = [{"role": "user", "content": "hello there"}]
    _, want, text = _greedy(runtime, messages)
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, **GREEDY)
    assert r.choices[0].model_extra["token_ids"] == want and r.choices[0].message.content == text
    ids = runtime.inputs(messages=messages).input_ids[0].tolist()  # the legacy route with prompt token ids
    c = vl_client.completions.create(model=MODEL_NAME, prompt=ids, **GREEDY)
    assert c.choices[0].model_extra["token_ids"] == want


def test_stop_string_cuts_a_vl_answer(vl, vl_client):
    _, runtime, messages = vl
    _, _, text = _greedy(runtime, messages, 16)
    i = next((k for k in range(1, len(text) - 1) if text.find(text[k:k + 2]) == k and text[k:k + 2].strip()),
             None)
    if i is None:
        pytest.skip("the greedy text has no usable stop string")
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0,
                                          stop=[text[i:i + 2]], extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == text[:i] and r.choices[0].finish_reason == "stop"


def test_http_image_is_refused_and_the_server_keeps_serving(vl, vl_client, tmp_path):
    _, _, messages = vl
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                         {"type": "text", "text": "?"}]}]
    with pytest.raises(openai.BadRequestError) as err:
        vl_client.chat.completions.create(model=MODEL_NAME, messages=bad, max_tokens=2)
    assert err.value.body["code"] == "image_url_not_allowed" and "network" in err.value.body["message"]
    image_dir = Path(messages[0]["content"][2]["image_url"]["url"]).parent
    (image_dir / "junk.png").write_bytes(b"not a png")
    junk = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(image_dir / "junk.png")}}]}]
    with pytest.raises(openai.BadRequestError, match="not an image"):
        vl_client.chat.completions.create(model=MODEL_NAME, messages=junk, max_tokens=2)
    (tmp_path / "outside.png").write_bytes((image_dir / "b.png").read_bytes())
    outside = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "outside.png")}}]}]
    with pytest.raises(openai.BadRequestError, match="--image-dir") as err:
        vl_client.chat.completions.create(model=MODEL_NAME, messages=outside, max_tokens=2)
    assert err.value.body["code"] == "image_url_not_allowed"
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=2, temperature=0)
    assert r.usage.completion_tokens >= 1


def test_logprobs_and_penalties_on_a_vl_model(vl, vl_client):
    """VL answers carry the runtime's own log-probabilities; penalties reach the VL runtime's sampler."""
    _, runtime, messages = vl
    inputs = runtime.inputs(messages=messages)
    steps = list(runtime.stream(inputs, max_new_tokens=4, stop_token_ids=[], output_logits=True))
    vocab = len(runtime.tokenizer)
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, logprobs=True, top_logprobs=2,
                                          **{**GREEDY, "max_tokens": 4})
    entries = r.choices[0].logprobs.content
    assert r.choices[0].model_extra["token_ids"] == [int(ids[0]) for ids, _ in steps]
    for entry, (ids, logits) in zip(entries, steps, strict=True):
        x = logits[0, :vocab].astype(np.float64)
        lsm = x - x.max() - np.log(np.exp(x - x.max()).sum())
        assert abs(entry.logprob - lsm[int(ids[0])]) < 1e-4 and len(entry.top_logprobs) == 2
    want = runtime.generate(inputs, max_new_tokens=8, stop_token_ids=[], frequency_penalty=2.0,
                            presence_penalty=1.0)[0, inputs.input_ids.shape[1]:].tolist()
    r = vl_client.chat.completions.create(model=MODEL_NAME, messages=messages, frequency_penalty=2.0,
                                          presence_penalty=1.0, **GREEDY)
    assert r.choices[0].model_extra["token_ids"] == want


def test_image_parts_to_a_text_model_are_refused(client):
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": parts}],
                                       max_tokens=2)
    assert err.value.body["code"] == "images_not_supported" and "text-only" in err.value.body["message"]
    ok = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": parts[:1]}],
                                        max_tokens=2)
    assert ok.usage.completion_tokens >= 1
