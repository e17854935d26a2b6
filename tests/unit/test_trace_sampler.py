"""The sampler follows the standard OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG variables."""

from __future__ import annotations

import pytest

from svckit.telemetry import sampler_from_env


@pytest.mark.parametrize(("env", "description"), [
    ({}, "ParentBased{root:AlwaysOnSampler"),
    ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "TraceIdRatioBased{0.25}"),
    ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
     "ParentBased{root:TraceIdRatioBased{0.1}"),
])
def test_standard_names(env: dict[str, str], description: str) -> None:
    assert sampler_from_env(env).get_description().startswith(description)


def test_ratio_samples_about_that_share_of_new_traces() -> None:
    sampler = sampler_from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    kept = sum(sampler.should_sample(None, (i * 0x9E3779B97F4A7C15) % 2**128, "x").decision.is_sampled()
               for i in range(1, 2001))
    assert 800 < kept < 1200


@pytest.mark.parametrize("env", [{"OTEL_TRACES_SAMPLER": "sometimes"},
                                 {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
                                 {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}])
def test_bad_values_refuse_to_start(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER"):
        sampler_from_env(env)
