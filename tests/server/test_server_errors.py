"""Bad input gets an OpenAI-style error (never a 500) and the server keeps serving."""

import httpx
import openai
import pytest
from server_env import ADMIN_KEY, MODEL_NAME, USER_KEYS

AUTH = {"Authorization": f"Bearer {USER_KEYS[0]}"}
GOOD_CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
LONG = "数据 模型 hello " * 1200  # well over the 4096-token context

CASES = [
    ("malformed json", "/v1/chat/completions", b'{"model": "ernie-tiny", "messages": [', 400, "invalid_json"),
    ("json not an object", "/v1/chat/completions", b"[1, 2, 3]", 400, "invalid_value"),
    ("wrong type temperature", "/v1/chat/completions", {**GOOD_CHAT, "temperature": "hot"}, 400, "invalid_value"),
    ("wrong type messages", "/v1/chat/completions", {**GOOD_CHAT, "messages": "hello"}, 400, "invalid_value"),
    ("wrong type max_tokens", "/v1/chat/completions", {**GOOD_CHAT, "max_tokens": "ten"}, 400, "invalid_value"),
    ("message without role", "/v1/chat/completions", {**GOOD_CHAT, "messages": [{"content": "x"}]}, 400, "invalid_value"),
    ("top_p out of range", "/v1/chat/completions", {**GOOD_CHAT, "top_p": 1.5}, 400, "invalid_value"),
    ("missing model", "/v1/chat/completions", {"messages": GOOD_CHAT["messages"]}, 400, "invalid_value"),
    ("unknown model", "/v1/chat/completions", {**GOOD_CHAT, "model": "gpt-17"}, 404, "model_not_found"),
    ("max_tokens over limit", "/v1/chat/completions", {**GOOD_CHAT, "max_tokens": 100000}, 400,
     "max_tokens_too_large"),
    ("prompt over context", "/v1/chat/completions",
     {**GOOD_CHAT, "messages": [{"role": "user", "content": LONG}]}, 413, "context_length_exceeded"),
    ("prompt + max_tokens over context", "/v1/completions",
     {"model": MODEL_NAME, "prompt": [5] * 3000, "max_tokens": 2000}, 400, "context_length_exceeded"),
    ("empty messages", "/v1/chat/completions", {**GOOD_CHAT, "messages": []}, 400, "empty_messages"),
    ("empty prompt", "/v1/completions", {"model": MODEL_NAME, "prompt": ""}, 400, "empty_prompt"),
    ("token id out of vocab", "/v1/completions", {"model": MODEL_NAME, "prompt": [5, 99999]}, 400, None),
    ("unknown route", "/v1/embeddings", {"model": MODEL_NAME, "input": "x"}, 404, None),
]


def _good_request_still_works(server):
    c = openai.OpenAI(base_url=server.base + "/v1", api_key=USER_KEYS[0], max_retries=0, timeout=60)
    r = c.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "ok?"}], max_tokens=2)
    assert r.usage.completion_tokens >= 1


@pytest.mark.parametrize("name, path, body, status, code", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_openai_error_then_server_still_serves(server, name, path, body, status, code):
    kwargs = {"content": body, "headers": {**AUTH, "Content-Type": "application/json"}} \
        if isinstance(body, bytes) else {"json": body, "headers": AUTH}
    r = httpx.post(server.base + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err
    if code:
        assert err["code"] == code
    _good_request_still_works(server)


def test_openai_client_sees_typed_errors(server, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=[], max_tokens=2)
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=MODEL_NAME, prompt=LONG, max_tokens=2)
    assert info.value.status_code == 413
    _good_request_still_works(server)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}])
def test_keys_are_required_except_for_health(server, headers):
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("GET", "/v1/usage"), ("GET", "/admin/usage")):
        r = httpx.request(method, server.base + path, headers=headers, json=GOOD_CHAT)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.base + "/health", headers=headers).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    _good_request_still_works(server)


def test_admin_route_needs_an_admin_key(server):
    r = httpx.get(server.base + "/admin/usage", headers=AUTH)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = httpx.get(server.base + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200


def test_no_500_in_metrics(server):
    text = httpx.get(server.base + "/metrics", headers=AUTH).text
    assert 'status="500"' not in text
    assert 'status="422"' not in text  # schema errors are 400, as in the OpenAI API
    assert 'status="400"' in text and 'status="401"' in text
