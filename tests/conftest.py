"""Shared test settings: hypothesis without per-example deadlines (the machine is noisy)."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "loopix", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40
)
settings.load_profile("loopix")
