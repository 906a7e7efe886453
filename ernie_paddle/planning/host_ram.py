"""Whether a CPU plan fits a given host's RAM, and what to do when it does not (``--mmap``)."""

from __future__ import annotations

import os

from ernie_paddle.planning.memory import HOST_USABLE, MemoryPlan, human

MAPPED_BUDGET = 0.25  # of the RAM: mapped expert pages a mapped predictor keeps before dropping them


def host_ram_bytes() -> int | None:
    """This machine's physical RAM (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def ram_advice(p: MemoryPlan, ram: int) -> list[str]:
    """Lines for a CPU plan against ``ram`` bytes of RAM (``HOST_USABLE`` of it usable): that it fits, or
    whether serving the routed experts mapped (``--mmap`` / ``--offload-folder DIR``) fits,
    and when even that does not."""
    usable = ram * HOST_USABLE
    need = p.total_bytes_per_rank * p.tp
    where = f"{human(ram)} RAM ({human(usable)} usable)"
    if p.device != "cpu":
        return []
    if need <= usable:
        return [f"host ram         {human(need)} fits in {where}"]
    if p.mmap:
        return [f"advice           even mapped, {human(need)} resident (non-expert weights, KV cache, workspace) "
                f"does not fit in {where}: use a smaller --quantization, --context or --batch"]
    alt = p.fit.get("mmap")
    head = f"advice           {human(need)} resident does not fit in {where}"
    if alt is None:
        reason = ("a dense model reads every weight per token, so --mmap would not shrink what must stay "
                  "resident" if p.engine == "predictor" else "--mmap serves CPU predictor exports only")
        return [f"{head}; {reason}: use a smaller --quantization, --context or --batch"]
    if alt["resident"] <= usable:
        return [f"{head}: --mmap (or --offload-folder DIR) serves the weights mapped from the export: "
                f"{human(alt['resident'])} resident (non-expert weights, KV cache, workspace), the routed "
                f"experts' {human(alt['mapped'])} paged in from disk as decoding needs them"]
    return [f"{head}, and neither does {human(alt['resident'])} with the routed experts mapped (--mmap / "
            "--offload-folder DIR): use a smaller --quantization, --context or --batch"]
