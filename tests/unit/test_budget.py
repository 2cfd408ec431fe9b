"""The overhead-budget controller and cost meter on recorded cost sequences: bounded, cut while over budget, raised
while well under it, held in between."""

from __future__ import annotations

import pydantic
import pytest

from podspan_agent import budget
from podspan_api import models


def run(controller: budget.Controller, costs: list[float]) -> list[float]:
    return [round(controller.update(cost), 4) for cost in costs]


def test_over_budget_cuts_in_proportion_at_most_tenfold_and_never_below_the_minimum() -> None:
    controller = budget.Controller(5.0)
    # 40% at full capture: 0.9 * 5 / 40 = 0.1125 fits; 500% would ask for 0.009, but one step at most divides by 10.
    assert run(controller, [40.0]) == [0.1125]
    controller = budget.Controller(5.0)
    assert run(controller, [500.0, 9.0]) == [0.1, 0.05]
    assert controller.throttled
    assert run(controller, [30.0] * 10)[-1] == 0.01  # a cost the fraction cannot fix: pinned at the minimum


def test_within_the_band_holds_and_well_under_raises_additively_up_to_what_fits() -> None:
    controller = budget.Controller(5.0)
    run(controller, [18.0])  # 0.25
    assert run(controller, [4.5, 4.1]) == [0.25, 0.25]  # 80-100% of the budget: hold (hysteresis)
    # 2% at 0.25 predicts 0.25 * 0.9 * 5 / 2 = 0.5625 fits; each step adds at most 0.05.
    assert run(controller, [2.0, 2.0]) == [0.3, 0.35]
    # Nearly nothing costs: back to 1 and no further.
    assert run(controller, [0.1] * 20)[-1] == 1.0 and not controller.throttled


def test_a_recorded_saturation_sequence_settles_within_budget() -> None:
    # Cost proportional to the fraction (60% at 1.0) plus 0.5% fixed, as measured at saturated nginx.
    controller = budget.Controller(5.0)
    for _ in range(60):
        controller.update(0.5 + 60.0 * controller.fraction)
    cost = 0.5 + 60.0 * controller.fraction
    assert 0.8 * 5.0 <= cost <= 5.0


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        budget.Controller(0.0)


def test_cost_meter_rates_between_readings() -> None:
    meter = budget.CostMeter()
    assert meter.update(0, 0, 0) is None
    cost = meter.update(1_000_000_000, 50_000_000, 20_000_000)
    assert cost is not None and (cost.userspace_percent, cost.bpf_percent, cost.percent) == (5.0, 2.0, 7.0)
    assert meter.update(1_000_000_000, 60_000_000, 20_000_000) is None  # no time passed
    reloaded = meter.update(2_000_000_000, 70_000_000, 5_000_000)  # BPF counters restarted: unknown, not negative
    assert reloaded is not None and reloaded.bpf_percent == 0.0 and reloaded.userspace_percent == 1.0


def test_model_budget_is_optional_and_positive() -> None:
    spec = {"selector": {}, "export": {"otlp": {"endpoint": "http://collector:4317"}}}
    assert models.TraceProfileSpec.model_validate(spec).overhead_budget is None
    parsed = models.TraceProfileSpec.model_validate({**spec, "overheadBudget": {"cpuPercent": 5}})
    assert parsed.overhead_budget == models.OverheadBudget(cpu_percent=5.0)
    assert parsed.to_k8s()["overheadBudget"] == {"cpuPercent": 5.0}
    for bad in (0, -1, "lots"):
        with pytest.raises(pydantic.ValidationError):
            models.TraceProfileSpec.model_validate({**spec, "overheadBudget": {"cpuPercent": bad}})
    with pytest.raises(pydantic.ValidationError):
        models.TraceProfileSpec.model_validate({**spec, "overheadBudget": {}})
