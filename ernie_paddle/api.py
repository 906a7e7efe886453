"""The front door: ``load`` (the only dispatcher over formats, families, engines, quantization and tensor
parallelism) and ``choose_engine`` (the only place that decides which engine runs a folder).

Every folder loads to a ``runtime.protocols.Model``: ``config``, ``logits(ids)``, ``generate``, ``stream``
and ``close``. CPU computes in float32 (Paddle has no CPU bf16 kernels); GPU defaults to bfloat16.
"""

from __future__ import annotations

from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.runtime.distributed.rank_runtime import load as load_rank
from ernie_paddle.runtime.distributed.runinfo import launched_world
from ernie_paddle.runtime.predictor.runtime import load_predictor
from ernie_paddle.runtime.predictor.support import resolve_engine
from ernie_paddle.runtime.protocols import Model
from ernie_paddle.runtime.setup import setup
from ernie_paddle.runtime.text import text_runtime
from ernie_paddle.runtime.vl import vl_runtime


def choose_engine(path, engine: str | None = None, quantization: str | None = None,
                  speculative: str | None = None, tp: int = 1, device: str | None = None,
                  mapped: bool = False) -> str:
    """"predictor" or "dygraph" for the folder ``path`` and the options of a load or a command.

    Speculative decoding and tensor parallelism run on the dygraph engine (asking for the predictor with
    either is an ErnieError); otherwise ``predictor.support.resolve_engine`` decides (None:
    ``$ERNIE_PADDLE_ENGINE``, else the predictor for an export folder and dygraph for a checkpoint; "auto":
    the predictor wherever it supports the model, quantized ones (``quantization``) where the export keeps
    them compact: the compiled CPU operators on a CPU ``device``). ``mapped`` (``--mmap``,
    ``--offload-folder``): weights mapped from an export, which only the predictor does.
    """
    if mapped:
        if engine is not None and str(engine).strip().lower() == "dygraph":
            raise ErnieError("--mmap / --offload-folder map the weights of an export: they run on the predictor "
                             "engine, not --engine dygraph")
        engine = "predictor"
    needs_dygraph = [what for what, wanted in (("speculative decoding (--speculative)", speculative),
                                               ("tensor parallelism (--tp)", tp > 1)) if wanted]
    if not needs_dygraph:
        return resolve_engine(path, engine, quantization, device)
    if engine is not None and str(engine).strip().lower() == "predictor":
        raise ErnieError(f"{needs_dygraph[0]} runs on the dygraph engine, not --engine predictor")
    return resolve_engine(path, "dygraph")


def load(path, dtype: str | None = None, device: str | None = None, num_threads: int | None = None,
         engine: str | None = None, quantization: str | None = None, tp: int = 1, moe: str = "tp",
         activations: str | None = None, mmap: bool | None = None, offload_folder=None, **kwargs) -> Model:
    """Load a Paddle, HF or export folder of an ERNIE 4.5 text or VL model.

    ``engine``: "dygraph", "predictor" (Paddle Inference; a checkpoint is exported into the cache on first
    use) or "auto"; see ``choose_engine``. ``quantization``: "wint8", "wint4" or "fp8" quantizes the
    linears on load (either engine); a checkpoint whose config.json has a ``quantization_config`` loads
    quantized without it. ``tp`` > 1: this rank's part of the model inside a paddle.distributed job of ``tp``
    processes (``moe``: "tp" cuts every expert, "ep" gives ranks whole experts). ``activations``: of the
    predictor's wint8/wint4 linears, "auto" (the default: int8 on CPU), "float32" (exact, as the dygraph
    engine) or "int8" (integer dot products; see ``export``).
    ``mmap``: the predictor maps the export's weights instead of reading them (True), reads them (False), or
    maps them when they do not fit in memory (None); ``offload_folder``: export a checkpoint into that folder
    and serve it mapped (the predictor engine). Mapped weights give the same logits as resident ones.
    """
    if kwargs:
        raise TypeError(f"unknown load option(s): {sorted(kwargs)}")
    mapped = bool(mmap) or offload_folder is not None
    if choose_engine(path, engine, quantization, tp=tp, device=device, mapped=mapped) == "predictor":
        return load_predictor(path, dtype=dtype, device=device, num_threads=num_threads, quantization=quantization,
                              activations=activations, mmap=mmap, offload_folder=offload_folder)
    if activations not in (None, "auto", "float32"):
        raise ErnieError(f"activations={activations!r} runs on the predictor engine; the dygraph engine computes "
                         "quantized linears on float32 activations")
    if tp > 1:
        world = launched_world()[1]
        if world != tp:
            raise ErnieError(f"tp={tp} loads one rank's part inside a paddle.distributed job of {tp} processes; "
                             f"this process is in a job of {world}")
        return load_rank(path, moe=moe, dtype=dtype, device=device, num_threads=num_threads,
                         quantization=quantization)
    place = setup(device, dtype, num_threads)
    ckpt = open_checkpoint(path)
    if ckpt.config.family == "vl":
        if quantization is not None:
            raise ErnieError("quantization= runs on ERNIE 4.5 text models, not VL models", ckpt.folder)
        return vl_runtime(ckpt, place)
    return text_runtime(ckpt, place, quantization)
