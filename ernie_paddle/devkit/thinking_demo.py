"""A tiny ERNIE 4.5 Thinking-style model that answers its demo chats with reasoning, a tool call and text.

The weights are trained here in seconds (torch, fixed seed) to memorise ``DEMO_CHATS``: each chat's prompt,
rendered with the Thinking chat template, is followed by its known completion and ``<|im_end|>``. Training
stops once greedy decoding reproduces every completion with a clear logit margin, so the model's continuation
is known: the demo shows it parsed, and the tests use it as ground truth. Built once per folder (cached).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ernie_paddle.errors import ErnieError

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOL_RESULT = '{"city": "Paris", "temperature": 22, "sky": "sunny"}'
CALL_REASONING = "The user asks for the weather in Paris. I should call get_weather."
ANSWER_REASONING = "The tool says Paris is sunny and 22 degrees."
ANSWER = "It is sunny in Paris, 22 degrees."
GREETING = [{"role": "user", "content": "Hello! Who are you?"}]
GREET_REASONING = "A greeting. I will say who I am."
GREET_ANSWER = "Hello! I am a tiny ERNIE demo model."


def tool_round_messages(call_id: str = "call_demo", arguments_as_text: bool = True) -> list[dict]:
    """The question, the assistant's call and the tool's answer: OpenAI message shapes (arguments as JSON
    text), or as the chat template takes them (``arguments_as_text=False``: an object)."""
    args = json.dumps(CALL["arguments"]) if arguments_as_text else CALL["arguments"]
    call = {"id": call_id, "type": "function", "function": {"name": CALL["name"], "arguments": args}}
    return [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": TOOL_RESULT}]


def _answer(reasoning: str, answer: str) -> str:
    return f"{reasoning}\n</think>\n\n<response>\n{answer}\n</response>"


# (messages, tools, completion): what the model is trained to answer after each prompt.
DEMO_CHATS = [
    (QUESTION, [WEATHER_TOOL],
     f"{CALL_REASONING}\n</think>\n\n<tool_call>\n{json.dumps(CALL)}\n</tool_call>"),
    (tool_round_messages(arguments_as_text=False), [WEATHER_TOOL], _answer(ANSWER_REASONING, ANSWER)),
    (GREETING, None, _answer(GREET_REASONING, GREET_ANSWER)),
]
MODEL = dict(vocab_size=1024, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=24, max_position_embeddings=1024, tie_word_embeddings=True)
MARGIN = 3.0  # smallest logit lead of each target token over the runner-up when training stops


def _fingerprint(seed: int) -> str:
    data = json.dumps([DEMO_CHATS, MODEL, MARGIN, seed, 1], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def chat_texts(tokenizer) -> list[str]:
    """Each demo chat's rendered prompt followed by its completion."""
    return [tokenizer.apply_chat_template(m, tools=t) + c for m, t, c in DEMO_CHATS]


def training_rows(tokenizer) -> list[tuple[list[int], int]]:
    """(ids, prompt length) per demo chat: the rendered prompt, then the completion and ``<|im_end|>``."""
    end = tokenizer.token_to_id("<|im_end|>")
    rows = []
    for messages, tools, completion in DEMO_CHATS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=True, tools=tools)
        rows.append((prompt + tokenizer.encode(completion, add_special_tokens=False) + [end], len(prompt)))
    return rows


def _train(model, rows, max_steps: int = 600) -> int:
    import torch

    n = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for r, (row, start) in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, start:len(row)] = True  # positions whose token is learnt
    inputs, targets, learn = ids[:, :-1], ids[:, 1:], mask[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(1, max_steps + 1):
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits[learn], targets[learn])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                picked = logits[learn]
                gold = picked.gather(1, targets[learn][:, None])[:, 0]
                rival = picked.scatter(1, targets[learn][:, None], float("-inf")).max(1).values
                if bool((gold - rival > MARGIN).all()):
                    model.eval()
                    return step
    raise ErnieError(f"the thinking demo model did not learn its chats in {max_steps} steps")


def make_thinking_demo(folder, seed: int = 0) -> Path:
    """Write (or reuse) the trained demo checkpoint: HF layout, Thinking tokenizer and chat template."""
    folder = Path(folder)
    stamp = folder / "thinking_demo.json"
    key = _fingerprint(seed)
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == key:
        return folder
    import torch
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    from ernie_paddle.devkit.tokenizer_files import write_demo_tokenizer
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_demo_tokenizer(folder, MODEL["vocab_size"], seed=seed, thinking=True)
    lines = [line for text in chat_texts(ErnieTokenizer.from_folder(folder)) for line in text.split("\n") if line]
    # retrained with the chats' own lines, so that they take few tokens (a shorter, faster training)
    write_demo_tokenizer(folder, MODEL["vocab_size"], seed=seed, thinking=True, extra_lines=tuple(lines * 30))
    tok = ErnieTokenizer.from_folder(folder)
    torch.manual_seed(seed)
    model = Ernie4_5ForCausalLM(Ernie4_5Config(**MODEL, eos_token_id=tok.token_to_id("<|im_end|>")))
    steps = _train(model, training_rows(tok))
    model.save_pretrained(folder)
    stamp.write_text(json.dumps({"fingerprint": key, "steps": steps}) + "\n")
    return folder
