"""``ernie-paddle serve``: the OpenAI-compatible HTTP server."""

import click

from ernie_paddle.cli._common import mmap_options
from ernie_paddle.cli._tp import run_distributed, tp_options

COMMANDS = []


@click.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--api-keys-file", type=click.Path(path_type=str), default=None,
              help="Bearer keys, one per line ('#' comments); when given, every route but /health needs one.")
@click.option("--admin-keys-file", type=click.Path(path_type=str), default=None,
              help="Keys that may also read everyone's usage at /admin/usage.")
@click.option("--data-dir", type=click.Path(path_type=str), default=None,
              help="Where the usage database lives (default: $ERNIE_PADDLE_HOME/server).")
@click.option("--model-name", default=None, help="Model id clients send (default: the folder name).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Most sequences decoded together.")
@click.option("--max-tokens-limit", default=4096, show_default=True, type=click.IntRange(1),
              help="Largest max_tokens a request may ask for.")
@click.option("--device", default=None, help="cpu, gpu or gpu:N (default: GPU when present).")
@click.option("--threads", type=int, default=None, help="CPU threads for Paddle.")
@click.option("--engine", type=click.Choice(["auto", "predictor", "dygraph"]), default="auto", show_default=True,
              help="predictor: exported Paddle Inference program (auto: wherever the model supports it).")
@click.option("--speculative", type=click.Choice(["mtp"]), default=None,
              help="Draft tokens with the checkpoint's MTP layer and verify them in one forward (same output "
                   "law). Requests then run one at a time on the dygraph engine: no continuous batching.")
@click.option("--num-draft", default=1, show_default=True, type=click.IntRange(1),
              help="Tokens drafted per step with --speculative.")
@click.option("--image-dir", type=click.Path(exists=True, file_okay=False, path_type=str), default=None,
              help="VL models: image_url parts may name local files under this folder (otherwise only "
                   "data: URLs are accepted).")
@click.option("--reasoning-parser", type=click.Choice(["auto", "ernie", "none"]), default="auto",
              show_default=True,
              help="Split chat output into reasoning_content, content and tool_calls (ERNIE </think>, "
                   "<response>, <tool_call>). auto: with an ERNIE thinking/tool chat template, or when a "
                   "request sends tools or turns thinking on.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@mmap_options
@tp_options
def serve(model, host, port, api_keys_file, admin_keys_file, data_dir, model_name, max_batch, max_tokens_limit,
          device, threads, log_level, engine, speculative, num_draft, image_dir, reasoning_parser, tp, moe_parallel,
          nnodes, master, mmap=None, offload_folder=None):
    """Serve MODEL at /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics.

    An ERNIE 4.5 VL model takes image_url content parts (data: URLs, or local files under --image-dir;
    never fetched from the network) and serves requests one at a time (no continuous batching).
    With --tp N, rank 0 serves HTTP and the other ranks run each batched step with it.
    """
    from pathlib import Path

    from ernie_paddle.api import choose_engine
    from ernie_paddle.errors import ErnieError
    from ernie_paddle.server import Settings, run_server

    if not Path(model).is_dir():
        raise ErnieError("model folder does not exist", model)
    engine = choose_engine(model, engine, speculative=speculative, tp=tp,
                           mapped=bool(mmap) or offload_folder is not None)
    if speculative and tp > 1:
        raise click.UsageError("--speculative serves one sequence at a time on one process; it does not "
                               "combine with --tp")
    settings = Settings(model_path=model, model_name=model_name, max_tokens_limit=max_tokens_limit,
                        max_batch=max_batch, data_dir=data_dir, api_keys_file=api_keys_file,
                        admin_keys_file=admin_keys_file, device=device, num_threads=threads,
                        engine=engine, speculative=speculative, num_draft=num_draft, image_dir=image_dir,
                        reasoning_parser=reasoning_parser, mmap=mmap, offload_folder=offload_folder)
    if run_distributed(tp, nnodes, master):
        from ernie_paddle.server.tp import serve_tp

        serve_tp(settings, moe_parallel, host=host, port=port, log_level=log_level)
        return
    run_server(settings, host=host, port=port, log_level=log_level)


COMMANDS.append(serve)
