from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import postgres_database, fail_without_postgres, study_dict, write_study

from sweep import storage, urls
from sweep.settings import load_settings
from sweep.errors import ConfigError, ServiceError

SECRET = "s3cr3t-Pa55"
POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
# passwords as users write them: unescaped `/ ? @ :`, and percent-escaped
RAW_PASSWORDS = [SECRET, f"pa/ss?w@rd:{SECRET}", f"{SECRET}@x/y?z", f"p@ss:w/{SECRET}@"]


def test_mask_hides_passwords() -> None:
    assert urls.mask(f"postgresql://bob:{SECRET}@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert urls.mask(f"http://u:{SECRET}@mlflow:5000") == "http://u:***@mlflow:5000"
    assert urls.mask("sqlite:///a.db") == "sqlite:///a.db"


@pytest.mark.parametrize("password", RAW_PASSWORDS)
def test_mask_hides_unescaped_and_escaped_passwords(password: str) -> None:
    from urllib.parse import quote

    for pw in (password, quote(password, safe="")):
        assert urls.mask(f"postgresql://bob:{pw}@db:5432/x?sslmode=require") == \
            "postgresql://bob:***@db:5432/x?sslmode=require"
        assert urls.mask(f"postgresql+psycopg2://bob:{pw}@db/x") == "postgresql+psycopg2://bob:***@db/x"
        assert urls.mask(f"https://bob:{pw}@mlflow.example:443/") == "https://bob:***@mlflow.example:443/"
        assert urls.mask(f"mysql://bob:{pw}@[::1]:3306/x") == "mysql://bob:***@[::1]:3306/x"


def test_mask_hides_password_parameters_and_urls_inside_text() -> None:
    assert urls.mask(f"postgresql://bob@db/x?password={SECRET}&sslmode=require") == \
        "postgresql://bob@db/x?password=***&sslmode=require"
    assert urls.mask(f"http://mlflow:5000/?user=bob&password={SECRET}") == \
        "http://mlflow:5000/?user=bob&password=***"
    text = (f"(psycopg2.OperationalError) connection to postgresql://bob:pa/ss?w@{SECRET}@db:5432/x failed; "
            f"tracking at 'http://u:{SECRET}@mlflow:5000/api'; dsn: host=db password={SECRET} dbname=x")
    masked = urls.mask(text)
    assert SECRET not in masked
    assert masked == ("(psycopg2.OperationalError) connection to postgresql://bob:***@db:5432/x failed; "
                      "tracking at 'http://u:***@mlflow:5000/api'; dsn: host=db password=*** dbname=x")
    for plain in ["", "no url here", "trial 3 failed: NaN loss at epoch 2", "a:b@c", "runs:/abc/model",
                  "models:/m@champion", "http://mlflow:5000", "ratio 1:2 @ 3", "/home/u/sweep-optuna.db"]:
        assert urls.mask(plain) == plain


def test_stores_repr_and_str_are_masked() -> None:
    s = storage.Stores(f"postgresql+psycopg2://bob:pa/ss@{SECRET}@db/optuna", f"https://u:{SECRET}@mlflow")
    for shown in (repr(s), str(s), f"{s!r}", repr([s]), repr({"stores": s})):
        assert SECRET not in shown, shown
    assert repr(s) == "Stores(optuna='postgresql+psycopg2://bob:***@db/optuna', tracking='https://u:***@mlflow')"
    assert s.optuna.endswith(f"{SECRET}@db/optuna")  # the values themselves stay usable


def test_plain_postgresql_urls_use_the_shipped_driver() -> None:
    assert urls.db_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert urls.db_url("postgres://u@h:5433/db?sslmode=require") == "postgresql+psycopg2://u@h:5433/db?sslmode=require"
    assert urls.db_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert urls.db_url("sqlite:///x.db") == "sqlite:///x.db"
    assert urls.db_url("http://u:p@w@mlflow:5000") == "http://u:p@w@mlflow:5000"
    assert urls.scheme("postgres://u@h/db") == "postgresql"
    assert urls.scheme("postgresql+psycopg2://u@h/db") == "postgresql"


@pytest.mark.parametrize("password", RAW_PASSWORDS)
def test_db_url_keeps_the_password_users_wrote(password: str) -> None:
    """make_url ends a password at its first `@`; db_url reads it to the last one, escaped."""
    u = sa.make_url(urls.db_url(f"postgresql://bob:{password}@db.example:5433/optuna"))
    assert (u.drivername, u.username, u.password, u.host, u.port, u.database) == \
        ("postgresql+psycopg2", "bob", password, "db.example", 5433, "optuna")


def test_unescaped_at_in_a_password_reaches_the_right_host() -> None:
    """Read as make_url does, `pa/ss@SECRET@127.0.0.1` would be the host `SECRET@127.0.0.1`, and
    the driver's "could not translate host name" would print part of the password."""
    with pytest.raises(ServiceError) as e:
        storage.check_database(f"postgresql://bob:pa/ss@{SECRET}@127.0.0.1:1/optuna", "Optuna storage")
    msg = str(e.value)
    assert SECRET not in msg and "bob:***@127.0.0.1:1/optuna" in msg
    assert "translate host name" not in msg and "Connection refused" in msg


SAME_DATABASE = [
    ("postgresql://optuna:a@db:5432/sweep", "postgresql+psycopg2://mlflow:b@db/sweep"),
    ("postgresql://u@localhost/sweep", "postgres://u@127.0.0.1:5432/sweep"),
    ("postgresql+psycopg://u@[::1]/sweep", "postgresql://u@localhost/sweep?host=/var/run/postgresql"),
    ("postgresql://u@DB.example/sweep", "postgresql://u@db.example/sweep?options=-csearch_path%3Dpublic"),
    ("postgresql://u@db/sweep?options=-c%20search_path%3Dx", "postgresql://u@db/sweep?options=-csearch_path%3Dx,public"),
    ("mysql+pymysql://u@db/sweep", "mysql://v@db:3306/sweep"),
    ("sqlite:///both.db", "sqlite:///{cwd}/both.db"),
    ("sqlite:///{cwd}/sub/../both.db", "sqlite:///link.db"),
]

SEPARATE = [
    ("postgresql://u@db/optuna", "postgresql://u@db/mlflow"),
    ("postgresql://u@db/sweep?options=-csearch_path%3Doptuna", "postgresql://u@db/sweep?options=-csearch_path%3Dmlflow"),
    ("postgresql://u@db/sweep?options=-csearch_path%3Doptuna", "postgresql://u@db/sweep"),
    ("postgresql://u@db:5432/sweep", "postgresql://u@db:5433/sweep"),
    ("postgresql://u@db1/sweep", "postgresql://u@db2/sweep"),
    ("postgresql://u@db/sweep", "http://u:p@db:5000"),
    ("postgresql://u@db/sweep", "mysql://u@db/sweep"),
    ("sqlite:///sweep-optuna.db", "sqlite:///sweep-mlflow.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite:///both.db", "file:///{cwd}/both.db"),
]


def _stores(pair: tuple[str, str], tmp_path: Path) -> storage.Stores:
    (tmp_path / "sub").mkdir(exist_ok=True)
    if not (tmp_path / "link.db").is_symlink():
        (tmp_path / "link.db").symlink_to(tmp_path / "both.db")
    a, b = (u.format(cwd=tmp_path) for u in pair)
    return storage.Stores(urls.db_url(a), urls.db_url(b))


@pytest.mark.parametrize("pair", SAME_DATABASE)
def test_one_database_for_both_stores_is_refused(pair: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        storage.check_separate(_stores(pair, tmp_path))
    assert e.value.exit_code == 2
    assert "alembic_version" in str(e.value) and "Optuna" in str(e.value) and "MLflow" in str(e.value)
    with pytest.raises(ConfigError):
        storage.check_separate(_stores(pair[::-1], tmp_path))


@pytest.mark.parametrize("pair", SEPARATE)
def test_separate_databases_and_schemas_are_accepted(pair: tuple[str, str], tmp_path: Path) -> None:
    storage.check_separate(_stores(pair, tmp_path))
    storage.check_separate(_stores(pair[::-1], tmp_path))


def test_refusal_names_both_masked_and_says_how_to_split() -> None:
    stores = storage.Stores(f"postgresql+psycopg2://sweep:{SECRET}@db:5432/sweep",
                            f"postgresql://sweep:pa/ss@{SECRET}@127.0.0.1/x")
    storage.check_separate(stores)  # different databases
    stores = storage.Stores(stores.optuna, f"postgresql://sweep:pa/ss@{SECRET}@db/sweep")
    with pytest.raises(ConfigError) as e:
        storage.check_separate(stores)
    msg = str(e.value)
    assert SECRET not in msg
    assert "postgresql+psycopg2://sweep:***@db:5432/sweep" in msg and "postgresql://sweep:***@db/sweep" in msg
    assert "two databases (e.g. .../optuna and .../mlflow)" in msg
    assert "?options=-csearch_path%3Doptuna" in msg and "?options=-csearch_path%3Dmlflow" in msg
    with pytest.raises(ConfigError) as e:
        storage.check_separate(storage.Stores("sqlite:///a.db", "sqlite:///./a.db"))
    assert "two files" in str(e.value) and "csearch_path" not in str(e.value)


@pytest.fixture
def postgres_db() -> str:
    if not POSTGRES_URL:
        fail_without_postgres()
    url, drop = postgres_database(POSTGRES_URL)
    yield url
    drop()


def _plain(url: str) -> str:
    """The same database as a plain `postgresql://` URL (what users copy from docs)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.postgres
def test_plain_postgresql_url_works_in_optuna_itself(postgres_db: str) -> None:
    """SQLAlchemy 2.1 maps plain `postgresql://` to psycopg 3: it must be installed."""
    import optuna

    plain = _plain(postgres_db)
    assert sa.create_engine(plain).dialect.driver == "psycopg"
    study = optuna.create_study(study_name="plain", storage=plain)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="plain", storage=plain).trials) == 2
    optuna_cli = str(Path(sys.executable).parent / "optuna")  # the console script; no `python -m optuna`
    r = subprocess.run([optuna_cli, "studies", "--storage", plain, "-f", "value"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "plain" in r.stdout


@pytest.mark.postgres
def test_optuna_and_mlflow_share_a_database_in_two_schemas(postgres_db: str, tmp_path: Path) -> None:
    """What check_separate suggests works with both libraries' own tools, and what it refuses fails."""
    import optuna
    from mlflow import MlflowClient

    engine = sa.create_engine(postgres_db)
    with engine.begin() as c:
        c.execute(sa.text("CREATE SCHEMA optuna; CREATE SCHEMA mlflow"))
    plain = _plain(postgres_db)
    optuna_url, mlflow_url = (f"{plain}?options=-csearch_path%3D{s}" for s in ("optuna", "mlflow"))
    storage.check_separate(storage.Stores(urls.db_url(optuna_url), urls.db_url(mlflow_url)))

    study = optuna.create_study(study_name="s", storage=optuna_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    r = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", mlflow_url], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    client = MlflowClient(mlflow_url)
    run = client.create_run(client.create_experiment("e", artifact_location=tmp_path.as_uri()))
    client.log_metric(run.info.run_id, "m", 0.5)
    assert len(optuna.load_study(study_name="s", storage=urls.db_url(optuna_url)).trials) == 2
    assert client.get_metric_history(run.info.run_id, "m")[0].value == 0.5
    with engine.connect() as c:
        tables = c.execute(sa.text("SELECT table_schema, table_name FROM information_schema.tables "
                                   "WHERE table_schema IN ('public', 'optuna', 'mlflow')")).all()
        versions = {s: c.execute(sa.text(f"SELECT version_num FROM {s}.alembic_version")).scalar_one()
                    for s in ("optuna", "mlflow")}
    assert {s for s, _ in tables} == {"optuna", "mlflow"}
    assert ("optuna", "trials") in tables and ("mlflow", "runs") in tables
    assert versions["optuna"] != versions["mlflow"]

    # one schema for both is what check_separate refuses: MLflow's migration fails on Optuna's revision
    with pytest.raises(ConfigError):
        storage.check_separate(storage.Stores(urls.db_url(optuna_url), urls.db_url(optuna_url)))
    r = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", optuna_url], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    assert versions["optuna"] in r.stderr
    engine.dispose()


def test_defaults_are_sqlite_files_in_the_working_directory(tmp_path: Path) -> None:
    s = storage.resolve()
    assert s.optuna == f"sqlite:///{tmp_path / 'sweep-optuna.db'}"
    assert s.tracking == f"sqlite:///{tmp_path / 'sweep-mlflow.db'}"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mlflow.yaml").write_text("tracking_uri: http://file:5000\noptuna_storage: sqlite:///file.db\n")
    assert storage.resolve() == storage.Stores("sqlite:///file.db", "http://file:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    monkeypatch.setenv("SWEEP_OPTUNA_STORAGE", "sqlite:///env.db")
    assert storage.resolve() == storage.Stores("sqlite:///env.db", "http://env:5000")
    assert storage.resolve("sqlite:///flag.db", "http://flag:5000") == storage.Stores("sqlite:///flag.db", "http://flag:5000")


def test_config_path_from_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "team.yaml").write_text("tracking_uri: http://team:5000\n")
    monkeypatch.setenv("SWEEP_CONFIG", str(tmp_path / "team.yaml"))
    assert storage.resolve().tracking == "http://team:5000"
    (tmp_path / "other.yaml").write_text("tracking_uri: http://other:5000\n")
    with caplog.at_level(logging.DEBUG, logger="sweep.storage"):
        assert storage.resolve(config=tmp_path / "other.yaml").tracking == "http://other:5000"
    # the `-v` line names the file that was read, not $SWEEP_CONFIG's (it did)
    assert f"from {tmp_path / 'other.yaml'} tracking_uri" in caplog.text and "team.yaml" not in caplog.text


def test_the_stores_line_is_said_once_with_where_they_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """`sweep best nosuch -v` said the stores twice, the second time "from --storage": a step
    below the command was handed the resolved URL and resolved it again as if it were a flag."""
    from sweep.errors import SweepError
    from sweep.results import best_config

    monkeypatch.chdir(tmp_path)  # stores of this test's own: the line is said once per process and stores
    with caplog.at_level(logging.DEBUG, logger="sweep.storage"):
        with pytest.raises(SweepError, match="no Optuna storage"):
            best_config("nosuch", storage=storage.resolve())
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Optuna storage")]
    assert len(said) == 1 and "(from the default)" in said[0], said


def test_resolved_stores_carry_the_settings_file_they_were_read_with(tmp_path: Path) -> None:
    """One read of mlflow.yaml: the stores and the rest of it (workers, server) come from the same
    file, and a command hands both down as one object."""
    (tmp_path / "team.yaml").write_text("optuna_storage: sqlite:///team.db\nworkers: {grace_period: 90}\n")
    stores = storage.resolve(config=tmp_path / "team.yaml")
    assert stores.optuna == "sqlite:///team.db" and stores.service.workers.grace_period == 90
    assert storage.resolve(stores) is stores  # handed down as it is
    plain = storage.resolve("sqlite:///team.db")  # no file here: mlflow.yaml's defaults
    assert plain.service.workers.grace_period == 60 and plain.service.server.port == 5000
    assert plain.optuna == stores.optuna and "grace" not in repr(stores)  # the settings are not what a Stores is


def test_settings_expand_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASS", SECRET)
    p = tmp_path / "m.yaml"
    p.write_text("optuna_storage: postgresql://sweep:${PGPASS}@db/optuna\n"
                 "server: {port: 5111, backend_store_uri: 'postgresql://sweep:${PGPASS}@${PGHOST_X:-db}/mlflow'}\n")
    s = load_settings(p)
    assert s.optuna_storage == f"postgresql://sweep:{SECRET}@db/optuna"
    assert s.server.backend_store_uri == f"postgresql://sweep:{SECRET}@db/mlflow"
    assert s.server.port == 5111 and s.server.host == "127.0.0.1"


def test_settings_errors_name_field_and_variable(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("server: {port: 99999, backend_store_uri: 'postgresql://u:${NOT_SET_ANYWHERE}@db/x', colour: red}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert e.value.problems == ["server.backend_store_uri: environment variable NOT_SET_ANYWHERE is not set "
                                "(referenced as ${NOT_SET_ANYWHERE}); export it or put it in .env"]
    p.write_text("server: {port: 99999, colour: red}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    text = str(e.value)
    assert "server.port: Input should be less than or equal to 65535, got 99999" in text
    assert "server.colour: unknown key 'colour'" in text


def test_shipped_mlflow_yaml_validates() -> None:
    s = load_settings(Path(__file__).resolve().parents[1] / "mlflow.yaml")
    assert s.server.host == "127.0.0.1" and s.server.workers == 1 and s.server.job_execution is False


def test_unreachable_database_is_one_masked_message() -> None:
    with pytest.raises(ServiceError) as e:
        storage.optuna_storage(f"postgresql+psycopg2://bob:{SECRET}@127.0.0.1:1/optuna")
    msg = str(e.value)
    assert SECRET not in msg and "bob:***@127.0.0.1:1" in msg and "database server is running" in msg


def test_unreachable_tracking_server() -> None:
    with pytest.raises(ServiceError, match=r"cannot reach the MLflow tracking server at http://127.0.0.1:1"):
        storage.check_tracking("http://127.0.0.1:1", timeout=2)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("flag", ["--storage", "--tracking-uri"])
def test_cli_unreachable_service_stops_before_training(flag: str, tmp_path: Path, tiny_npz: Path) -> None:
    study = write_study(tmp_path, study_dict(tiny_npz))
    url = f"postgresql://bob:{SECRET}@127.0.0.1:1/x" if flag == "--storage" else f"http://bob:{SECRET}@127.0.0.1:1"
    r = _cli(["run", str(study), flag, url], tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and "trial 0" not in r.stderr
    assert SECRET not in r.stdout + r.stderr
    assert "bob:***@127.0.0.1:1" in r.stderr


LOCKER = """
import sys
from sweep import storage

url, name, log = sys.argv[1:4]


def say(what):
    with open(log, "a") as f:
        f.write(f"{name} {what}\\n")


say("trying")
with storage.study_lock(url, "s"):
    say("holds")
    if name == "a":
        sys.stdin.readline()  # held until the test lets go
    say("releases")
"""


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_study_lock_makes_a_second_process_wait_for_the_first(backend: str, tmp_path: Path) -> None:
    """Two real processes race for one study's lock: the second, started once the first holds it,
    takes it only after the first lets go, however long that is. Without the lock, the second
    says `holds` while the first still does. No step waits on the clock to line them up: each waits
    for the other's line in the log; the 2 s below only gives a lock-less second process time to
    show itself."""
    import time

    if backend == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'o.db'}", None
    else:
        if not POSTGRES_URL:
            fail_without_postgres()
        url, drop = postgres_database(POSTGRES_URL)
    log = tmp_path / "lock.log"

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def wait_for(line: str) -> None:
        deadline = time.monotonic() + 120
        while line not in lines():
            assert time.monotonic() < deadline, lines()
            time.sleep(0.05)

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", LOCKER, url, name, str(log)], stdin=subprocess.PIPE, text=True)

    procs = [start("a")]
    try:
        wait_for("a holds")
        procs.append(start("b"))
        wait_for("b trying")
        time.sleep(2)
        assert "b holds" not in lines()
        procs[0].communicate("go\n", timeout=60)
        assert procs[1].wait(timeout=60) == 0 and procs[0].returncode == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if drop is not None:
            drop()
    assert lines() == ["a trying", "a holds", "b trying", "a releases", "b holds", "b releases"]


def _schema(path: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """An SQLite file's tables and indexes as created, and its alembic revision.

    Each statement is kept as its sorted lines: MLflow's own migrations write a table's
    constraints in an order that follows the process's string hashing (two stores MLflow made
    with PYTHONHASHSEED 1 and 2 differ in where one CHECK line sits), so the same schema can be
    spelled in either order.
    """
    import sqlite3

    with sqlite3.connect(path) as conn:
        made = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()
        rev = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
    return [(name, sorted(line.strip().rstrip(",") for line in sql.splitlines())) for name, sql in made], rev


def test_a_new_mlflow_store_is_mlflows_own_schema_without_its_migrations(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    MlflowClient(f"sqlite:///{theirs}").search_experiments()  # MLflow makes this one: every migration
    storage.seed_tracking(f"sqlite:///{ours}")
    templates = list((tmp_path / "cache" / "sweep").glob("mlflow-*-empty.db"))
    assert len(templates) == 1 and ours.is_file()
    assert _schema(ours) == _schema(theirs)
    assert _schema(ours)[1] and not list(tmp_path.glob(".*.new")), "a revision, and no temporary file left"
    client = MlflowClient(f"sqlite:///{ours}")  # MLflow opens it as its own (it checks the revision)
    run = client.create_run(client.create_experiment("x"))
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}

    # a second store copies the template, which stays empty
    other = tmp_path / "other.db"
    storage.seed_tracking(f"sqlite:///{other}")
    assert _schema(other) == _schema(theirs)
    assert MlflowClient(f"sqlite:///{other}").search_runs(["0"]) == []


def test_an_existing_store_or_its_log_is_never_touched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"")  # an empty file: MLflow's, not ours, to fill
    storage.seed_tracking(f"sqlite:///{existing}")
    assert existing.read_bytes() == b""
    # a deleted store's write-ahead log: SQLite would replay it into an identical new file
    (tmp_path / "gone.db-wal").write_bytes(b"x")
    storage.seed_tracking(f"sqlite:///{tmp_path / 'gone.db'}")
    assert not (tmp_path / "gone.db").exists()
    storage.seed_tracking(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}")
    assert not (tmp_path / "no-such-folder").exists()
    storage.seed_tracking("postgresql://u:p@127.0.0.1:1/x")  # not a file: nothing to do, nothing tried


def test_no_cache_to_write_leaves_the_store_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    store = tmp_path / "store.db"
    storage.seed_tracking(f"sqlite:///{store}")
    assert not store.exists()
    MlflowClient(f"sqlite:///{store}").create_experiment("y")  # MLflow's own migrations, as before
    assert _schema(store)[1]
