"""``--tp N`` for the commands that run the model: start or join a paddle.distributed job.

Outside a launched job, ``--tp N`` (N > 1) re-runs the same command line under
``python -m paddle.distributed.launch --nproc_per_node N/nnodes`` (``--nnodes``/``--master`` for several
hosts: run the same command on every host); inside one, the command loads its rank's part of the model.
"""

from __future__ import annotations

from pathlib import Path

import click

from ernie_paddle.errors import ErnieError

RANK_WORKER = Path(__file__).with_name("rank_worker.py")  # run as a script by every rank, never imported


def tp_options(f):
    """Add --tp, --moe-parallel, --nnodes and --master to a command."""
    f = click.option("--master", default=None, metavar="HOST:PORT",
                     help="With --nnodes > 1: address of the job's master (the same on every host).")(f)
    f = click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Hosts taking part with --tp; run the same command on each of them.")(f)
    f = click.option("--moe-parallel", type=click.Choice(["tp", "ep"]), default="tp", show_default=True,
                     help="With --tp: cut every expert across ranks (tp) or give ranks whole experts (ep).")(f)
    return click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Tensor-parallel ranks (one process each, paddle.distributed).")(f)


def _command_line(ctx: click.Context) -> list[str]:
    """The command line that produced ``ctx`` (its command name, arguments and non-default options)."""
    argv = [ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            argv += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            continue
        if value is None or value == param.get_default(ctx) or value == ():
            continue
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            argv += [opt] if value else param.secondary_opts[:1]
        elif getattr(param, "multiple", False):
            for v in value:
                argv += [opt, str(v)]
        else:
            argv += [opt, str(value)]
    return argv


def run_distributed(tp: int, nnodes: int, master: str | None) -> bool:
    """True when this process should load a tensor-parallel model; re-launches (and exits) when needed.

    The engine rules (``--tp`` runs on dygraph) are ``ernie_paddle.api.choose_engine``'s, asked before this.
    """
    from ernie_paddle.runtime.distributed.runinfo import launched_world

    if tp == 1:
        return False
    rank, world = launched_world()
    if world > 1:
        if world != tp:
            raise ErnieError(f"--tp {tp} given inside a paddle.distributed job of {world} processes")
        return True
    if tp % nnodes:
        raise click.UsageError(f"--tp {tp} does not split evenly over --nnodes {nnodes}")
    if nnodes > 1 and not master:
        raise click.UsageError("--nnodes > 1 needs --master HOST:PORT (the same on every host)")
    model = click.get_current_context().params.get("model")
    if model is not None:  # a bad folder is refused once, here, before any rank starts
        from converters.tp_split import MANIFEST
        from ernie_paddle.io.checkpoint import open_checkpoint

        if not (Path(model) / MANIFEST).is_file():
            open_checkpoint(model)
    from ernie_paddle.runtime.distributed.launcher import relaunch

    code = relaunch(RANK_WORKER, _command_line(click.get_current_context()), tp // nnodes, nnodes, master)
    raise click.exceptions.Exit(code)
