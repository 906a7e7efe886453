"""The planner's figures for issue 17: memory-mapped serving (routed experts mapped), the peak of a streaming
export, and the advice against a host's RAM; expected bytes counted by hand from the preset dims."""

import json
import subprocess
import sys

import pytest
from helpers import run_cli

from ernie_paddle.config.presets import preset_config
from ernie_paddle.errors import ErnieError
from ernie_paddle.planning.export_peak import EXPORT_BASELINE_BYTES, export_peak, export_peak_bytes
from ernie_paddle.planning.host_ram import ram_advice
from ernie_paddle.planning.memory import GiB, plan
from ernie_paddle.quant.config import online

# (hidden, expert width, experts, experts per token, MoE layers) of the MoE presets
MOE_DIMS = {"21B-A3B": (2560, 1536, 64, 6, 27), "300B-A47B": (8192, 3584, 64, 8, 51)}


def expert_bytes(fmt: str, H: int, width: int) -> int:
    """One routed expert (up_gate [H, 2 width] and down [width, H]) as the CPU predictor holds it."""
    shapes = ((H, 2 * width), (width, H))
    if fmt == "bf16":
        return sum(2 * k * n for k, n in shapes)
    assert fmt == "wint4"
    return sum(k // 2 * n + 4 * n for k, n in shapes)  # two nibbles a byte, float32 per-channel scales


@pytest.mark.parametrize("fmt", ["bf16", "wint4"])
@pytest.mark.parametrize("name", list(MOE_DIMS))
def test_mmap_resident_is_resident_minus_the_routed_experts(name, fmt):
    H, width, E, k, layers = MOE_DIMS[name]
    cfg = preset_config(name)
    resident = plan(cfg, quantization=fmt, device="cpu", context=512)
    mapped = plan(cfg, quantization=fmt, device="cpu", context=512, mmap=True)
    experts = layers * E * expert_bytes(fmt, H, width)
    assert (resident.mmap, resident.mapped_bytes, mapped.mmap) == (False, 0, True)
    assert mapped.mapped_bytes == experts
    assert mapped.weight_bytes == mapped.weight_bytes_per_rank == resident.weight_bytes - experts
    assert mapped.total_bytes_per_rank == resident.total_bytes_per_rank - experts == mapped.host_bytes_per_rank
    assert mapped.mapped_bytes_per_token == layers * k * expert_bytes(fmt, H, width)
    assert mapped.kv_bytes_per_rank == resident.kv_bytes_per_rank
    assert mapped.resident_bytes() == resident.resident_bytes() - experts
    assert resident.fit["mmap"]["resident"] == mapped.total_bytes_per_rank
    assert resident.fit["mmap"]["mapped"] == experts
    assert mapped.to_dict()["mapped_bytes"] == experts and "mmap" not in mapped.fit


def test_dense_mmap_plan_maps_nothing():
    cfg = preset_config("0.3B")
    resident, mapped = plan(cfg, device="cpu"), plan(cfg, device="cpu", mmap=True)
    assert mapped.mapped_bytes == mapped.mapped_bytes_per_token == 0
    assert mapped.total_bytes_per_rank == resident.total_bytes_per_rank
    assert "mmap" not in resident.fit


def test_mmap_needs_the_cpu_predictor():
    with pytest.raises(ErnieError, match="--device cpu on one rank"):
        plan(preset_config("21B-A3B"), mmap=True)
    with pytest.raises(ErnieError, match="dygraph on cpu"):
        plan(preset_config("VL-28B-A3B"), device="cpu", mmap=True)


def test_21b_a3b_export_peak_by_hand():
    """One tensor in flight at a time (an expert goes to its slice of the stack): at 21B-A3B the largest is
    the bf16 embedding, bigger than the biggest linear even with its float32 copy when quantizing."""
    cfg = preset_config("21B-A3B")
    table = 2 * 103424 * 2560                                    # the bf16 embedding
    kept = (28 * 2 + 1) * 2560 * 4 + 27 * (2560 * 64 + 64) * 4   # float32 norms, routers, correction biases
    bf16 = export_peak(cfg)
    assert bf16.group == "ernie.embed_tokens.weight" and bf16.kept == kept and bf16.float32 == 0
    assert bf16.total == EXPORT_BASELINE_BYTES + kept + 2 * table
    wint4 = export_peak(cfg, "wint4")                            # quantized on the fly from bf16
    dense_up_gate = 2560 * 2 * 12288                             # layer 0's MLP, the largest linear
    assert 2 * dense_up_gate + dense_up_gate // 2 + 4 * dense_up_gate < 2 * table
    assert (wint4.group, wint4.source, wint4.stored, wint4.float32) == ("ernie.embed_tokens.weight", table, table, 0)
    for total in (bf16.total, wint4.total):
        assert EXPORT_BASELINE_BYTES < total < 2e9
    assert export_peak(cfg, weights_format="float32").stored == 2 * table


def test_export_peak_of_a_quantized_checkpoint_and_a_dense_model():
    cfg = preset_config("21B-A3B")
    quantized = cfg.replace(quantization_config=online("wint4").to_dict(cfg.num_hidden_layers))
    peak = export_peak(quantized)                              # nothing quantized on the fly
    assert peak.float32 == 0 and peak.group == "ernie.embed_tokens.weight"   # bf16 table > a wint4 stack
    assert peak.source == peak.stored == 2 * 103424 * 2560
    assert export_peak_bytes(quantized, "wint4") == peak.total
    with pytest.raises(ErnieError, match="exports in its own format"):
        export_peak(quantized, "wint8")
    dense = export_peak(preset_config("0.3B"), "wint8")
    assert dense.group == "ernie.embed_tokens.weight" and dense.float32 == 0   # the table is not quantized
    with pytest.raises(ErnieError, match="unknown weight format"):
        export_peak(cfg, weights_format="int3")


def test_ram_advice():
    cfg = preset_config("21B-A3B")
    bf16 = plan(cfg, device="cpu")
    (line,) = ram_advice(bf16, 64 * GiB)
    assert line.startswith("host ram") and "fits in 64.00 GiB RAM" in line
    (line,) = ram_advice(bf16, 24 * GiB)
    assert "does not fit" in line and "--mmap" in line and "--offload-folder DIR" in line and "4.22 GiB" in line
    (line,) = ram_advice(bf16, 4 * GiB)
    assert "neither does" in line
    (line,) = ram_advice(plan(cfg, device="cpu", mmap=True), 4 * GiB)
    assert line.startswith("advice") and "even mapped" in line
    (line,) = ram_advice(plan(preset_config("0.3B"), quantization="fp32", device="cpu"), GiB)
    assert "dense model" in line
    assert ram_advice(plan(cfg), 4 * GiB) == []                 # a GPU plan


def test_cli_mmap_plan_and_advice():
    r = run_cli("memory", "21B-A3B", "--device", "cpu", "--ram", "24")
    assert r.returncode == 0, r.stderr
    advice = [line for line in r.stdout.splitlines() if line.startswith("advice")]
    assert len(advice) == 1 and "--mmap (or --offload-folder DIR)" in advice[0]
    assert "export peak" in r.stdout and "routed experts mapped (--mmap)" in r.stdout
    r = run_cli("memory", "21B-A3B", "--device", "cpu", "--ram", "24", "--mmap", "-q", "wint4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    p = plan(preset_config("21B-A3B"), quantization="wint4", device="cpu", mmap=True)
    assert out["mmap"] and out["mapped_bytes"] == p.mapped_bytes and out["ram_bytes"] == 24 * GiB
    assert out["export_peak"]["total"] == export_peak_bytes(preset_config("21B-A3B"), "wint4")
    assert out["advice"][0].startswith("host ram") and "fits" in out["advice"][0]
    r = run_cli("memory", "21B-A3B", "--mmap")
    assert r.returncode == 2 and "--device cpu" in r.stderr and "Traceback" not in r.stderr


def test_export_baseline_is_the_bare_process():
    """EXPORT_BASELINE_BYTES against the RSS of a child that only imports paddle and ernie_paddle."""
    code = ("import re, paddle, ernie_paddle; "
            "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rss = int(r.stdout.split()[-1]) * 1024
    assert 0.7 < rss / EXPORT_BASELINE_BYTES < 1.3, rss
