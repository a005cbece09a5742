"""Settings to engine groups (server/group_plan.py): which groups, on which devices, where.

The rule is pure given the number of CUDA devices torch sees, so every host shape (none, one,
two, eight GPUs) is checked here; the errors say what to change.
"""

from __future__ import annotations

import pytest

from headcast.server.group_plan import GroupPlan, PlanError, plan_groups, visible_cuda_devices
from headcast.server.settings import SettingsError, load_settings
from tests.conftest import REPO_ROOT


def _plan(cuda_devices: int, **settings: object) -> list[GroupPlan]:
    return plan_groups(load_settings(None, **settings), cuda_devices)


def test_the_default_is_one_engine_in_the_server_process_without_cuda() -> None:
    for engine in ("puppet", "tiny", "flashtalk"):
        assert _plan(0, engine=engine) == [GroupPlan(0, ("cpu",), in_process=True)]


def test_the_puppet_never_takes_a_gpu() -> None:
    assert _plan(8, engine="puppet") == [GroupPlan(0, ("cpu",), in_process=True)]
    assert visible_cuda_devices("puppet") == 0  # and asks torch nothing


def test_one_gpu_runs_in_the_server_process_as_it_always_did() -> None:
    assert _plan(1, engine="flashtalk") == [GroupPlan(0, ("cuda:0",), in_process=True)]
    assert _plan(4, engine="tiny", gpus=[3]) == [GroupPlan(0, ("cuda:3",), in_process=True)]


def test_every_visible_gpu_makes_groups_of_worker_processes() -> None:
    assert _plan(2, engine="flashtalk") == [
        GroupPlan(0, ("cuda:0",), in_process=False),
        GroupPlan(1, ("cuda:1",), in_process=False),
    ]
    assert _plan(8, engine="flashtalk", gpus_per_session=4) == [
        GroupPlan(0, ("cuda:0", "cuda:1", "cuda:2", "cuda:3"), in_process=False),
        GroupPlan(1, ("cuda:4", "cuda:5", "cuda:6", "cuda:7"), in_process=False),
    ]
    assert _plan(2, engine="flashtalk", gpus_per_session=2) == [
        GroupPlan(0, ("cuda:0", "cuda:1"), in_process=False)
    ]


def test_gpus_that_do_not_fill_a_group_stay_idle(caplog: pytest.LogCaptureFixture) -> None:
    plans = _plan(3, engine="flashtalk", gpus_per_session=2)
    assert plans == [GroupPlan(0, ("cuda:0", "cuda:1"), in_process=False)]
    assert "[2] stay idle" in caplog.text


def test_listed_gpus_keep_their_order() -> None:
    assert _plan(4, engine="flashtalk", gpus=[2, 3, 0, 1], gpus_per_session=2) == [
        GroupPlan(0, ("cuda:2", "cuda:3"), in_process=False),
        GroupPlan(1, ("cuda:0", "cuda:1"), in_process=False),
    ]


def test_indexes_without_cuda_are_cpu_worker_slots() -> None:
    assert _plan(0, engine="puppet", gpus=[0, 1]) == [
        GroupPlan(0, ("cpu",), in_process=False),
        GroupPlan(1, ("cpu",), in_process=False),
    ]
    assert _plan(0, engine="tiny", gpus=[0, 1], gpus_per_session=2) == [
        GroupPlan(0, ("cpu", "cpu"), in_process=False)
    ]


def test_impossible_layouts_say_what_to_change() -> None:
    with pytest.raises(PlanError, match=r"no GPU for the puppet engine; list 2 CPU worker slots"):
        _plan(0, engine="puppet", gpus_per_session=2)
    with pytest.raises(PlanError, match=r"torch sees 1 GPU\(s\); lower gpus_per_session"):
        _plan(1, engine="flashtalk", gpus_per_session=2)
    with pytest.raises(PlanError, match=r"device\(s\) \[2\] but torch sees 2 GPU\(s\) \(0\.\.1\)"):
        _plan(2, engine="flashtalk", gpus=[1, 2])
    with pytest.raises(SettingsError, match="gpus_per_session to a divisor of 3"):
        load_settings(None, gpus=[0, 1, 2], gpus_per_session=2)
    with pytest.raises(SettingsError, match="listed twice"):
        load_settings(None, gpus=[1, 1])
    assert issubclass(PlanError, SettingsError)  # the CLI reports it like a bad setting


@pytest.mark.parametrize(
    ("profile", "gpus_on_host", "groups"),
    [
        ("realtime-1gpu.yaml", 2, [("cuda:0",), ("cuda:1",)]),
        ("realtime-2gpu.yaml", 2, [("cuda:0", "cuda:1")]),
        ("realtime-2gpu.yaml", 8, [(f"cuda:{i}", f"cuda:{i + 1}") for i in range(0, 8, 2)]),
        ("realtime-4gpu.yaml", 8, [tuple(f"cuda:{i}" for i in r) for r in (range(4), range(4, 8))]),
    ],
)
def test_the_multi_gpu_profiles_make_the_groups_they_promise(
    profile: str, gpus_on_host: int, groups: list[tuple[str, ...]]
) -> None:
    settings = load_settings(REPO_ROOT / "configs" / profile)
    plans = plan_groups(settings, gpus_on_host)
    assert [plan.devices for plan in plans] == groups
    assert not any(plan.in_process for plan in plans)


def test_the_4gpu_profile_on_a_2gpu_host_says_so() -> None:
    settings = load_settings(REPO_ROOT / "configs" / "realtime-4gpu.yaml")
    with pytest.raises(PlanError, match="gpus_per_session is 4 but torch sees 2 GPU"):
        plan_groups(settings, 2)
