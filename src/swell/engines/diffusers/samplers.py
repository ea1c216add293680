"""AUTOMATIC1111 sampler and schedule-type names, mapped to diffusers schedulers (pure data, no torch).

The table follows diffusers' own mapping of A1111/k-diffusion names (docs: api/schedulers/overview,
"Noise schedules and schedule types"). A1111 names a sampler ("DPM++ 2M") and, since 1.9, a schedule
type apart ("Karras"); older clients put both in one name ("DPM++ 2M Karras"), which is accepted and
split. Names without a diffusers equivalent (DPM++ 2S a, DPM adaptive, DPM fast) are refused rather
than approximated, so an image's `parameters` never claim a sampler that did not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """One A1111 sampler: the diffusers scheduler class and the arguments that make it that sampler."""

    scheduler: str  # a class name in the diffusers package
    kwargs: dict[str, Any] = field(default_factory=dict)
    sigmas: bool = True  # the scheduler takes use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas
    spacing: bool = True  # the scheduler takes timestep_spacing (SGM Uniform, Simple)
    automatic: str = "Automatic"  # what A1111's "Automatic" schedule type means for this sampler


SAMPLERS: dict[str, Sampler] = {
    "Euler": Sampler("EulerDiscreteScheduler"),
    "Euler a": Sampler("EulerAncestralDiscreteScheduler", sigmas=False),
    "Heun": Sampler("HeunDiscreteScheduler"),
    "LMS": Sampler("LMSDiscreteScheduler"),
    "DPM2": Sampler("KDPM2DiscreteScheduler"),
    "DPM2 a": Sampler("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": Sampler("DPMSolverMultistepScheduler", automatic="Karras"),
    "DPM++ 2M SDE": Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, automatic="Exponential"
    ),
    "DPM++ SDE": Sampler("DPMSolverSinglestepScheduler", spacing=False, automatic="Karras"),
    "DDIM": Sampler("DDIMScheduler", sigmas=False),
    "PLMS": Sampler("PNDMScheduler", {"skip_prk_steps": True}, sigmas=False),
    "UniPC": Sampler("UniPCMultistepScheduler"),
    "DEIS": Sampler("DEISMultistepScheduler"),
    "LCM": Sampler("LCMScheduler", sigmas=False),
}

# A1111 "Schedule type" -> scheduler arguments; each needs a scheduler that takes them (`Sampler`).
SCHEDULES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}
SIGMA_SCHEDULES = frozenset({"Karras", "Exponential", "Beta"})
SPACING_SCHEDULES = frozenset({"SGM Uniform", "Simple"})
NO_EQUIVALENT = frozenset({"DPM++ 2S a", "DPM adaptive", "DPM fast", "Restart", "DPM++ 3M SDE"})


@dataclass(frozen=True)
class Choice:
    """A resolved sampler: its A1111 names (for the infotext) and the scheduler to build. `schedule`
    is the concrete schedule type that ran ("Automatic" only where the sampler has no other)."""

    sampler: str
    schedule: str
    scheduler: str
    kwargs: dict[str, Any]


def resolve(sampler: str, schedule: str | None = None) -> Choice:
    """The scheduler for A1111 `sampler` (optionally with its schedule suffix) and `schedule`.

    Raises ValueError with a message a user can act on: an unknown or unmapped name, two schedules,
    or a sigma schedule on a sampler that has none."""
    name, suffix = split_legacy(sampler)
    if name in NO_EQUIVALENT:
        raise ValueError(f"sampler {name!r} has no diffusers equivalent (known: {', '.join(SAMPLERS)})")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if suffix is not None and schedule not in (None, "Automatic", suffix):
        raise ValueError(f"sampler {sampler!r} already names the schedule {suffix!r}, not {schedule!r}")
    chosen = suffix or schedule or "Automatic"
    if chosen not in SCHEDULES:
        raise ValueError(f"unknown schedule type {chosen!r} (known: {', '.join(SCHEDULES)})")
    spec = SAMPLERS[name]
    if chosen == "Automatic":
        chosen = spec.automatic
    if (chosen in SIGMA_SCHEDULES and not spec.sigmas) or (chosen in SPACING_SCHEDULES and not spec.spacing):
        raise ValueError(f"sampler {name!r} does not take the {chosen!r} schedule")
    return Choice(name, chosen, spec.scheduler, {**spec.kwargs, **SCHEDULES[chosen]})


def split_legacy(sampler: str) -> tuple[str, str | None]:
    """ "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); a plain name -> (name, None)."""
    for schedule in SCHEDULES:
        base = sampler.removesuffix(f" {schedule}")
        if base != sampler and (base in SAMPLERS or base in NO_EQUIVALENT):
            return base, schedule
    return sampler, None
