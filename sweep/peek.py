"""A study's best trial, its trials counted for `sweep status`, and the few columns of every
trial `sweep trials` needs, read straight from Optuna's tables.

Why not Optuna: opening its `RDBStorage` imports Optuna, SQLAlchemy and alembic and checks the
schema's version on every open, about 0.7 s before the first query (benchmarks/README.md), when
`sweep best` on a study of 10,000 trials needs two small queries; and `sweep status` needs counts
where Optuna builds every trial whole (params, attributes, every epoch's value: 6 s on 10,000
trials). So the read commands first ask
the database here, with the standard library's `sqlite3` or `psycopg2`, the same queries Optuna
runs; only a schema this module knows is read (Optuna's `alembic_version`), and anything else
(another schema, another database, an unusual URL, an error) returns None, and the caller goes
through Optuna as before. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from sweep.record import CONFIG_ATTR, counts_as_done

# Optuna's schema revisions whose tables, columns and encodings this module reads (Optuna 3.2-5.0)
KNOWN_SCHEMAS = {"v3.2.0.a"}
# a URL this module connects to itself: SQLite files, and PostgreSQL through psycopg2 (one `@` at
# most: sweep.storage repairs passwords with a bare `@`, and Optuna's path takes those)
_SQLITE = re.compile(r"sqlite:///(?P<path>[^?]+)")
_POSTGRES = re.compile(r"postgres(?:ql)?(?:\+psycopg2)?://(?P<rest>[^@]*@?[^@]*)")
_DIRECTIONS = {"MAXIMIZE": "maximize", "MINIMIZE": "minimize"}
_INF = {"INF_POS": float("inf"), "INF_NEG": float("-inf")}  # Optuna stores infinite values by their sign


@contextlib.contextmanager
def _connect(url: str) -> Iterator[Any]:
    sqlite = _SQLITE.fullmatch(url)
    if sqlite is not None:
        import sqlite3

        path = Path(sqlite["path"])
        if not path.is_file():
            raise LookupError(path)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        mark = "?"
    elif (postgres := _POSTGRES.fullmatch(url)) is not None:
        import psycopg2

        conn = psycopg2.connect("postgresql://" + postgres["rest"], connect_timeout=10)
        conn.set_session(readonly=True, autocommit=True)
        mark = "%s"
    else:
        raise LookupError(url)
    def query(sql: str, *args: Any) -> list[tuple]:
        return _rows(conn, sql.replace("?", mark), args)

    # a trial's seconds from start to end, NULL unless both are set (SQLite keeps text)
    query.seconds = ("(julianday(t.datetime_complete) - julianday(t.datetime_start)) * 86400.0" if mark == "?"
                     else "EXTRACT(EPOCH FROM t.datetime_complete - t.datetime_start)")
    try:
        yield query
    finally:
        conn.close()


def _rows(conn: Any, sql: str, args: tuple) -> list[tuple]:
    cur = conn.cursor()
    try:
        cur.execute(sql, args)
        return cur.fetchall()
    finally:
        cur.close()


def best(url: str, study: str) -> dict[str, Any] | None:
    """The best COMPLETE trial of a study of one objective, as Optuna's `Study.best_trial` finds
    it: {number, value, params, user_attrs, direction, config (the stored one, unvalidated)}.
    None when this module cannot say (the caller asks Optuna); {} when no trial is complete."""
    try:
        with _connect(url) as query:
            study_id = _study_id(query, study)
            if study_id is None:
                return None
            directions = query("SELECT direction FROM study_directions WHERE study_id = ? ORDER BY objective",
                               study_id)
            if len(directions) != 1:
                return None
            direction = _DIRECTIONS[_name(directions[0][0])]
            # Optuna's own ordering (models.TrialModel.find_max/min_value_trial_id): infinities
            # by their sign, then the value; ties in the database's order, as there
            order = "DESC" if direction == "maximize" else "ASC"
            rows = query(
                "SELECT t.trial_id, t.number, v.value, v.value_type FROM trials t "
                "JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = ? AND t.state = 'COMPLETE' AND v.objective = 0 "
                "ORDER BY CASE WHEN v.value_type = 'INF_NEG' THEN -1 WHEN v.value_type = 'FINITE' THEN 0 "
                f"WHEN v.value_type = 'INF_POS' THEN 1 END {order}, v.value {order} LIMIT 1", study_id)
            if not rows:
                return {}
            trial_id, number, value, value_type = rows[0]
            value = _INF.get(value_type, value)
            params = {name: _external(v, dist) for name, v, dist in query(
                "SELECT param_name, param_value, distribution_json FROM trial_params WHERE trial_id = ?", trial_id)}
            attrs = {k: json.loads(v) for k, v in query(
                "SELECT key, value_json FROM trial_user_attributes WHERE trial_id = ?", trial_id)}
            config = _config(query, study_id)
    except Exception:  # noqa: BLE001 - any trouble here: Optuna's path reads it, or says what is wrong
        return None
    return {"number": number, "value": float(value), "params": params, "user_attrs": attrs,
            "direction": direction, "config": config}


@dataclass
class Brief:
    """The columns of one trial a read command needs, under the names of Optuna's `FrozenTrial`,
    so the same code reads either (`state` is the name: COMPLETE, RUNNING...). Only what the
    query asked for is filled in."""

    number: int
    state: str
    datetime_start: dt.datetime | None = None
    datetime_complete: dt.datetime | None = None
    values: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)  # retry_history
    last_step: int | None = None

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    @property
    def duration(self) -> dt.timedelta | None:
        if self.datetime_start and self.datetime_complete:
            return self.datetime_complete - self.datetime_start
        return None


@dataclass
class Tally:
    """What `sweep status` says of a study, counted: trials by state and by worker, those done for
    good (`sweep.runner.worker.done`) and their summed seconds, the running ones in brief, the
    retried ones. `target` is the stored `sweep.target`; `config` the stored config, for a study
    stored before `sweep.target` existed."""

    states: dict[str, int]
    by_worker: dict[str, dict[str, int]]
    done: int
    done_seconds: float  # summed over the done trials with a start and an end
    done_timed: int  # how many those are
    running: list[Brief]  # by number: number, datetime_start, the worker, last_step
    retried: int
    target: int | None = None
    config: dict[str, Any] | None = None


def tally(url: str, study: str) -> Tally | None:
    """`study` counted in the database (GROUP BY: a few rows, however many trials), the running
    trials and the retried ones read row by row (a few); None: ask Optuna."""
    from sweep.record import INTERRUPTED, TARGET_ATTR, WORKER

    try:
        with _connect(url) as query:
            study_id = _study_id(query, study)
            if study_id is None:
                return None
            attr = ("LEFT JOIN trial_user_attributes {0} ON {0}.trial_id = t.trial_id AND {0}.key = '{1}' ")
            worker, interrupted = attr.format("w", WORKER), attr.format("i", INTERRUPTED)
            groups = query(
                f"SELECT t.state, w.value_json, i.value_json, COUNT(*), SUM({query.seconds}), COUNT({query.seconds}) "
                f"FROM trials t {worker}{interrupted}WHERE t.study_id = ? "
                "GROUP BY t.state, w.value_json, i.value_json", study_id)
            running = query(
                f"SELECT t.number, t.datetime_start, w.value_json, MAX(v.step) FROM trials t {worker}"
                "LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = ? AND t.state = 'RUNNING' "
                "GROUP BY t.number, t.datetime_start, w.value_json ORDER BY t.number", study_id)
            retried: set[int] = set()
            for (history,) in query(
                    "SELECT r.value_json FROM trial_system_attributes r JOIN trials t ON t.trial_id = r.trial_id "
                    "WHERE t.study_id = ? AND r.key = 'retry_history'", study_id):
                retried.update(int(n) for n in json.loads(history))
            superseded = query(
                f"SELECT t.state, i.value_json, {query.seconds} FROM trials t {interrupted}"
                f"WHERE t.study_id = ? AND t.number IN ({', '.join(str(n) for n in sorted(retried))})",
                study_id) if retried else []
            attrs = dict(query("SELECT key, value_json FROM study_user_attributes WHERE study_id = ? AND key IN (?, ?)",
                               study_id, TARGET_ATTR, CONFIG_ATTR))
    except Exception:  # noqa: BLE001 - as in best()
        return None
    states: dict[str, int] = {}
    by_worker: dict[str, dict[str, int]] = {}
    done, seconds, timed = 0, 0.0, 0
    for state, worker_json, interrupted_json, n, summed, n_timed in groups:
        state, w = _name(state), (json.loads(worker_json) if worker_json is not None else None) or "-"
        states[state] = states.get(state, 0) + n
        by_worker.setdefault(w, {})[state] = by_worker.get(w, {}).get(state, 0) + n
        if counts_as_done(state, interrupted_json is not None and json.loads(interrupted_json)):
            done, seconds, timed = done + n, seconds + float(summed or 0.0), timed + n_timed
    for state, interrupted_json, s in superseded:  # retried: no longer counted
        if counts_as_done(_name(state), interrupted_json is not None and json.loads(interrupted_json)):
            done -= 1
            if s is not None:
                seconds, timed = seconds - float(s), timed - 1
    briefs = [Brief(number, "RUNNING", _when(start), last_step=step,
                    user_attrs={WORKER: json.loads(w)} if w is not None else {})
              for number, start, w, step in running]
    target = json.loads(attrs[TARGET_ATTR]) if TARGET_ATTR in attrs else None
    config = json.loads(attrs[CONFIG_ATTR]) if target is None and CONFIG_ATTR in attrs else None
    return Tally(states, by_worker, done, seconds, timed, briefs, len(retried), target, config)


def trials(url: str, study: str, attrs: tuple[str, ...]) -> tuple[list[Brief], dict[str, Any] | None] | None:
    """Every trial of `study` by number: state, values (complete ones), params as the trial saw
    them, and the user attributes `attrs` where set; and its stored config. None: ask Optuna."""
    try:
        with _connect(url) as query:
            study_id = _study_id(query, study)
            if study_id is None:
                return None
            rows = {tid: Brief(n, _name(st)) for tid, n, st in query(
                "SELECT trial_id, number, state FROM trials WHERE study_id = ? ORDER BY number", study_id)}
            values: dict[int, dict[int, float]] = {}
            for tid, objective, value, value_type in query(
                    "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v JOIN trials t "
                    "ON t.trial_id = v.trial_id WHERE t.study_id = ?", study_id):
                values.setdefault(tid, {})[objective] = _INF.get(value_type, value)
            for tid, by_objective in values.items():
                rows[tid].values = [by_objective[k] for k in sorted(by_objective)]
            for tid, name, value, dist in query(
                    "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json FROM trial_params p "
                    "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = ?", study_id):
                rows[tid].params[name] = _external(value, dist)
            marks = ", ".join("?" * len(attrs))
            for tid, key, value in query(
                    "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a JOIN trials t "
                    f"ON t.trial_id = a.trial_id WHERE t.study_id = ? AND a.key IN ({marks})", study_id, *attrs):
                rows[tid].user_attrs[key] = json.loads(value)
            config = _config(query, study_id)
    except Exception:  # noqa: BLE001 - as in best()
        return None
    return list(rows.values()), config


def study_attrs(url: str, study: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The study's user attributes named `keys` that are set; None: ask Optuna."""
    try:
        with _connect(url) as query:
            study_id = _study_id(query, study)
            if study_id is None:
                return None
            marks = ", ".join("?" * len(keys))
            rows = query(f"SELECT key, value_json FROM study_user_attributes WHERE study_id = ? AND key IN ({marks})",
                         study_id, *keys)
    except Exception:  # noqa: BLE001 - as in best()
        return None
    return {k: json.loads(v) for k, v in rows}


def _config(query: Any, study_id: int) -> dict[str, Any] | None:
    """The study's stored sweep config, unvalidated (sweep.record.stored_parse validates it)."""
    found = query("SELECT value_json FROM study_user_attributes WHERE study_id = ? AND key = ?", study_id,
                  CONFIG_ATTR)
    return json.loads(found[0][0]) if found else None


def _study_id(query: Any, study: str) -> int | None:
    """The study's id, if the schema is one this module reads."""
    if not {r[0] for r in query("SELECT version_num FROM alembic_version")} <= KNOWN_SCHEMAS:
        return None
    found = query("SELECT study_id FROM studies WHERE study_name = ?", study)
    return found[0][0] if found else None


def _when(value: Any) -> dt.datetime | None:
    """A timestamp as Optuna reads it: naive, local (SQLite gives text, psycopg2 a datetime)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _name(enum_value: Any) -> str:
    """An enum column's member name (COMPLETE, MAXIMIZE), whichever form the driver returns."""
    return str(enum_value).rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=256)
def _distribution(distribution_json: str) -> tuple[str, Any]:
    """A param's distribution: its name and attributes (every trial repeats the same few)."""
    dist = json.loads(distribution_json)
    return dist["name"], dist["attributes"]


def _external(value: float, distribution_json: str) -> Any:
    """A parameter as the trial saw it (Optuna's `distribution.to_external_repr`)."""
    name, attrs = _distribution(distribution_json)
    if name == "CategoricalDistribution":
        return attrs["choices"][int(value)]
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(value)
    if name in ("FloatDistribution", "UniformDistribution", "LogUniformDistribution",
                "DiscreteUniformDistribution"):
        return float(value)
    raise LookupError(name)
