"""The rank-local ERNIE 4.5 model of a tensor-parallel job, built from the single-process layer classes.

Each rank builds the stock ``Attention``, ``MLP`` and ``SparseMoE`` with per-rank shapes (its share of the
heads and of the MLP width) and one all_reduce closes each attention and each MLP/MoE block:

- attention: the rank's query heads and their kv heads (a kv head is replicated on the ranks that share
  it when there are fewer kv heads than ranks); ``qkv_proj`` is column-parallel (its own Q|K|V block),
  ``o_proj`` row-parallel, so the rank's output is a partial sum;
- dense MLP: column-parallel ``up_gate_proj`` (its own gate|up block), row-parallel ``down_proj``;
- MoE, mode "tp": every expert (and the shared experts) cut along its width like a dense MLP, which is
  the layout of the released pre-sharded checkpoints; mode "ep": experts partitioned across ranks whole,
  each rank runs only the chosen experts it owns (shared experts cut along the width); the router is
  replicated, so routing is identical on every rank;
- embedding, final norm and LM head are replicated (see ``ernie_paddle.runtime.distributed`` for why).

Parameter names equal the checkpoint keys except that an expert-parallel rank numbers its own experts
from 0 (``RankShard.param_name`` maps a checkpoint key to its parameter, or None when another rank owns it).
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle import nn

from converters.rules import expert_index, renumber_expert
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.models.blocks import MLP, Attention
from ernie_paddle.models.ernie import DecoderLayer, ErnieForCausalLM, ErnieModel
from ernie_paddle.models.layers import Linear, RMSNorm
from ernie_paddle.models.moe import SparseMoE
from ernie_paddle.runtime.distributed.comm import Comm

MOE_MODES = ("tp", "ep")


@dataclass(frozen=True)
class RankShard:
    """Which part of the model rank ``rank`` of ``tp`` holds; ``moe`` is "tp" or "ep"."""

    tp: int
    rank: int
    moe: str = "tp"

    def local_config(self, config: ErnieConfig) -> ErnieConfig:
        """The config whose stock layers have this rank's shapes (heads, kv heads and widths per rank)."""
        nkv = config.num_key_value_heads
        return config.replace(
            num_attention_heads=config.num_attention_heads // self.tp,
            num_key_value_heads=nkv // self.tp if nkv >= self.tp else 1,
            intermediate_size=config.intermediate_size // self.tp,
            moe_intermediate_size=config.moe_intermediate_size // self.tp)

    def experts(self, num_experts: int) -> range:
        """Expert ids owned by this rank under expert parallelism (contiguous, as even as possible)."""
        return range(self.rank * num_experts // self.tp, (self.rank + 1) * num_experts // self.tp)

    def param_name(self, key: str, config: ErnieConfig) -> str | None:
        """Parameter of this rank's model that holds checkpoint tensor ``key``; None = not on this rank."""
        if self.moe != "ep":
            return key
        j = expert_index(key)
        if j is None:
            return key
        owned = self.experts(config.moe_num_experts)
        return renumber_expert(key, j - owned.start) if j in owned else None

    def sliced(self, key: str) -> bool:
        """Whether checkpoint tensor ``key`` is cut for this rank (whole experts are not under "ep")."""
        return not (self.moe == "ep" and expert_index(key) is not None)


def expert_parallel_moe(config: ErnieConfig, plan: RankShard) -> SparseMoE:
    """SparseMoE holding only the experts this rank owns (whole), and its slice of the shared experts.

    Its ``forward`` returns this rank's partial sum; the decoder layer's all_reduce adds the others.
    """
    return SparseMoE(config, owned=plan.experts(config.moe_num_experts),
                     shared_size=config.shared_intermediate_size // plan.tp)


class TPDecoderLayer(DecoderLayer):
    """DecoderLayer whose attention and MLP hold this rank's part; one all_reduce closes each block."""

    def __init__(self, config: ErnieConfig, moe: bool, plan: RankShard, comm: Comm):
        nn.Layer.__init__(self)
        local = plan.local_config(config)
        self.comm = comm
        self.self_attn = Attention(local)
        if not moe:
            self.mlp = MLP(config.hidden_size, local.intermediate_size)
        elif plan.moe == "ep":
            self.mlp = expert_parallel_moe(config, plan)
        else:
            self.mlp = SparseMoE(local)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.comm.all_reduce(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        return x + self.comm.all_reduce(self.mlp(self.post_attention_layernorm(x)))


class TPErnieModel(ErnieModel):
    """ErnieModel (same forward) with TPDecoderLayer layers and MTP block; embeddings and norms whole."""

    def __init__(self, config: ErnieConfig, plan: RankShard, comm: Comm):
        super().__init__(config.replace(num_hidden_layers=0, num_nextn_predict_layers=0))
        self.config = config
        self.layers = nn.LayerList([TPDecoderLayer(config, config.is_moe_layer(i), plan, comm)
                                    for i in range(config.num_hidden_layers)])
        n_mtp = config.num_nextn_predict_layers
        if n_mtp:
            h, eps = config.hidden_size, config.rms_norm_eps
            self.mtp_block = nn.LayerList([TPDecoderLayer(config, False, plan, comm) for _ in range(n_mtp)])
            self.mtp_emb_norm = nn.LayerList([RMSNorm(h, eps) for _ in range(n_mtp)])
            self.mtp_hidden_norm = nn.LayerList([RMSNorm(h, eps) for _ in range(n_mtp)])
            self.mtp_linear_proj = nn.LayerList([Linear(2 * h, h) for _ in range(n_mtp)])


class TPErnieForCausalLM(ErnieForCausalLM):
    """ErnieForCausalLM over TPErnieModel; the (replicated) head gives identical logits on every rank."""

    def __init__(self, config: ErnieConfig, plan: RankShard, comm: Comm):
        nn.Layer.__init__(self)
        self.config = config
        self.plan = plan
        self.comm = comm
        self.ernie = TPErnieModel(config, plan, comm)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Layer()
            self.lm_head.weight = self.lm_head.create_parameter(
                [config.hidden_size, config.vocab_size], default_initializer=nn.initializer.Constant(0.0))
        self._head_t = None
