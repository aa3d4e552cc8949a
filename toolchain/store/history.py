"""Every measurement in one database: SQLite in the data directory by default, or PostgreSQL.

SQLAlchemy Core for queries, Alembic for the schema (migrations/versions/), upgraded on open. It
holds the lab history, which answers what a board did lately (regressions, trends) and how it has
changed (`edgedeploy report --history`), and the device measurements every shipped run records
(DeviceMeasurement), which the planner fits each device's next plan to (plan/calibration.py).
A lab run and a plain `ship` write into the same database (default_url()).
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from toolchain.core.errors import BadInputError, TargetError
from toolchain.store.records import BoardRecord, DeviceMeasurement, LinkMeasurement, RunRecord, default_url
from toolchain.store.schema import HEAD_REVISION, VERSION_TABLE, board_results, device_measurements, lab_runs, link_measurements

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalize_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy would pick psycopg2, which is not installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if not url.startswith(("sqlite:", "postgresql+")):
        raise BadInputError(f"history database {url!r} is neither sqlite:///PATH nor postgresql://...",
                            "use sqlite:///path/history.sqlite or postgresql://user@host/db")
    return url


class History:
    def __init__(self, url: str | None = None) -> None:
        self.url = normalize_url(url or default_url())
        parsed = sa.make_url(self.url)
        self.display = parsed.render_as_string(hide_password=True)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        connect_args: dict[str, int] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                try:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise BadInputError(f"history database {self.display}: cannot create its folder: {exc.strerror}",
                                        "give a writable path: --history sqlite:///path/history.sqlite") from exc
            connect_args["timeout"] = 30  # concurrent lab runs wait for each other's writes
        else:
            connect_args["connect_timeout"] = 10
        self.engine = sa.create_engine(self.url, connect_args=connect_args)
        try:
            self._migrate()
        except sa.exc.OperationalError as exc:
            self.engine.dispose()
            raise TargetError(f"history database {self.display}: {str(exc.orig or exc).strip().splitlines()[0]}",
                              "check the URL, that the server is up, and the credentials (--history)") from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        if self._current():
            return
        from alembic import command  # ~0.5 s to import: only when there is something to upgrade
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two lab jobs starting at once must not both create the tables.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(b"edgedeploy-history")})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _current(self) -> bool:
        """Whether the schema is at HEAD_REVISION already (every `plan` opens the database)."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return False
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == HEAD_REVISION

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        db = sa.make_url(self.url).database if self.is_sqlite else None
        if not db or db == ":memory:":
            yield
            return
        with open(f"{db}.migrate-lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            return str(value) if value is not None else None

    # --- writing ----------------------------------------------------------------------------

    def record(self, run: RunRecord, boards: list[BoardRecord]) -> int:
        with self.engine.begin() as conn:
            key = conn.execute(lab_runs.insert().values(**asdict(run))).inserted_primary_key
            assert key is not None
            run_id = int(key[0])
            if boards:
                rows = [{**asdict(b), "labels": ",".join(b.labels), "run_id": run_id} for b in boards]
                conn.execute(board_results.insert(), rows)
        return run_id

    def add_measurements(self, items: Sequence[DeviceMeasurement], *, replacing_origin: str | None = None) -> None:
        """Store items; with replacing_origin, the devices' earlier records of that origin go in the
        same transaction (a new calibration replaces the last one; shipped runs are kept)."""
        if not items:
            return
        t = device_measurements
        with self.engine.begin() as conn:
            if replacing_origin is not None:
                conn.execute(t.delete().where(t.c.fingerprint.in_({m.fingerprint for m in items}), t.c.origin == replacing_origin))
            conn.execute(t.insert(), [asdict(m) for m in items])

    def add_link(self, item: LinkMeasurement) -> None:
        with self.engine.begin() as conn:
            conn.execute(link_measurements.insert().values(**asdict(item)))

    # --- reading ----------------------------------------------------------------------------

    def latest_link(self, head_fingerprint: str, worker_fingerprint: str, address: str) -> LinkMeasurement | None:
        """The newest measurement of the link from this head to this worker at this address."""
        t = link_measurements
        q = (sa.select(t).where(t.c.head_fingerprint == head_fingerprint, t.c.worker_fingerprint == worker_fingerprint,
                                t.c.address == address).order_by(t.c.measured_at.desc(), t.c.id.desc()).limit(1))
        names = {f.name for f in fields(LinkMeasurement)}
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            return None
        data = {k: v for k, v in row.items() if k in names}
        data["measured_at"] = _aware(row["measured_at"])
        return LinkMeasurement(**data)

    def baseline(self, board: str, model: str | None, quant: str | None, limit: int = 10) -> list[float]:
        """Decode tok/s of the board's recent passing runs of this model and quant, newest first."""
        t = board_results
        q = (sa.select(t.c.decode_tokens_per_s)
             .where(t.c.board == board, t.c.model == model, t.c.quant == quant, t.c.passed.is_(True), t.c.decode_tokens_per_s.is_not(None))
             .order_by(t.c.measured_at.desc(), t.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [float(x) for x in conn.execute(q).scalars()]

    def results(self, board: str | None = None, since: datetime | None = None, boards: list[str] | None = None) -> list[BoardRecord]:
        """Board results, oldest first."""
        t = board_results
        q = sa.select(t).order_by(t.c.measured_at, t.c.id)
        if board is not None:
            q = q.where(t.c.board == board)
        if boards is not None:
            q = q.where(t.c.board.in_(boards))
        if since is not None:
            q = q.where(t.c.measured_at >= since)
        names = {f.name for f in fields(BoardRecord)}
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                data = {k: v for k, v in row.items() if k in names}
                data["labels"] = tuple(x for x in (row["labels"] or "").split(",") if x)
                data["measured_at"] = _aware(row["measured_at"])
                out.append(BoardRecord(**data))
        return out

    def measurements(self, fingerprint: str, limit: int | None = None) -> list[DeviceMeasurement]:
        """The device's measurements, oldest first; with limit, only the newest that many."""
        t = device_measurements
        q = sa.select(t).where(t.c.fingerprint == fingerprint).order_by(t.c.measured_at.desc(), t.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        names = {f.name for f in fields(DeviceMeasurement)}
        with self.engine.connect() as conn:
            rows = [{k: v for k, v in row.items() if k in names} for row in conn.execute(q).mappings()]
        out = []
        for row in reversed(rows):
            row["measured_at"] = _aware(row["measured_at"])
            row["bytes_by_type"] = {str(k): int(v) for k, v in (row["bytes_by_type"] or {}).items()}
            out.append(DeviceMeasurement(**row))
        return out

    def runs(self, since: datetime | None = None) -> list[RunRecord]:
        q = sa.select(lab_runs).order_by(lab_runs.c.started_at, lab_runs.c.id)
        if since is not None:
            q = q.where(lab_runs.c.started_at >= since)
        names = {f.name for f in fields(RunRecord)}
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                data = {k: v for k, v in row.items() if k in names}
                data["started_at"], data["finished_at"] = _aware(row["started_at"]), _aware(row["finished_at"])
                out.append(RunRecord(**data))
        return out


def _aware(value: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive; everything stored is UTC."""
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
