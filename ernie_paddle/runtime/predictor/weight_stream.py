"""The streaming side of a native export: a model without weights to trace, and the weights written from the
checkpoint one tensor group at a time.

``skeleton`` builds the model under ``paddle.LazyGuard`` (no parameter is allocated; linears that will be
quantized are stubs). ``stream_weights`` then reads the checkpoint once, in its tensor groups
(``converters.tensor_groups``: HF layouts mapped on the fly), and puts every tensor where the program reads it:

- linears (and the embedding) into ``weights.bin`` at their ``StoredWeights`` target: float ones transposed
  and cast to the stored float format, quantized ones as their kernel form (the checkpoint's quantized bytes,
  or quantized on the fly by ``quantized_weights.QuantRouter``), each expert at its slice of the stack;
- everything else the program reads (norms, router, correction bias) into the model's own parameters, which
  the traced program saves to ``step.pdiparams``;
- MTP tensors and a tied head's copy are skipped (the step program does not read them).

So the process holds one tensor group (and its converted copy) at a time, never the model.
"""

from __future__ import annotations

import numpy as np
import paddle

from converters import rules
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.dtypes import BY_NAME
from ernie_paddle.progress import progress_bar
from ernie_paddle.quant.kernel_form import WEIGHT
from ernie_paddle.runtime.predictor.stored_weights import TABLE, StoredWeights
from ernie_paddle.runtime.predictor.weight_file import WeightFileWriter
from ernie_paddle.runtime.quantized_weights import QuantRouter, install_stubs, resolve
from ernie_paddle.runtime.weights import build_model, tensor_stream


def skeleton(ckpt, quantization: str | None = None):
    """(model built without weights, its QuantConfig or None, the quantized stubs by prefix) for ``ckpt``."""
    config = ckpt.config.replace(num_nextn_predict_layers=0)  # the step program has no MTP layer
    qc = resolve(config, quantization, ckpt.folder)
    with paddle.LazyGuard():
        model = build_model(config, "float32")
    stubs = install_stubs(model, ckpt, qc, quantization is not None) if qc is not None else {}
    return model, qc, stubs


class _Sink:
    """Routes each (Paddle key, array) to ``weights.bin`` or to a model parameter; counts what it placed."""

    def __init__(self, model, stored: StoredWeights, writer: WeightFileWriter, source):
        self.model, self.stored, self.writer, self.source = model, stored, writer, source
        self.params = dict(model.named_parameters())
        self.filled: set[str] = set()

    def _write(self, prefix: str, name: str, array: np.ndarray) -> None:
        target = self.stored.targets[prefix]
        index = target.inputs[name]
        entry = self.writer.entries[index]
        per = int(np.prod(entry.shape[1:], dtype=np.int64)) if target.expert is not None else 0
        if tuple(array.shape) != (entry.shape[1:] if target.expert is not None else entry.shape):
            raise ErnieError(f"tensor {prefix}.{name} has shape {list(array.shape)}; the program stores "
                             f"{list(entry.shape)}", self.source)
        self.writer.write(index, array, (target.expert or 0) * per)

    def quantized(self, prefix: str, form: dict) -> None:
        """A quantized linear's kernel form (``quant.kernel_form``), written and dropped."""
        for name in self.stored.targets[prefix].inputs:
            self._write(prefix, name, form[name])

    def tensor(self, key: str, arr: np.ndarray) -> None:
        prefix = key.removesuffix(".weight")
        target = self.stored.targets.get(prefix) if key.endswith(".weight") else None
        if target is not None:
            arr = np.asarray(arr)
            w = arr if prefix == TABLE else arr.T  # linears are [in, out] in the Paddle layout
            self._write(prefix, WEIGHT, np.ascontiguousarray(w, dtype=BY_NAME[target.float_format]))
            return
        param = self.params.get(key)
        if param is None:
            match = rules.match_paddle(key)
            if (match is not None and match.mtp) or rules.is_tied_head_copy(key, self.model.config):
                return
            raise ErnieError(f"tensor {key!r} has no place in the model built from config.json", self.source)
        if tuple(arr.shape) != tuple(param.shape):
            raise ErnieError(f"tensor {key!r} has shape {list(arr.shape)}, the model expects "
                             f"{list(param.shape)}", self.source)
        param.set_value(np.ascontiguousarray(arr, dtype=np.float32))
        self.filled.add(key)


def stream_weights(ckpt, model, qc, stubs, stored: StoredWeights, writer: WeightFileWriter,
                   quiet: bool = True, after_file=None) -> set[str]:
    """Fill ``writer`` (then ``finish`` it) and the model's small parameters from ``ckpt``; returns the keys of
    the parameters filled (every other model parameter stays unallocated). ``after_file(path)``, for
    benchmarks whose disk cannot hold two copies of a model (``scripts/bench_scale.py``): called with each
    checkpoint file once every tensor of it has been read (Paddle layout)."""
    sink = _Sink(model, stored, writer, ckpt.folder)
    with progress_bar(len(ckpt.keys()), "export weights", quiet=quiet, unit="tensor") as bar:
        stream = _counted(tensor_stream(ckpt, "keep"), bar, ckpt, after_file)
        if qc is not None:
            router = QuantRouter(model, stubs, qc, ckpt.folder, sink=sink.quantized)
            stream = router(stream)
        for key, arr in stream:
            sink.tensor(key, arr)
    if qc is not None:
        router.finish()
    missing = sorted(set(sink.params) - sink.filled)
    if missing:
        raise ErnieError(f"{len(missing)} parameter(s) missing from the checkpoint, e.g. {missing[0]!r}", ckpt.folder)
    writer.finish()
    return sink.filled


def _counted(stream, bar, ckpt, after_file=None):
    """``stream`` with progress, calling ``after_file`` with each file whose tensors have all gone by."""
    left: dict = {}
    for name in ckpt.keys():
        left[ckpt.specs[name].file] = left.get(ckpt.specs[name].file, 0) + 1
    for key, arr in stream:
        yield key, arr
        bar.update(1)
        spec = ckpt.specs.get(key)
        if after_file is not None and spec is not None:
            left[spec.file] -= 1
            if left[spec.file] == 0:
                after_file(spec.file)
