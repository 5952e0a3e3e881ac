"""Schema migrations: an ordered list of SQL scripts and a version table.

``migrate`` brings any older database up to ``SCHEMA_VERSION`` in one transaction per step; a
database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE projects (
        pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL
    );
    CREATE TABLE sites (
        pk INTEGER PRIMARY KEY,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        id TEXT NOT NULL, doc TEXT NOT NULL, UNIQUE (project_pk, id)
    );
    CREATE TABLE devices (
        pk INTEGER PRIMARY KEY,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        id TEXT NOT NULL, doc TEXT NOT NULL, UNIQUE (project_pk, id)
    );
    CREATE TABLE variables (
        pk INTEGER PRIMARY KEY,
        device_pk INTEGER NOT NULL REFERENCES devices(pk) ON DELETE CASCADE,
        id TEXT NOT NULL, doc TEXT NOT NULL, UNIQUE (device_pk, id)
    );
    CREATE TABLE series (
        pk INTEGER PRIMARY KEY,
        project_pk INTEGER NOT NULL,
        device_pk INTEGER NOT NULL,
        variable_pk INTEGER NOT NULL REFERENCES variables(pk) ON DELETE CASCADE,
        set_ INTEGER NOT NULL,
        UNIQUE (variable_pk, set_)
    );
    CREATE INDEX series_project ON series (project_pk, device_pk);
    -- The log: append-only in cursor order, no secondary index taxing each insert.
    CREATE TABLE obs (
        cursor INTEGER PRIMARY KEY,
        series INTEGER NOT NULL,
        time INTEGER NOT NULL,
        value,  -- no declared type: REAL, TEXT or NULL exactly as sent
        qc INTEGER NOT NULL DEFAULT 0,
        received INTEGER NOT NULL
    );
    -- (series, time) index over sealed chunks of the log, built a chunk at a time.
    CREATE TABLE obs_index (
        series INTEGER NOT NULL, time INTEGER NOT NULL, cursor INTEGER NOT NULL,
        PRIMARY KEY (series, time)
    ) WITHOUT ROWID;
    CREATE TABLE state (key TEXT PRIMARY KEY, value ANY);
    INSERT INTO state VALUES ('sealed', 0);
    CREATE TABLE accounts (
        pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        home_project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE
    );
    CREATE TABLE account_keys (
        key_id TEXT PRIMARY KEY,
        account_pk INTEGER NOT NULL REFERENCES accounts(pk) ON DELETE CASCADE,
        hash TEXT NOT NULL, created_at TEXT NOT NULL
    );
    CREATE TABLE roles (
        account_pk INTEGER NOT NULL REFERENCES accounts(pk) ON DELETE CASCADE,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        role TEXT NOT NULL,
        PRIMARY KEY (account_pk, project_pk)
    );
    """,
    # 2: quality-control state checkpoints (the log after 'qc_cursor' is replayed on start).
    """
    CREATE TABLE qc_state (
        series INTEGER PRIMARY KEY,
        last_time INTEGER NOT NULL,
        last_value REAL,
        same_since INTEGER NOT NULL
    );
    INSERT INTO state VALUES ('qc_cursor', 0);
    """,
    # 3: outbound deliveries: each consumer's durable cursor, and its dead letters.
    """
    CREATE TABLE delivery_cursors (
        key TEXT PRIMARY KEY, cursor INTEGER NOT NULL, updated_ms INTEGER NOT NULL
    );
    CREATE TABLE delivery_dead_letters (
        pk INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        method TEXT NOT NULL,
        url TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        born_ms INTEGER NOT NULL,
        failed_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT
    );
    CREATE INDEX delivery_dead_letters_key ON delivery_dead_letters (key, pk);
    """,
    # 4: the DT face: service-account settings and data connectors.
    """
    CREATE TABLE dt_accounts (
        account_pk INTEGER PRIMARY KEY REFERENCES accounts(pk) ON DELETE CASCADE,
        basic_auth INTEGER NOT NULL,
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL
    );
    CREATE TABLE dt_connectors (
        pk INTEGER PRIMARY KEY,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        id TEXT NOT NULL UNIQUE,
        doc TEXT NOT NULL,
        start_cursor INTEGER NOT NULL
    );
    """,
    # 5: the push feed: read-only feed tokens (digests only) and durable feed sessions.
    """
    CREATE TABLE feed_tokens (
        pk INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        name TEXT NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        created TEXT NOT NULL
    );
    CREATE TABLE feed_sessions (
        id TEXT PRIMARY KEY,
        token_pk INTEGER NOT NULL REFERENCES feed_tokens(pk) ON DELETE CASCADE,
        args TEXT NOT NULL,
        position INTEGER NOT NULL,
        after_time INTEGER,
        created INTEGER NOT NULL,
        touched INTEGER NOT NULL
    );
    CREATE INDEX feed_sessions_touched ON feed_sessions (touched);
    """,
    # 6: alert channels, the alert log (ids increase), and each alert's actions with their
    # stored payload and delivery outcome.
    """
    CREATE TABLE channels (
        pk INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project_pk INTEGER NOT NULL REFERENCES projects(pk) ON DELETE CASCADE,
        doc TEXT NOT NULL
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel_pk INTEGER NOT NULL REFERENCES channels(pk) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX alerts_channel ON alerts (channel_pk, id);
    CREATE TABLE alert_actions (
        alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        channel_pk INTEGER NOT NULL,
        method TEXT NOT NULL,
        target TEXT NOT NULL,
        body BLOB NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        PRIMARY KEY (alert_id, slot)
    );
    CREATE INDEX alert_actions_slot ON alert_actions (channel_pk, slot, alert_id);
    CREATE INDEX alert_actions_todo ON alert_actions (method, done, alert_id);
    """,
    # 7: alert rules as a durable consumer of the log: the trigger states and the last cursor
    # judged ('alert_cursor'), written in the transactions that log the alerts they produced.
    # An existing log counts as judged (no alert is raised anew for history).
    """
    CREATE TABLE alert_states (
        channel_pk INTEGER NOT NULL REFERENCES channels(pk) ON DELETE CASCADE,
        trigger INTEGER NOT NULL,
        state TEXT NOT NULL,
        since_ms INTEGER,
        last_alert_ms INTEGER,
        last_seen_ms INTEGER,
        PRIMARY KEY (channel_pk, trigger)
    );
    INSERT INTO state SELECT 'alert_cursor', coalesce(max(cursor), 0) FROM obs;
    INSERT INTO state VALUES ('alert_alive_ms', 0);
    """,
    # 8: time series: per (series, UTC hour, QC flags) summaries of the numeric values, kept in
    # the writer's transaction (store/sqlite/summaries.py), built here for an existing log.
    """
    CREATE TABLE obs_summary (
        series INTEGER NOT NULL,
        hour INTEGER NOT NULL,
        qc INTEGER NOT NULL,
        n INTEGER NOT NULL,
        sum REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        first_time INTEGER NOT NULL,
        first_value REAL NOT NULL,
        last_time INTEGER NOT NULL,
        last_value REAL NOT NULL,
        PRIMARY KEY (series, hour, qc)
    ) WITHOUT ROWID;
    INSERT INTO obs_summary
    SELECT series, h, qc, count(*), sum(v), min(v), max(v), min(time), max(fv), max(time), max(lv)
    FROM (
        SELECT series, (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000 AS h, qc,
            value AS v, time,
            first_value(value) OVER w AS fv,
            last_value(value) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                AS lv
        FROM obs WHERE typeof(value) IN ('real', 'integer')
        WINDOW w AS (PARTITION BY series,
            (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000, qc ORDER BY time)
    ) GROUP BY series, h, qc;
    """,
    # 9: metadata changes as data: the events of each metadata write, written in its
    # transaction (store/sqlite/metadata.py: write_events; pruned past its retention).
    """
    CREATE TABLE meta_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order, never reused after a prune
        time INTEGER NOT NULL,  -- commit time, ms
        kind TEXT NOT NULL,  -- the event's type tag (domain/events.py)
        payload TEXT NOT NULL  -- the event, serialized (events.encode)
    );
    CREATE INDEX meta_events_time ON meta_events (time);
    """,
    # 10: where each project's rows are in the log, so a project's catch-up reads only its own
    # rows: 'log_spans' holds cursor ranges (first..last) that hold a project's rows (the
    # writer adds one per committed batch, or extends the project's last one), keyed for a
    # range read from a cursor on. A device moved to another project keeps its rows under
    # the cursors of the project it came from: 'log_moves' notes, per receiving project, the
    # head when a series moved in, and reads up to that cursor take every project's rows.
    # The existing log gets its spans here (runs of consecutive rows of one project).
    """
    CREATE TABLE log_spans (
        project_pk INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
        PRIMARY KEY (project_pk, first)
    ) WITHOUT ROWID;
    CREATE TABLE log_moves (project_pk INTEGER PRIMARY KEY, upto INTEGER NOT NULL);
    CREATE TRIGGER series_moved AFTER UPDATE OF project_pk ON series
    WHEN OLD.project_pk != NEW.project_pk
    BEGIN
        INSERT OR REPLACE INTO log_moves VALUES (
            NEW.project_pk,
            max(coalesce((SELECT upto FROM log_moves WHERE project_pk = NEW.project_pk), 0),
                (SELECT coalesce(max(cursor), 0) FROM obs))
        );
    END;
    INSERT INTO log_spans (project_pk, first, last)
    SELECT project_pk, min(cursor), max(cursor) FROM (
        SELECT o.cursor, s.project_pk,
            row_number() OVER (ORDER BY o.cursor)
            - row_number() OVER (PARTITION BY s.project_pk ORDER BY o.cursor) AS run
        FROM obs o JOIN series s ON s.pk = o.series
    ) GROUP BY project_pk, run;
    """,
    # 11: the summaries cover the log up to 'summarized' (the writer folds rows in when idle;
    # reads summarize the rows after it): rebuilt for the rows indexed so far.
    """
    INSERT INTO state SELECT 'summarized', value FROM state WHERE key = 'sealed';
    DELETE FROM obs_summary;
    INSERT INTO obs_summary
    SELECT series, h, qc, count(*), sum(v), min(v), max(v), min(time), max(fv), max(time), max(lv)
    FROM (
        SELECT series, (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000 AS h, qc,
            value AS v, time,
            first_value(value) OVER w AS fv,
            last_value(value) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                AS lv
        FROM obs WHERE typeof(value) IN ('real', 'integer')
            AND cursor <= (SELECT value FROM state WHERE key = 'sealed')
        WINDOW w AS (PARTITION BY series,
            (time - (((time % 3600000) + 3600000) % 3600000)) / 3600000, qc ORDER BY time)
    ) GROUP BY series, h, qc;
    """,
    # 12: the (series, time) index moves to a database file of its own (``INDEX_SCHEMA``,
    # written by the indexer thread while the writer commits to the log; issue 17). It is
    # built again there from the log; the log gets an identity the index file must match.
    """
    DROP TABLE obs_index;
    DELETE FROM state WHERE key = 'sealed';
    INSERT INTO state VALUES ('log', lower(hex(randomblob(16))));
    """,
    # 13: every change of a metadata table's rows counted in 'meta_edits', whoever makes it
    # (a hand edit with the sqlite3 shell too): what the registry snapshot's fingerprint
    # checks besides the events (``store/sqlite/snapshot.py``). Series' inserts are not
    # counted (ingest adds hundreds a batch): their count and highest pk are.
    """
    INSERT INTO state VALUES ('meta_edits', 0);
    CREATE TRIGGER projects_insert_counted AFTER INSERT ON projects BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER projects_update_counted AFTER UPDATE ON projects BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER projects_delete_counted AFTER DELETE ON projects BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER sites_insert_counted AFTER INSERT ON sites BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER sites_update_counted AFTER UPDATE ON sites BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER sites_delete_counted AFTER DELETE ON sites BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER devices_insert_counted AFTER INSERT ON devices BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER devices_update_counted AFTER UPDATE ON devices BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER devices_delete_counted AFTER DELETE ON devices BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER variables_insert_counted AFTER INSERT ON variables BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER variables_update_counted AFTER UPDATE ON variables BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER variables_delete_counted AFTER DELETE ON variables BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER accounts_insert_counted AFTER INSERT ON accounts BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER accounts_update_counted AFTER UPDATE ON accounts BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER accounts_delete_counted AFTER DELETE ON accounts BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER roles_insert_counted AFTER INSERT ON roles BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER roles_update_counted AFTER UPDATE ON roles BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER roles_delete_counted AFTER DELETE ON roles BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER account_keys_insert_counted AFTER INSERT ON account_keys BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER account_keys_update_counted AFTER UPDATE ON account_keys BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER account_keys_delete_counted AFTER DELETE ON account_keys BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER series_update_counted AFTER UPDATE ON series BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    CREATE TRIGGER series_delete_counted AFTER DELETE ON series BEGIN
        UPDATE state SET value = value + 1 WHERE key = 'meta_edits';
    END;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# The index file (``store.files.index_path``): the log's rows up to ``sealed`` by (series,
# time), and ``log``, the identity (``state.log``) of the log it indexes.
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS obs_index (
    series INTEGER NOT NULL, time INTEGER NOT NULL, cursor INTEGER NOT NULL,
    PRIMARY KEY (series, time)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS index_state (key TEXT PRIMARY KEY, value ANY);
INSERT OR IGNORE INTO index_state VALUES ('sealed', 0);
"""


def sealed_in(conn: sqlite3.Connection) -> int:
    """The index's sealed position in ``conn``'s current snapshot of the index file (attached
    as ``ix``): the log up to it is in ``obs_index``, the rows after it are the tail."""
    return int(conn.execute("SELECT value FROM index_state WHERE key = 'sealed'").fetchone()[0])


class SchemaTooNew(RuntimeError):
    pass


def current_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, migrations: list[str] | None = None) -> int:
    """Apply every missing migration; return the version reached."""
    steps = MIGRATIONS if migrations is None else migrations
    version = current_version(conn)
    if version > len(steps):
        raise SchemaTooNew(
            f"database schema version {version} is newer than this streamgauge ({len(steps)})"
        )
    for number in range(version + 1, len(steps) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements(steps[number - 1]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(steps)


def statements(script: str) -> list[str]:
    """Split a script into statements (``;`` inside strings or triggers is respected)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    out: list[str] = []
    buf = ""
    for piece in "\n".join(lines).split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                out.append(buf.strip())
            buf = ""
    return out
