"""``ernie-paddle chat``: an interactive multi-turn chat in the terminal, streamed token by token."""

import sys

import click

COMMANDS = []


def _ask(prompt: str) -> str | None:
    click.echo(prompt, nl=False)
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--system", default=None, help="System message for the conversation.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(1), help="Per reply.")
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0), help="0 is greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=None, type=int, help="Seed for sampling.")
@click.option("--device", default=None, help="cpu, gpu or gpu:N.")
def chat(model, system, max_tokens, temperature, top_p, seed, device):
    """Chat with MODEL; '/reset' starts over, '/exit' or end of input quits."""
    import numpy as np

    from ernie_paddle.api import load
    from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

    tokenizer = ErnieTokenizer.from_folder(model)
    runtime = load(model, device=device)
    stops = set(tokenizer.stop_token_ids)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    sampling = {"temperature": temperature, "top_p": top_p, "seed": seed} if temperature > 0 else {}
    while (line := _ask("> ")) is not None:
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = list(start)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        detok = tokenizer.detokenizer()
        for step in runtime.stream(np.array([ids], dtype=np.int64), max_new_tokens=max_tokens,
                                   stop_token_ids=sorted(stops), **sampling):
            token = int(step[0])
            if token in stops:
                break
            click.echo(detok.add(token), nl=False)
        click.echo(detok.flush())
        history.append({"role": "assistant", "content": detok.text})


COMMANDS.append(chat)
