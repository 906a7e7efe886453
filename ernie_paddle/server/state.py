"""What the app holds: settings, the loaded model + tokenizer, the scheduler, usage store, keys and metrics."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ernie_paddle.errors import ErnieError
from ernie_paddle.runtime.protocols import Model, StepEngine
from ernie_paddle.server.auth import KeyRing
from ernie_paddle.server.metrics import server_metrics
from ernie_paddle.server.usage import UsageStore, default_data_dir

log = logging.getLogger("ernie_paddle.server")


@dataclass
class Settings:
    """Server options (the ``serve`` command's flags)."""

    model_path: str
    model_name: str | None = None
    max_tokens_limit: int = 4096
    max_batch: int = 32
    data_dir: str | None = None
    api_keys_file: str | None = None
    admin_keys_file: str | None = None
    device: str | None = None
    num_threads: int | None = None
    engine: str | None = None  # "auto", "predictor" or "dygraph" (see ernie_paddle.api.choose_engine)
    speculative: str | None = None  # "mtp": draft with the MTP layer, one sequence at a time
    num_draft: int = 1
    image_dir: str | None = None  # local image paths must lie under it; None refuses local paths
    reasoning_parser: str = "auto"  # "auto", "ernie" or "none" (see ernie_paddle.server.chat_tools)
    mmap: bool | None = None  # the predictor maps the export's weights (None: when they do not fit in memory)
    offload_folder: str | None = None  # export the checkpoint there and serve it mapped

    def __post_init__(self):
        self.model_name = self.model_name or Path(self.model_path).resolve().name


class ServerState:
    """Loads the model in a background thread; ``ready`` turns true once it can serve."""

    def __init__(self, settings: Settings, runtime: Model | None = None, tokenizer=None,
                 step_engine: StepEngine | None = None):
        self.settings = settings
        self.step_engine = step_engine  # None: made from the runtime (see _make_scheduler)
        self.keys = KeyRing.from_files(settings.api_keys_file, settings.admin_keys_file)
        self.usage = UsageStore(settings.data_dir or default_data_dir())
        self.runtime, self.tokenizer, self.scheduler = runtime, tokenizer, None
        self.error: str | None = None
        self.ready = False
        self.metrics = server_metrics(lambda: self.scheduler.queue_depth if self.scheduler else 0,
                                      lambda: self.scheduler.running if self.scheduler else 0)

    def start(self, background: bool = True) -> None:
        if background:
            threading.Thread(target=self._load, name="ernie-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        from ernie_paddle.api import choose_engine, load
        from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer

        try:
            s = self.settings
            if self.runtime is None:
                mapped = bool(s.mmap) or s.offload_folder is not None
                engine = choose_engine(s.model_path, s.engine, speculative=s.speculative, mapped=mapped)
                self.runtime = load(s.model_path, device=s.device, num_threads=s.num_threads, engine=engine,
                                    mmap=s.mmap, offload_folder=s.offload_folder)
            if self.tokenizer is None:
                self.tokenizer = ErnieTokenizer.from_folder(s.model_path)
            self.scheduler = self._make_scheduler()
            self.scheduler.start()
            self.ready = True
            log.info("model %s ready", s.model_name)
        except Exception as exc:  # reported by /health; the process keeps answering
            log.exception("loading the model failed")
            self.error = str(exc)

    def _make_scheduler(self):
        """Continuous batching, or one sequence at a time through the runtime's ``stream`` (VL, speculative)."""
        s = self.settings
        if not self.sequential:
            from ernie_paddle.server.scheduler import Scheduler

            engine = self.step_engine or self.runtime.step_engine()  # a BatchingModel brings its own
            return Scheduler(engine, s.max_batch, on_step=self._on_step)
        from ernie_paddle.server.sequential import SequentialScheduler

        if self.is_vl:
            if s.speculative:
                raise ErnieError("--speculative runs on ERNIE 4.5 text models with an MTP layer, not VL models")
            return SequentialScheduler(self.runtime, lambda p: p)  # VL inputs, or token ids of a text prompt
        from ernie_paddle.runtime.speculative import check_method

        check_method(self.runtime.model, s.speculative, s.num_draft)
        return SequentialScheduler(self.runtime, lambda p: np.array([p], dtype=np.int64), self._on_sequence,
                                   speculative=s.speculative, num_draft=s.num_draft)

    def _on_sequence(self, runtime) -> None:
        stats = runtime.speculative_stats
        if stats is not None:
            self.metrics.inc("speculative_draft_tokens_total", stats.drafted)
            self.metrics.inc("speculative_accepted_tokens_total", stats.accepted)

    @property
    def is_vl(self) -> bool:
        return self.runtime is not None and self.runtime.config.family == "vl"

    @property
    def sequential(self) -> bool:
        """True when requests run one at a time (a VL model, or speculative decoding)."""
        return self.is_vl or bool(self.settings.speculative)

    def _on_step(self, batch: int, seconds: float) -> None:
        self.metrics.observe("decode_batch_size", batch)
        if seconds > 0:
            self.metrics.observe("batch_tokens_per_second", batch / seconds)

    @property
    def context_length(self) -> int:
        return int(self.runtime.config.max_position_embeddings)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        ids = set(self.tokenizer.stop_token_ids)
        eos = getattr(self.runtime.config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])
        return tuple(sorted(ids))

    @property
    def generation_defaults(self) -> dict:
        return self.runtime.generation_defaults

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.stop()
        self.usage.close()
