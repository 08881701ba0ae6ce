"""Image GC decisions: pure, so ages are a clock argument and disk use a number."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor_agent.container.engine import ImageInfo
from executor_agent.imagegc import ID_KEY_PREFIX, DiskUsage, GcPolicy, ImageUsage, canonical_ref, plan_gc
from executor_agent.plugins.job_runner import JobRunnerError, load_job_runner

GB = 1024**3
POLICY = GcPolicy(min_age_s=3600, max_age_s=7 * 86400, disk_high_percent=85, disk_low_percent=70)
NOW = 1_000_000_000.0


def image(name: str, size_gb: float = 1.0) -> ImageInfo:
    return ImageInfo(image_id=f"{name}-id", names=(canonical_ref(name),), digests=(), size_bytes=int(size_gb * GB),
                     created_unix=0.0)


def usage(**idle_s: float) -> dict[str, float]:
    return {f"{ID_KEY_PREFIX}{name}-id": NOW - idle for name, idle in idle_s.items()}


def names(plan: list) -> list[tuple[str, str]]:
    return [(r.image.image_id.removesuffix("-id"), r.reason) for r in plan]


def test_canonical_refs() -> None:
    assert canonical_ref("python") == "docker.io/library/python:latest"
    assert canonical_ref("python:3.11") == "docker.io/library/python:3.11"
    assert canonical_ref("backenddevelopersltd/job:v1") == "docker.io/backenddevelopersltd/job:v1"
    assert canonical_ref("localhost:5000/a") == "localhost:5000/a:latest"
    assert canonical_ref("localhost/x:1") == "localhost/x:1"
    assert canonical_ref("ghcr.io/a/b@sha256:ab") == "ghcr.io/a/b@sha256:ab"


def test_age_rule_spares_young_preloaded_and_in_use() -> None:
    imgs = [image("old"), image("young"), image("preloaded"), image("running")]
    plan = plan_gc(imgs, now=NOW, usage=usage(old=8 * 86400, young=600, preloaded=30 * 86400, running=30 * 86400),
                   protected_refs=["preloaded"], in_use_ids={"running-id"}, disk=None, policy=POLICY)
    assert names(plan) == [("old", "unused")]


def test_never_seen_counts_as_just_used() -> None:
    assert plan_gc([image("new")], now=NOW, usage={}, protected_refs=[], in_use_ids=set(),
                   disk=DiskUsage(100 * GB, 99 * GB), policy=POLICY) == []


def test_disk_pressure_removes_lru_until_below_low() -> None:
    imgs = [image("a", 5), image("b", 5), image("c", 5), image("d", 5), image("keep", 50)]
    idle = usage(a=7200, b=4 * 3600, c=2 * 86400, d=1800, keep=10 * 3600)
    disk = DiskUsage(total_bytes=100 * GB, used_bytes=90 * GB)
    plan = plan_gc(imgs, now=NOW, usage=idle, protected_refs=["keep"], in_use_ids=set(), disk=disk, policy=POLICY)
    # least recently used first: c (2 days), b (4 h), a (2 h): 90 -> 85 -> 80 -> 75 %; d is too young
    assert names(plan) == [("c", "disk"), ("b", "disk"), ("a", "disk")]
    policy = GcPolicy(min_age_s=3600, max_age_s=0, disk_high_percent=80, disk_low_percent=70)
    plan = plan_gc(imgs, now=NOW, usage=idle, protected_refs=["keep"], in_use_ids=set(),
                   disk=DiskUsage(total_bytes=100 * GB, used_bytes=80 * GB), policy=policy)
    assert names(plan) == [("c", "disk"), ("b", "disk")]  # 80 -> 75 -> 70 %: low water mark reached


def test_below_high_water_mark_nothing_for_disk() -> None:
    imgs = [image("a", 5)]
    plan = plan_gc(imgs, now=NOW, usage=usage(a=7200), protected_refs=[], in_use_ids=set(),
                   disk=DiskUsage(100 * GB, 80 * GB), policy=POLICY)
    assert plan == []


def test_protected_by_any_name_or_digest() -> None:
    multi = ImageInfo("m-id", (canonical_ref("a:1"), canonical_ref("b:2")), ("docker.io/library/c@sha256:ff",), GB, 0)
    for ref in ("b:2", "c@sha256:ff"):
        assert plan_gc([multi], now=NOW, usage={"id:m-id": 0.0}, protected_refs=[ref], in_use_ids=set(),
                       disk=None, policy=POLICY) == []


def test_usage_file_round_trip(tmp_path: Path) -> None:
    u = ImageUsage(tmp_path / "u.json")
    u.first_seen([image("a"), image("b")], NOW)
    u.touch_ref("a", NOW + 10)
    u.keep_only([image("a")])
    u.save()
    again = ImageUsage(tmp_path / "u.json")
    assert again.times == {"id:a-id": NOW, "docker.io/library/a:latest": NOW + 10}


@pytest.mark.parametrize("path, text", [
    ("nodots", "expected"),
    ("no_such_module_xyz:Runner", "cannot import no_such_module_xyz"),
    ("executor_agent.plugins.job_runner:JobContext", "is not a subclass"),
])
def test_job_runner_load_errors(path: str, text: str) -> None:
    with pytest.raises(JobRunnerError) as info:
        load_job_runner(path, {})
    assert text in str(info.value) and path in str(info.value)


def test_job_runner_loads_both_spellings() -> None:
    for path in ("executor_agent.plugins.example_runner:ExampleRunner",
                 "executor_agent.plugins.example_runner.ExampleRunner"):
        runner = load_job_runner(path, {"env": {"A": 1}})
        assert runner.name == "executor_agent.plugins.example_runner:ExampleRunner"
