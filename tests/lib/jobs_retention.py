"""An independent oracle for restic's `forget` policy, for checking jobs/lib/retention.lua.

Calendar buckets come from Python's datetime (isocalendar for weeks), not from the
Lua civil-date code under test, so the two implementations check each other.
"""
import datetime as dt
import re

UTC = dt.timezone.utc

COUNT_RULES = [
    ("keepLast", "last", None),
    ("keepHourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keepDaily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keepWeekly", "weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("keepMonthly", "monthly", lambda t: (t.year, t.month)),
    ("keepYearly", "yearly", lambda t: t.year),
]


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(s):
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def add_date(t, years=0, months=0, days=0):
    """Go's time.AddDate: month arithmetic, then day overflow rolls over."""
    m = t.year * 12 + (t.month - 1) + years * 12 + months
    y, mo = divmod(m, 12)
    first = t.replace(year=y, month=mo + 1, day=1)
    return first + dt.timedelta(days=t.day - 1 + days)


def parse_duration(s):
    parts = dict((u, int(n)) for n, u in re.findall(r"(\d+)([ymdh])", s))
    return parts.get("y", 0), parts.get("m", 0), parts.get("d", 0), parts.get("h", 0)


def oracle(items, policy, now):
    """items: [(id, datetime)]; returns (kept ids newest first, removed ids newest first)."""
    order = sorted(items, key=lambda x: (x[1], x[0]), reverse=True)
    past = [t for _, t in order if t < now]
    latest = max(past) if past else None
    within_from = None
    if "keepWithin" in policy:
        y, mo, d, h = parse_duration(policy["keepWithin"])
        within_from = (add_date(latest, -y, -mo, -d) - dt.timedelta(hours=h)) if latest else None
    state = []
    for key, _, fn in COUNT_RULES:
        n = policy.get(key, 0)
        if n:
            state.append([key, fn, n, None])
    kept, removed = [], []
    for nr, (ident, t) in enumerate(order):
        keep = nr == 0
        if "keepWithin" in policy and (within_from is None or t > within_from):
            keep = True
        for s in state:
            key, fn, count, last = s
            if count == 0:
                continue
            val = nr if fn is None else fn(t)
            if val != last or nr == len(order) - 1:
                keep = True
                s[3] = val
                if count > 0:
                    s[2] = count - 1
        (kept if keep else removed).append(ident)
    return kept, removed
