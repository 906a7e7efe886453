"""Sampling controls over real HTTP (penalties, logit_bias, min_p, the checkpoint's repetition_penalty),
honest errors (not-implemented fields named, ``null`` means default, 400 with the OpenAI body) and the
seed's ``POST /generate`` route."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from server_env import MODEL_NAME, USER_KEYS, running_server

from ernie_paddle.server.request_bodies import NOT_IMPLEMENTED

AUTH = {"Authorization": f"Bearer {USER_KEYS[1]}"}
PROMPT = [5, 17, 300, 42, 9]
CHAT = [{"role": "user", "content": "tell me something"}]


def _reference(runtime, prompt, n, frequency=0.0, presence=0.0, repetition=1.0, bias=None):
    """Greedy tokens from teacher-forced full-forward logits with each control applied by its definition:
    HF repetition penalty over prompt + output, OpenAI ``-= frequency * count + presence * (count > 0)`` over
    the output, ``logit_bias`` added."""
    seq, out = list(prompt), []
    for _ in range(n):
        x = runtime.logits(np.array([seq]))[0, -1].astype(np.float64)
        for t in set(seq):
            x[t] = x[t] / repetition if x[t] > 0 else x[t] * repetition
        for t in set(out):
            x[t] -= frequency * out.count(t) + presence
        for t, b in (bias or {}).items():
            x[int(t)] += b
        out.append(int(x.argmax()))
        seq.append(out[-1])
    return out


def _complete(client, prompt=PROMPT, n=12, **controls):
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=n, temperature=0,
                                  extra_body={"ignore_eos": True, "return_token_ids": True, **controls})
    return r.choices[0].model_extra["token_ids"]


CONTROLS = [
    {"frequency_penalty": 1.5},
    {"presence_penalty": 2.0},
    {"repetition_penalty": 3.0},
    {"frequency_penalty": 0.8, "presence_penalty": 0.4, "logit_bias": {"640": 7.5, "17": -100}},
]


@pytest.mark.parametrize("controls", CONTROLS, ids=lambda c: "+".join(c))
def test_controls_match_their_definitions(client, api, controls):
    runtime, _ = api
    plain = _complete(client)
    got = _complete(client, **controls)
    want = _reference(runtime, PROMPT, 12, controls.get("frequency_penalty", 0.0),
                      controls.get("presence_penalty", 0.0), controls.get("repetition_penalty", 1.0),
                      controls.get("logit_bias"))
    assert got == want
    assert got != plain  # the control changed the answer


def test_penalised_and_plain_requests_in_one_batch(client, api):
    """Plain greedy rows take the vectorised argmax; penalised rows beside them still get their penalties."""
    runtime, _ = api
    controls = {"frequency_penalty": 1.0, "logit_bias": {"640": 5.0}}
    jobs = [{} if i % 2 else controls for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: _complete(client, n=16, **c), jobs))
    want_plain = _reference(runtime, PROMPT, 16)
    want_penalised = _reference(runtime, PROMPT, 16, frequency=1.0, bias=controls["logit_bias"])
    assert want_plain != want_penalised
    assert got == [want_plain if i % 2 else want_penalised for i in range(8)]


def test_logit_bias_in_chat_and_min_p_one_is_greedy(client):
    banned = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6, temperature=0,
                                            extra_body={"return_token_ids": True, "ignore_eos": True})
    first = banned.choices[0].model_extra["token_ids"]
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6, temperature=0,
                                       logit_bias={str(t): -100 for t in set(first)},
                                       extra_body={"return_token_ids": True, "ignore_eos": True})
    assert not set(r.choices[0].model_extra["token_ids"]) & set(first)
    sampled = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=6, temperature=1.8,
                                             seed=11, extra_body={"min_p": 1.0, "return_token_ids": True,
                                                                  "ignore_eos": True})
    assert sampled.choices[0].model_extra["token_ids"] == first  # only the top token survives min_p=1


# One value per not-implemented field that asks for something this server cannot do.
ASKING = {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
          "prediction": {"type": "content", "content": "x"}, "functions": [{"name": "f", "parameters": {}}],
          "function_call": "auto", "web_search_options": {}, "reasoning_effort": "low", "verbosity": "low",
          "store": True, "suffix": "the end", "best_of": 3}


def test_every_not_implemented_field_is_refused_by_name(server):
    assert set(ASKING) == set(NOT_IMPLEMENTED)
    for route, base in (("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {"prompt": "hi"})):
        for name, value in ASKING.items():
            r = httpx.post(server.base + route, headers=AUTH, timeout=60,
                           json={"model": MODEL_NAME, "max_tokens": 2, **base, name: value})
            assert r.status_code == 400, (route, name, r.text)
            err = r.json()["error"]
            assert err["param"] == name and name in err["message"] and err["code"] == "not_implemented"
            assert err["type"] == "invalid_request_error"
        harmless = {name: allowed[0] for name, allowed in NOT_IMPLEMENTED.items() if allowed}
        r = httpx.post(server.base + route, headers=AUTH, timeout=60,
                       json={"model": MODEL_NAME, "max_tokens": 2, **base, **harmless, "audio": None,
                             "some_vendor_extra": {"x": 1}})
        assert r.status_code == 200, r.text


def test_null_means_default(server):
    nulls = {"n": None, "stream": None, "stream_options": None, "temperature": None, "top_p": None,
             "stop": None, "seed": None, "min_tokens": None, "ignore_eos": None, "return_token_ids": None,
             "user": None, "frequency_penalty": None, "presence_penalty": None, "logit_bias": None,
             "min_p": None, "repetition_penalty": None, "max_tokens": None}
    chat = httpx.post(server.base + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "x", "name": None}],
                            **nulls, "max_completion_tokens": 3, "logprobs": None, "top_logprobs": None})
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert len(body["choices"]) == 1 and body["choices"][0]["logprobs"] is None
    done = httpx.post(server.base + "/v1/completions", headers=AUTH, timeout=60,
                      json={"model": MODEL_NAME, "prompt": "x", **nulls, "logprobs": None, "echo": None})
    assert done.status_code == 200, done.text
    assert done.json()["usage"]["completion_tokens"] <= 16  # null max_tokens: the completions default


@pytest.mark.parametrize("field, value", [
    ("frequency_penalty", 2.5), ("presence_penalty", -3), ("repetition_penalty", 0), ("min_p", 1.5),
    ("logit_bias", {"5": 101}), ("logit_bias", {"word": 1}), ("logit_bias", {"99999": 1}), ("n", "two"),
])
def test_bad_values_get_400_with_the_openai_body(server, client, field, value):
    r = httpx.post(server.base + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"model": MODEL_NAME, "messages": CHAT, "max_tokens": 2, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"].split(".")[0] == field and err["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=2, extra_body={field: value})


def test_generate_route_answers_the_seed_body(server, reference, api):
    _, tok = api
    prompt = "hello world"
    before = httpx.get(server.base + "/v1/usage", headers=AUTH, timeout=30).json()
    r = httpx.post(server.base + "/generate", headers=AUTH, timeout=60,
                   json={"prompt": prompt, "max_length": 7, "temperature": 0.3, "top_p": 0.5, "do_sample": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"generated_text", "model_name", "parameters_used"}
    assert body["model_name"] == MODEL_NAME
    assert body["parameters_used"] == {"max_length": 7, "temperature": 0.0, "top_p": 0.5, "do_sample": False}
    ids = tok.encode(prompt, add_special_tokens=False)
    new, text = reference(ids, 7)
    assert body["generated_text"] == text
    after = httpx.get(server.base + "/v1/usage", headers=AUTH, timeout=30).json()
    assert after["requests"] == before["requests"] + 1
    assert after["prompt_tokens"] - before["prompt_tokens"] == len(ids)
    assert after["completion_tokens"] - before["completion_tokens"] == len(new)
    sampled = httpx.post(server.base + "/generate", headers=AUTH, timeout=60, json={"prompt": prompt}).json()
    assert sampled["parameters_used"] == {"max_length": 100, "temperature": 0.7, "top_p": 0.9, "do_sample": True}
    assert httpx.post(server.base + "/generate", json={"prompt": prompt}, timeout=30).status_code == 401
    bad = httpx.post(server.base + "/generate", headers=AUTH, timeout=30, json={"prompt": prompt, "top_p": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"


@pytest.fixture(scope="module")
def penalised_server(model_dir, tmp_path_factory):
    """A server over a copy of the tiny model whose generation_config.json sets repetition_penalty."""
    root = tmp_path_factory.mktemp("genconfig-server")
    folder = root / "ernie-tiny-rep"
    shutil.copytree(model_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 2.5}))
    with running_server(folder, root) as proc:
        yield proc


def test_checkpoint_repetition_penalty_applies_unless_the_request_sets_one(penalised_server, api):
    runtime, _ = api
    c = openai.OpenAI(base_url=penalised_server.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)
    default = _complete(c)
    assert default == _reference(runtime, PROMPT, 12, repetition=2.5)
    assert _complete(c, repetition_penalty=1.0) == _reference(runtime, PROMPT, 12)
    assert default != _reference(runtime, PROMPT, 12)
