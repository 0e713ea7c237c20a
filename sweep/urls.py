"""Storage URLs read the way their users mean them: parsed (a password with a bare `@` kept
whole), their driver pinned, the database they write to named, and every password masked in any
text, a driver's error message included. No I/O: sweep/storage.py opens and checks what these name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SQL_BACKENDS = ("sqlite", "postgresql", "mysql", "mssql", "oracle")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "oracle": 1521}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


# `scheme://user:` followed, in the same word, by an `@`: a password is there. A regex and not
# make_url: the text may be a whole error message, and make_url ends a password at its first `@`.
_USERINFO_HEAD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/\s]*:(?=\S*@)")


_HOST_THEN_PATH = re.compile(r"(?:\[[^\]\s/?@]+\]|[\w.\-]+)(?::\d+)?/")


# `?password=...`, `&sslpassword=...`, libpq's `password=...`, `PGPASSWORD=...`
_PASSWORD_PARAM = re.compile(r"(?i)\b(\w*pass(?:word|wd))=[^&\s;'\"]+")


def _password_end(word: str) -> int:
    """Where the password ends in `PASSWORD@host...`: at the last `@` that a host and a path
    follow (so unescaped `/ ? @ :` in it count as password), else at the last `@` (no path)."""
    ats = [i for i, c in enumerate(word) if c == "@"]
    for i in reversed(ats):
        if _HOST_THEN_PATH.match(word, i + 1):
            return i
    return ats[-1]


def mask(url: str) -> str:
    """Hide passwords in URLs (`scheme://user:password@host`, `?password=...`) and in any text
    that contains them, such as a driver's error message."""
    if not url:
        return url
    out, pos = [], 0
    for m in _USERINFO_HEAD.finditer(url):
        if m.start() < pos:  # inside a password already hidden
            continue
        word = re.match(r"\S*", url[m.end():]).group()
        end = m.end() + _password_end(word)
        out += [url[pos:m.end()], "***"]
        pos = end
    out.append(url[pos:])
    return _PASSWORD_PARAM.sub(r"\1=***", "".join(out))


# after the `@` that ends a password: host[:port]/database[?query]
_AFTER_PASSWORD = re.compile(r"(?:\[[^\]/?@]+\]|[^@/?:\[\]]+)(?::\d+)?/[^?@]*(?:\?.*)?")


def parse_url(url: str) -> URL | None:
    """SQLAlchemy's reading of a URL, or None when it is not one (a plain path, ...)."""
    return _parse(url)[0]


def _parse(url: str) -> tuple[URL | None, bool]:
    """make_url, and whether the password had to be re-escaped first.

    A password with unescaped `@` (`u:p@ss/w@host/db`) is read as users mean it, up to the last
    `@` that a host and a database follow: make_url ends it at the first `@`, and would connect
    to the host `ss` (or `ss@host`) with the rest of the password in the driver's error message.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    escaped = url
    head = re.match(r"[\w+]+://[^:/]*:", url)
    if head is not None:
        rest = url[head.end():]
        for i in reversed([i for i, c in enumerate(rest) if c == "@"]):
            if _AFTER_PASSWORD.fullmatch(rest[i + 1:]):
                escaped = f"{head.group()}{quote(unquote(rest[:i]), safe='')}@{rest[i + 1:]}"
                break
    try:
        u = make_url(escaped)
    except (ArgumentError, ValueError, TypeError):
        return None, False
    if u.password is not None and u.host and "@" in u.host:  # no database: `u:p@ss@host`
        more, host = u.host.rsplit("@", 1)
        u = u.set(password=f"{u.password}@{unquote(more)}", host=host)
    try:
        repaired = u != make_url(url)
    except (ArgumentError, ValueError, TypeError):
        repaired = True
    return u, repaired


def backend_of(u: URL) -> str:
    name = u.drivername.split("+", 1)[0]
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(name, name)


def db_url(url: str) -> str:
    """Pin plain `postgresql://` / `postgres://` URLs to psycopg2, the driver sweep was built on.

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, which is installed too, so the libraries'
    own tools (`optuna`, `mlflow server`) accept plain URLs; `postgresql+psycopg://` picks it here.
    """
    if url.startswith("sqlite:") and "@" not in url:
        return url  # nothing to pin or repair (and no SQLAlchemy import for `sweep best`)
    u, repaired = _parse(url)  # repaired: a password with a bare `@`, to be written out escaped
    if u is None or backend_of(u) not in SQL_BACKENDS:
        return url
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg2")
    elif not repaired:
        return url
    return u.render_as_string(hide_password=False)


def scheme(url: str) -> str:
    """`postgresql` for `postgresql+psycopg2://...` (and `postgres://`), `sqlite` for `sqlite:///...`."""
    u = parse_url(url)
    return backend_of(u) if u is not None else url.split(":", 1)[0].split("+", 1)[0]


def sqlite_path(url: str) -> Path | None:
    """The file of an `sqlite:///...` URL; None for in-memory databases and other URLs."""
    u = parse_url(url)
    if u is None or backend_of(u) != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    if u.database.startswith("file:"):  # sqlite:///file:x.db?mode=ro&uri=true
        return Path(u.database.removeprefix("file:").split("?", 1)[0]) if query_value(u, "uri") else None
    return Path(u.database)


def query_value(u: URL, key: str) -> str | None:
    value = u.query.get(key)
    return value[0] if isinstance(value, tuple) else value


def _pg_schema(u: URL) -> str:
    """The schema new tables go to: the first of `options=-csearch_path=...`, else `public`."""
    m = re.search(r"(?:-c\s*|--)search_path\s*=\s*(\S+)", query_value(u, "options") or "")
    first = m.group(1).split(",")[0].strip() if m else "public"
    return first[1:-1] if len(first) > 1 and first[0] == first[-1] == '"' else first.lower()


def database_of(url: str) -> tuple | None:
    """What identifies the database (and schema) a URL writes to; None for non-SQL URIs
    (http, file stores) and in-memory SQLite."""
    u = parse_url(url)
    if u is None or backend_of(u) not in SQL_BACKENDS:
        return None
    backend = backend_of(u)
    if backend == "sqlite":
        path = sqlite_path(url)
        return None if path is None else ("sqlite", str(path.expanduser().resolve()))
    host = (u.host or query_value(u, "host") or "localhost").lower()
    if host in LOCAL_HOSTS or host.startswith("/"):  # loopback or a Unix socket: this machine
        host = "localhost"
    port = u.port or int(query_value(u, "port") or DEFAULT_PORTS.get(backend, 0))
    if backend == "postgresql":
        # libpq's defaults: the database named after the user
        return (backend, host, port, u.database or u.username or "", _pg_schema(u))
    return (backend, host, port, u.database or "")
