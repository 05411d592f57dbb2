"""The sensor of a pipeline: reclaim stale leases, scan and register files, add partitions for
new hashes, and request runs — batched into partition ranges — for the files that need work."""


import dagster as dg

from filedge_core import PipelineEntry, plan_run

from .assets import asset_key
from .partitions import file_partitions, safe_name
from .resources import FiledgeResource

PIPELINE_TAG = "filedge/pipeline"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _in_flight(instance: dg.DagsterInstance, pipeline: str, position: dict[str, int], order: list[str]) -> set[str]:
    """Partition keys covered by this pipeline's runs that have not finished yet."""
    covered: set[str] = set()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_ACTIVE, tags={PIPELINE_TAG: pipeline}))
    for run in runs:
        start, end = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
        if start in position and end in position:
            covered.update(order[position[start] : position[end] + 1])
        elif run.tags.get("dagster/partition"):
            covered.add(run.tags["dagster/partition"])
    return covered


def batches(positions: list[int], size: int) -> list[tuple[int, int]]:
    """Contiguous runs of sorted positions, each at most ``size`` long, as (first, last)."""
    out: list[tuple[int, int]] = []
    for pos in positions:
        if out and pos == out[-1][1] + 1 and pos - out[-1][0] < size:
            out[-1] = (out[-1][0], pos)
        else:
            out.append((pos, pos))
    return out


def build_sensor(entry: PipelineEntry) -> dg.SensorDefinition:
    """The discovery sensor of one pipeline, running by default."""
    name = entry.name
    partitions = file_partitions(name)
    key = asset_key(name)

    @dg.sensor(
        name=f"filedge_{safe_name(name)}_sensor",
        minimum_interval_seconds=entry.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=[key],
        description=f"Finds new files in {entry.directory} and requests runs of {key.to_user_string()}.",
    )
    def discover(context: dg.SensorEvaluationContext, filedge: FiledgeResource) -> dg.SensorResult:
        pipeline = filedge.pipeline(name)
        plan = plan_run(pipeline.config, pipeline.directory, filedge.audit(name))
        existing = list(context.instance.get_dynamic_partitions(partitions.name))
        known = set(existing)
        new_keys = [h for h in plan.seen if h not in known]
        order = existing + new_keys
        position = {k: i for i, k in enumerate(order)}
        busy = _in_flight(context.instance, name, position, order)
        todo = sorted(position[item.file_hash] for item in plan.items if item.file_hash not in busy)
        requests = [
            dg.RunRequest(
                asset_selection=[key],
                tags={PIPELINE_TAG: name, RANGE_START: order[first], RANGE_END: order[last]},
            )
            for first, last in batches(todo, pipeline.run_batch_size)
        ]
        s = plan.summary
        context.log.info(
            f"{name}: {len(plan.seen)} file(s) seen, {s.new} new, {s.reclaimed} lease(s) reclaimed, "
            f"{len(todo)} to load in {len(requests)} run(s), {len(busy)} in flight"
        )
        for warning in s.warnings:  # e.g. a file that could not be read or cleaned up
            context.log.warning(f"{name}: {warning}")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions.build_add_request(new_keys)] if new_keys else [],
            skip_reason=None if requests or new_keys else "no new files",
        )

    return discover
