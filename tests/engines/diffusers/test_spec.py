"""The diffusers spec without torch: samplers, infotext, options and input checks, units, batch keys."""

import subprocess
import sys

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.engines.diffusers import samplers
from swell.engines.diffusers.infotext import format_infotext, lora_prompt, parse_infotext
from swell.engines.diffusers.spec import SPEC, batch_key, check, units

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def test_the_spec_imports_no_torch() -> None:
    code = (
        "import sys; from swell.engines.diffusers.spec import SPEC; "
        "SPEC.parse_input({'prompt': 'x'}); "
        "assert not {'torch', 'diffusers', 'transformers', 'PIL'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("name", "schedule", "scheduler", "kwargs"),
    [
        ("Euler a", None, "EulerAncestralDiscreteScheduler", {}),
        ("DPM++ 2M", None, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        ("DPM++ 2M Karras", None, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        (
            "DPM++ 2M SDE Karras",
            None,
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        ),
        ("DPM++ SDE Karras", None, "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
        ("Euler", "Exponential", "EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
        ("Euler", "SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
        ("LMS Karras", None, "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
        ("DPM2 a", None, "KDPM2AncestralDiscreteScheduler", {}),
        ("DDIM", None, "DDIMScheduler", {}),
        ("UniPC", None, "UniPCMultistepScheduler", {}),
        ("Heun", None, "HeunDiscreteScheduler", {}),
    ],
)
def test_a1111_names_map_to_diffusers_schedulers(
    name: str, schedule: str | None, scheduler: str, kwargs: dict[str, object]
) -> None:
    choice = samplers.resolve(name, schedule)
    assert (choice.scheduler, choice.kwargs) == (scheduler, kwargs)


@pytest.mark.parametrize(
    ("name", "schedule", "says"),
    [
        ("Euler b", None, "unknown sampler"),
        ("DPM++ 2S a", None, "no diffusers equivalent"),
        ("DPM adaptive", None, "no diffusers equivalent"),
        ("Euler a", "Karras", "does not take"),
        ("DPM++ 2M Karras", "Exponential", "already names"),
        ("Euler", "Polyexponential", "unknown schedule"),
    ],
)
def test_unknown_or_unmapped_samplers_are_refused(name: str, schedule: str | None, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        samplers.resolve(name, schedule)


def test_every_mapped_scheduler_exists_and_takes_its_arguments() -> None:
    diffusers = pytest.importorskip("diffusers")
    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}
    for name in samplers.SAMPLERS:
        for schedule in samplers.SCHEDULES:
            try:
                choice = samplers.resolve(name, schedule)
            except ValueError:
                continue
            built = getattr(diffusers, choice.scheduler).from_config(config, **choice.kwargs)
            for key, value in choice.kwargs.items():
                assert built.config[key] == value, (name, schedule, key)


def test_infotext_is_a1111s_format_and_reads_back() -> None:
    prompt = lora_prompt("a cat, on a mat\nsecond line", [("style", 0.8)])
    fields = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": 42}
    text = format_infotext(prompt, "blurry: low quality", {**fields, "Size": "512x768", "Model": 'm "x", y'})
    assert text.splitlines()[-1].startswith(
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7"
    )
    assert "<lora:style:0.8>" in text.splitlines()[1]
    back_prompt, back_negative, back = parse_infotext(text)
    assert back_prompt == prompt and back_negative == "blurry: low quality"
    assert back["Seed"] == "42" and back["Size"] == "512x768" and back["Model"] == 'm "x", y'


def test_input_errors_name_the_field() -> None:
    cases = {
        "input.sampler": {"sampler": "Nope"},
        "input.width": {"width": 100},
        "input.height": {"height": 4096},
        "input.images": {"images": 0},
        "input.steps": {"steps": "20"},
        "input.init_image": {"init_image": "not base64!"},
        "input.loras[0].name": {"loras": [{"name": "../etc/passwd"}]},
        "input.colour": {"colour": "red"},
    }
    for field, payload in cases.items():
        with pytest.raises(ValidationError) as caught:
            SPEC.parse_input({"prompt": "x", **payload})
        assert caught.value.field == field, (field, caught.value)


def test_inputs_are_checked_against_the_services_options() -> None:
    options = SPEC.parse_options({"path": "/m", "max_images": 2, "max_side": 512})
    for payload, field in [
        ({"images": 3}, "input.images"),
        ({"width": 768}, "input.width"),
        ({"control_image": PNG_B64}, "input.control_image"),
        ({"loras": [{"name": "style"}]}, "input.loras"),
    ]:
        with pytest.raises(ValidationError) as caught:
            check(SPEC.parse_input(payload), options)
        assert caught.value.field == field
    check(SPEC.parse_input({"images": 2, "width": 512, "init_image": PNG_B64, "strength": 0.4}), options)


def test_options_errors_name_the_key() -> None:
    for options, key in [
        ({"path": "/m", "sampler": "Nope"}, "options.sampler"),
        ({"path": "/m", "width": 513}, "options.width"),
        ({"path": "/m", "colour": 1}, "options.colour"),
        ({"checkpoint": "/m.safetensors"}, "options"),
        ({}, "options"),
    ]:
        with pytest.raises(ConfigError) as caught:
            SPEC.parse_options(options)
        assert caught.value.key == key, (options, caught.value)


def test_units_and_batch_keys() -> None:
    assert units({"steps": 30, "images": 2, "width": 1024, "height": 512}) == {
        "steps": 30.0,
        "images": 2.0,
        "area": 2.0,
    }
    assert units({"steps": 20, "init_image": PNG_B64, "strength": 0.5})["steps"] == 10.0
    one = {"prompt": "a", "seed": 1, "steps": 20, "loras": [{"name": "x", "weight": 0.5}]}
    assert batch_key(one) == batch_key({**one, "prompt": "b", "seed": 9, "images": 3})
    assert batch_key(one) != batch_key({**one, "steps": 21})
    assert batch_key(one) != batch_key({**one, "loras": [{"name": "x", "weight": 0.6}]})
    assert batch_key(one) != batch_key({**one, "init_image": PNG_B64})
