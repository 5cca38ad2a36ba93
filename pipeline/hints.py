"""What to say when a training stage's up-front estimate on a CPU is long: the real cause and its fix."""

import torch

from pipeline.core.runtime import describe_cpu, native
from pipeline.params import CPU_PRESET_COMMAND, Section, cpu_preset_differences


def slow_cpu_hint(section: str, values: Section, precision: str) -> str:
    """The cause, in order: an emulated precision, params other than the CPU preset's, else the CPU itself."""
    if precision != "fp32" and not native(torch.device("cpu"), precision):
        return f"{section}.precision = {precision} is slower than fp32 on this CPU ({describe_cpu()}): set it to auto"
    differ = cpu_preset_differences(section, values)
    if differ:
        return (
            f"these {section} params are not the CPU preset's ({', '.join(differ)} differ); for a 2-core CPU "
            f"run `make repro PRESET=cpu` or {CPU_PRESET_COMMAND}"
        )
    return (
        f"the CPU preset is in use, so this CPU is the cause: {describe_cpu()}, {section} in {precision}; the "
        "preset is sized for 45 minutes on 2 idle cores, with or without native bf16 (docs/cpu_preset.md)"
    )
