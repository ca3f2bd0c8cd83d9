"""Cron expressions of sync ``schedule``s, read in UTC.

Five fields (minute hour day-of-month month day-of-week) with the usual
``*``, lists, ranges, steps, names and ``L``; the nicknames ``@hourly``,
``@daily`` (``@midnight``), ``@weekly``, ``@monthly`` and ``@yearly``
(``@annually``). Evaluation is cronsim's; this module fixes the dialect and
the clock: every time in and out is an aware UTC datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NICKNAMES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def expand(expr: str) -> str:
    """The five-field form of ``expr``; ValueError saying what is wrong with it."""
    from cronsim import CronSim, CronSimError

    text = " ".join(expr.split())
    text = NICKNAMES.get(text.lower(), text)
    if len(text.split()) != 5:
        raise ValueError(
            f"schedule '{expr}' is not a cron expression: it needs five fields "
            "(minute hour day-of-month month day-of-week, in UTC), e.g. '0 * * * *' "
            "for every hour, or a nickname such as @daily"
        )
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"schedule '{expr}' is not a valid cron expression: {exc}") from None
    return text


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def next_after(expr: str, moment: datetime) -> datetime:
    """The first tick of ``expr`` strictly after ``moment``."""
    from cronsim import CronSim

    return utc(next(CronSim(expand(expr), utc(moment).replace(microsecond=0))))


def latest_at_or_before(expr: str, moment: datetime) -> datetime:
    """The last tick of ``expr`` at or before ``moment``."""
    from cronsim import CronSim

    start = utc(moment).replace(microsecond=0) + timedelta(seconds=1)
    return utc(next(CronSim(expand(expr), start, reverse=True)))


def describe(expr: str) -> str:
    """``expr`` in words, e.g. 'At minute 0' (cronsim's wording), for people."""
    from cronsim import CronSim

    return CronSim(expand(expr), datetime(2000, 1, 1, tzinfo=UTC)).explain()
