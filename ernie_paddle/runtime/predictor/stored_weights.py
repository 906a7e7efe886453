"""The weights of the native step program, each linear in its own stored format, planned from shapes alone.

The compiled operators take a linear as (WT, S0, S1, S2, S3; fmt, int8_act): W^T [out, in] in a stored format
and up to four scale tensors (``quant.kernel_form``; unused slots get one shared dummy float32 [1]).
``StoredWeights`` walks a model built without weights (``paddle.LazyGuard``; linears that will be quantized
are stubs with ``method``, ``in_features``, ``out_features``) and plans every stored tensor as a program
input (``specs``: name, dtype, shape, routed experts or not; in input order) whose bytes live in the export's
``weights.bin`` (the routed experts are what a mapped load leaves mapped):

- a quantized linear: its kernel form (the checkpoint's bytes, transposed; or quantized on the fly);
- a float linear: W^T in ``float_format`` (float32, or bfloat16: a bf16 checkpoint's size; the operators
  widen in registers, exact);
- the routed experts of an MoE layer: each tensor stacked on a new axis 0 (one format for all experts);
- the embedding table in ``float_format``; a tied head is the same input.

``targets`` says where each checkpoint linear (by its Paddle prefix) goes: the inputs of its kernel-form
arrays and, for an expert, its index in the stack (``weight_stream`` fills them as the checkpoint streams
by). Norms, the router and the correction bias stay the model's parameters (``step.pdiparams``).
``activations="int8"`` asks the operators to quantize activations to int8 for wint8/wint4 linears (the
``int8_act`` mode); other formats ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle import nn

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant.kernel_form import FORMAT_CODES, KERNEL_BLOCK, WEIGHT, kernel_shapes, runs_compiled

FLOAT_FORMATS = ("float32", "bfloat16")
WEIGHT_FORMATS = tuple(FORMAT_CODES)  # every format a stored weight may have (the manifest's names)
ACTIVATIONS = ("float32", "int8")
INT8_ACT_FORMATS = ("wint8", "wint4")
TABLE = "ernie.embed_tokens"  # the target of the embedding (and of a tied head)


@dataclass(frozen=True)
class Stored:
    """One stored linear (or expert stack) as the operators take it: the input index of WT, S0..S3 (None:
    the dummy) and the attributes."""

    inputs: tuple
    fmt: int
    int8_act: bool


@dataclass(frozen=True)
class Target:
    """Where one checkpoint linear's arrays go: ``inputs`` by kernel-form name (``weight_t`` for float ones),
    ``expert`` its slice of a stack (None: the whole input), ``float_format`` for float ones (None: quantized)."""

    inputs: dict
    expert: int | None
    float_format: str | None


class StoredWeights(nn.Layer):
    """The stored inputs of ``model``'s native program: ``specs``, ``targets``, ``formats`` (stored weight
    name -> format), and per linear layer (a SparseMoE's id for its routed experts: an (up_gate, down) pair)
    the operators' ``Stored``; ``head`` (a tied one is the embedding table)."""

    def __init__(self, model, float_format: str = "float32", activations: str = "float32",
                 block: int = KERNEL_BLOCK):
        super().__init__()
        if float_format not in FLOAT_FORMATS:
            raise ValueError(f"weight format {float_format!r} is not one of {FLOAT_FORMATS}")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations {activations!r} is not one of {ACTIVATIONS}")
        self.float_format, self.activations, self.block = float_format, activations, block
        self.dummy = self.create_parameter([1], dtype="float32", default_initializer=nn.initializer.Constant(0.0))
        self.specs: list[tuple[str, str, tuple[int, ...], bool]] = []
        self.targets: dict[str, Target] = {}
        self.formats: dict[str, str] = {}
        self._names = {id(layer): name for name, layer in model.named_sublayers()}
        self._stored: dict[int, Stored] = {}
        self._float_layers: list = [model.ernie.embed_tokens]
        for i, layer in enumerate(model.ernie.layers):
            mlp = layer.mlp
            if model.config.is_moe_layer(i):
                if list(mlp.owned) != list(range(mlp.gate.weight.shape[1])):
                    raise ValueError("the native program runs MoE layers that hold all of their experts")
                prefix = self._names[id(mlp)] + ".experts"
                pair = (self._add([m.up_gate_proj for m in mlp.experts], prefix + ".up_gate_proj"),
                        self._add([m.down_proj for m in mlp.experts], prefix + ".down_proj"))
                if pair[0].fmt != pair[1].fmt:  # the expert operator takes one format
                    raise ErnieError(f"the routed experts {prefix!r} store up_gate_proj as "
                                     f"{self.formats[prefix + '.up_gate_proj']} and down_proj as "
                                     f"{self.formats[prefix + '.down_proj']}; the compiled CPU program needs one "
                                     "format (export with ERNIE_PADDLE_NATIVE_OPS=0 for Paddle's operators)")
                self._stored[id(mlp)] = pair
                mlp = mlp.shared_experts
            linears = [layer.self_attn.qkv_proj, layer.self_attn.o_proj]
            linears += [mlp.up_gate_proj, mlp.down_proj] if mlp is not None else []
            for lin in linears:
                self._stored[id(lin)] = self._add([lin])
        vocab, hidden = model.ernie.embed_tokens.weight.shape
        table = self._input(TABLE + ".weight", float_format, (vocab, hidden))
        self.targets[TABLE] = Target({WEIGHT: table}, None, float_format)
        self.formats[TABLE + ".weight"] = float_format
        self.head = (Stored((table, None, None, None, None), FORMAT_CODES[float_format], False)
                     if model.config.tie_word_embeddings else self._add([model.lm_head]))

    def release_model_weights(self) -> None:
        """Drop the model's own weight of every float linear planned here and of the embedding: the native
        program never reads them (in a model built without weights they were never allocated)."""
        for layer in self._float_layers:
            layer.weight = None

    def __getitem__(self, layer) -> Stored:
        return self._stored[id(layer)]

    def _input(self, name: str, dtype: str, shape, experts: bool = False) -> int:
        self.specs.append((name, dtype, tuple(int(d) for d in shape), experts))
        return len(self.specs) - 1

    def _add(self, layers: list, name: str | None = None) -> Stored:
        """Plan the stored form of one linear, or of the stacked experts ``layers`` (one format for all)."""
        name = name or self._names[id(layers[0])] + ".weight"
        methods = sorted({getattr(lin, "method", "float") for lin in layers})
        if len(methods) > 1:
            raise ErnieError(f"the compiled CPU program stacks the routed experts {name!r}, which needs one "
                             f"format for all of them; found {', '.join(methods)} (export with "
                             "ERNIE_PADDLE_NATIVE_OPS=0 for Paddle's operators)")
        first, stack = layers[0], (len(layers),) if len(layers) > 1 else ()
        method = methods[0]
        if method == "float":
            self._float_layers += layers
            k, n = first.weight.shape
            arrays = {WEIGHT: (self.float_format, (n, k))}
            fmt, float_format = self.float_format, self.float_format
        else:
            if not runs_compiled(method, self.block):
                raise ErnieError(f"linear {name!r}: the compiled CPU operators take fp8 blocks of 128, not "
                                 f"{self.block} (export with ERNIE_PADDLE_NATIVE_OPS=0 for Paddle's operators)")
            if getattr(first, "bias", None) is not None:
                raise ErnieError(f"linear {name!r}: a quantized linear with a bias cannot be exported")
            arrays = kernel_shapes(method, first.in_features, first.out_features, self.block)
            fmt, float_format = method, None
        base = name.removesuffix(".weight")
        inputs = {key: self._input(f"{base}.{key}", dtype, stack + shape, bool(stack))
                  for key, (dtype, shape) in arrays.items()}
        for e, lin in enumerate(layers):
            self.targets[self._names[id(lin)]] = Target(inputs, e if stack else None, float_format)
        self.formats[name] = fmt
        slots = list(inputs.values()) + [None] * (5 - len(inputs))
        int8_act = self.activations == "int8" and fmt in INT8_ACT_FORMATS
        return Stored(tuple(slots), FORMAT_CODES[fmt], int8_act)
