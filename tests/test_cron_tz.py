"""`tz:` on a cron line, and crontab's rule for the two day fields (either may match)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.model import SourceSpec
from bridge.polling.scheduler import CronSchedule
from tests.conftest import STDOUT, bridge_config, http_source, run_cli

BERLIN = ZoneInfo("Europe/Berlin")


def spec(cron: str, tz: str | None = None) -> SourceSpec:
    return SourceSpec(
        name="s",
        kind="http",
        every=None,
        cron=cron,
        tz=tz,
        jitter=0.0,
        timeout=10.0,
        on=None,
        on_first_poll="baseline",
        alert_after=None,
        max_bytes=1024,
        webhooks=(),
        ignore=(),
    )


def runs(cron: str, tz: str | None, start: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `start`, in `tz` (UTC when None)."""
    schedule = CronSchedule(spec(cron, tz))
    zone = ZoneInfo(tz) if tz else UTC
    at, out = start.timestamp(), []
    for _ in range(count):
        at = schedule.next_after(at)
        out.append(datetime.fromtimestamp(at, zone))
    return out


def test_daily_0230_across_spring_forward() -> None:
    # 2026-03-29 02:30 does not exist in Berlin (02:00 -> 03:00): that day's run is at 03:30
    # CEST, wall-clock 02:30 resumes the day after, and the UTC offset moves from +1 to +2.
    got = runs("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 27, 12, tzinfo=BERLIN), 4)
    assert [t.strftime("%m-%d %H:%M %z") for t in got] == [
        "03-28 02:30 +0100",
        "03-29 03:30 +0200",
        "03-30 02:30 +0200",
        "03-31 02:30 +0200",
    ]
    assert [t.astimezone(UTC).hour for t in got] == [1, 1, 0, 0]


def test_daily_0230_across_fall_back_runs_once() -> None:
    # 2026-10-25 02:30 happens twice in Berlin (03:00 CEST -> 02:00 CET): one run, not two.
    got = runs("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 23, 12, tzinfo=BERLIN), 4)
    days = [t.strftime("%m-%d %H:%M") for t in got]
    assert days == ["10-24 02:30", "10-25 02:30", "10-26 02:30", "10-27 02:30"]
    assert [t.astimezone(UTC).strftime("%H:%M") for t in got] == [
        "00:30",
        "00:30",  # the first 02:30 (CEST)
        "01:30",
        "01:30",
    ]


def test_hourly_line_goes_on_through_the_repeated_hour() -> None:
    got = runs("30 * * * *", "Europe/Berlin", datetime(2026, 10, 25, 1, tzinfo=BERLIN), 3)
    assert [t.strftime("%H:%M %z") for t in got] == ["01:30 +0200", "02:30 +0200", "02:30 +0100"]


def test_weekdays_at_nine_keep_wall_clock_time_across_both_changes() -> None:
    spring = runs("0 9 * * 1-5", "Europe/Berlin", datetime(2026, 3, 26, 12, tzinfo=BERLIN), 3)
    assert [t.strftime("%a %m-%d %H:%M %z") for t in spring] == [
        "Fri 03-27 09:00 +0100",
        "Mon 03-30 09:00 +0200",  # the weekend (and the change on Sunday) skipped
        "Tue 03-31 09:00 +0200",
    ]
    autumn = runs("0 9 * * 1-5", "Europe/Berlin", datetime(2026, 10, 22, 12, tzinfo=BERLIN), 3)
    assert [t.strftime("%a %m-%d %H:%M %z") for t in autumn] == [
        "Fri 10-23 09:00 +0200",
        "Mon 10-26 09:00 +0100",
        "Tue 10-27 09:00 +0100",
    ]
    assert [t.astimezone(UTC).hour for t in spring + autumn] == [8, 7, 7, 7, 8, 8]


def test_without_tz_cron_runs_in_utc() -> None:
    got = runs("0 9 * * 1-5", None, datetime(2026, 3, 27, 10, tzinfo=UTC), 2)
    assert [t.strftime("%a %H:%M %z") for t in got] == ["Mon 09:00 +0000", "Tue 09:00 +0000"]


def test_day_of_month_or_day_of_week_as_crontab() -> None:
    # crontab: "0 0 13 * 5" is midnight on the 13th of each month AND on every Friday
    got = runs("0 0 13 * 5", None, datetime(2026, 2, 1, tzinfo=UTC), 8)
    assert [t.strftime("%a %m-%d") for t in got] == [
        "Fri 02-06",
        "Fri 02-13",  # both: one run
        "Fri 02-20",
        "Fri 02-27",
        "Fri 03-06",
        "Fri 03-13",
        "Fri 03-20",
        "Fri 03-27",
    ]
    got = runs("0 0 13 * 5", "Europe/Berlin", datetime(2026, 4, 1, tzinfo=BERLIN), 5)
    assert [t.strftime("%a %m-%d %H:%M") for t in got] == [
        "Fri 04-03 00:00",
        "Fri 04-10 00:00",
        "Mon 04-13 00:00",  # the 13th, not a Friday
        "Fri 04-17 00:00",
        "Fri 04-24 00:00",
    ]
    # a day field starting with * is unrestricted, as in crontab: then the fields AND
    got = runs("0 0 */2 * 5", None, datetime(2026, 2, 1, tzinfo=UTC), 2)
    assert [t.strftime("%a %m-%d") for t in got] == ["Fri 02-13", "Fri 02-27"]


def config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "bridge.yaml"
    defaults = extra.pop("defaults", None)
    src = http_source("s", "http://127.0.0.1:1/x", webhooks=["out"], **extra)
    path.write_text(bridge_config(src, webhooks=STDOUT, defaults=defaults))  # type: ignore[arg-type]
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


def test_tz_config(tmp_path: Path) -> None:
    path = config(tmp_path, cron="30 2 * * *", tz="Europe/Berlin")
    assert load_config(path, env={}).sources[0].tz == "Europe/Berlin"
    assert load_config(config(tmp_path, cron="30 2 * * *"), env={}).sources[0].tz is None
    # from defaults:, for the sources with cron (an every: source keeps none)
    path = config(tmp_path, cron="0 0 13 * 5", defaults={"tz": "Asia/Tokyo"})
    assert load_config(path, env={}).sources[0].tz == "Asia/Tokyo"
    path = config(tmp_path, every="5m", defaults={"tz": "Asia/Tokyo"})
    assert load_config(path, env={}).sources[0].tz is None


def test_tz_errors_name_file_and_line(tmp_path: Path) -> None:
    path = config(tmp_path, cron="30 2 * * *", tz="Europe/Nowhere")
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "tz:" in t)
    assert load_error(path) == (
        f"{path}:{line}: sources[0].tz: unknown time zone 'Europe/Nowhere' "
        "(an IANA name such as Europe/Berlin or UTC)"
    )
    path = config(tmp_path, every="5m", tz="Europe/Berlin")
    message = load_error(path)
    assert message.startswith(f"{path}:{line}: sources[0].tz: ")
    assert "has no cron" in message


@pytest.mark.slow  # runs `bridge check`
def test_check_accepts_both_day_fields_and_shows_the_zone(tmp_path: Path) -> None:
    path = config(tmp_path, cron="0 0 13 * 5", tz="Europe/Berlin")
    result = run_cli("check", "-c", str(path))
    assert result.code == 0, result.stderr
    assert "cron 0 0 13 * 5 (Europe/Berlin)" in result.stdout
