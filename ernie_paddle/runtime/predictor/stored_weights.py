"""The weights of the native step program, each linear in its own stored format.

The compiled operators take a linear as (WT, S0, S1, S2, S3; fmt, int8_act): W^T [out, in] in a stored format
and up to four scale tensors (``quant.kernel_form``; unused slots get one shared dummy float32 [1]).

- A ``QuantLinear`` is passed as its own buffers, the model's (its kernel form: the checkpoint's bytes); the
  program saves them as they are, with no float copy.
- Routed experts of an MoE layer are stacked on a new axis 0 ([E, 2I, H] and [E, H, I] and the scales per
  expert), which needs every expert of the layer in one format: the stack is the one copy this module
  makes of compact weights (while exporting, the model and its stacked experts are both resident).
- Float linears are transposed copies in ``float_format``: float32, or bfloat16 (a bf16 checkpoint's size;
  the operators widen in registers, exact). A tied head is the embedding itself, already [V, H]: float32
  uses the model's embedding, bfloat16 one bf16 copy that serves the row gather and the head.

``activations="int8"`` asks the operators to quantize activations to int8 for wint8/wint4 linears (the
``int8_act`` mode); other formats ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle
from paddle import nn

from ernie_paddle.errors import ErnieError
from ernie_paddle.quant.kernel_form import FORMAT_CODES, SCALE_SLOTS
from ernie_paddle.quant.linear import QuantLinear, check_exportable

FLOAT_FORMATS = ("float32", "bfloat16")
WEIGHT_FORMATS = tuple(FORMAT_CODES)  # every format a stored weight may have (the manifest's names)
ACTIVATIONS = ("float32", "int8")
INT8_ACT_FORMATS = ("wint8", "wint4")


@dataclass(frozen=True)
class Stored:
    """One stored linear (or expert stack): the operators' tensors and attributes."""

    tensors: tuple  # WT, S0, S1, S2, S3
    fmt: int
    int8_act: bool


class StoredWeights(nn.Layer):
    """Every linear of ``model`` the native program multiplies by, by the id of its layer (a SparseMoE's id
    for its routed experts: an (up_gate, down) pair), the ``head`` (a tied one is the embedding ``table``),
    and ``formats``: stored weight name -> format."""

    def __init__(self, model, float_format: str = "float32", activations: str = "float32"):
        super().__init__()
        if float_format not in FLOAT_FORMATS:
            raise ValueError(f"weight format {float_format!r} is not one of {FLOAT_FORMATS}")
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations {activations!r} is not one of {ACTIVATIONS}")
        self.float_format, self.activations = float_format, activations
        self.dummy = self.create_parameter([1], dtype="float32", default_initializer=nn.initializer.Constant(0.0))
        self.formats: dict[str, str] = {}
        self._names = {id(layer): name for name, layer in model.named_sublayers()}
        self._stored: dict[int, Stored] = {}
        self._kept = 0
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
        embed = model.ernie.embed_tokens
        self.table = embed.weight if float_format == "float32" else self._keep(embed.weight.astype(float_format))
        self.formats[self._names[id(embed)] + ".weight"] = float_format
        if model.config.tie_word_embeddings:
            self.head = Stored((self.table, *[self.dummy] * SCALE_SLOTS), FORMAT_CODES[float_format], False)
        else:
            self.head = self._add([model.lm_head])

    def __getitem__(self, layer) -> Stored:
        return self._stored[id(layer)]

    def _add(self, layers: list, name: str | None = None) -> Stored:
        """The stored form of one linear, or of the stacked experts ``layers`` (one format for all)."""
        name = name or self._names[id(layers[0])] + ".weight"
        quant = [lin for lin in layers if isinstance(lin, QuantLinear)]
        if not quant:
            return self._add_float(layers, name)
        methods = sorted({(lin.method, lin.block) for lin in quant})
        if len(quant) != len(layers) or len(methods) > 1:
            found = sorted({getattr(lin, "method", "float") for lin in layers})
            raise ErnieError(f"the compiled CPU program stacks the routed experts {name!r}, which needs one "
                             f"format for all of them; found {', '.join(found)} (export with "
                             "ERNIE_PADDLE_NATIVE_OPS=0 for Paddle's operators)")
        first = quant[0]
        if not first.runs_compiled:
            raise ErnieError(f"linear {name!r}: the compiled CPU operators take fp8 blocks of 128, not "
                             f"{first.block} (export with ERNIE_PADDLE_NATIVE_OPS=0 for Paddle's operators)")
        for lin in quant:
            check_exportable(lin)
        self.formats[name] = first.method
        parts = [lin.kernel_inputs(self.dummy) for lin in quant]
        if len(parts) == 1:
            tensors = parts[0]  # the model's own buffers
        else:  # stack each real input (the dummies stay one)
            tensors = [p0 if p0 is self.dummy else self._keep(paddle.stack([p[j] for p in parts]))
                       for j, p0 in enumerate(parts[0])]
        int8_act = self.activations == "int8" and first.method in INT8_ACT_FORMATS
        return Stored(tuple(tensors), first.format_code, int8_act)

    def _add_float(self, layers: list, name: str) -> Stored:
        """Transposed copies in the float format: one linear at a time is transposed in float32 and
        converted, so no float32 copy of more than one linear lives beside the model."""
        mats = [paddle.transpose(lin.weight, [1, 0]).astype(self.float_format) for lin in layers]
        self.formats[name] = self.float_format
        wt = self._keep((mats[0] if len(mats) == 1 else paddle.stack(mats)).contiguous())
        return Stored((wt, *[self.dummy] * SCALE_SLOTS), FORMAT_CODES[self.float_format], False)

    def _keep(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Hold a tensor made here as a persistable buffer (saved with the program)."""
        self.register_buffer(f"stored_{self._kept}", tensor, persistable=True)
        self._kept += 1
        return tensor
