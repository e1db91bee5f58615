//! The event store on SQL: embedded SQLite or PostgreSQL, through sqlx's `Any` driver, so that
//! both run the same statements. What differs is the schema's types, the SQLite pragmas and how
//! a reader learns of new events (SQLite's `data_version`, PostgreSQL's `LISTEN`).
//!
//! Tables:
//! - `devset_events (namespace, run, seq, type, time_us, data)`: one row per event, `data`
//!   being the event's JSON, served as is;
//! - `devset_run_logs (namespace, run, last_seq, message_events, dropped_messages,
//!   final_phase, finished_at, expired)`: numbering, the message cap and retention.

use super::{
    Append, Appended, Limits, LogInfo, Row, RunKey, RunState, StoreError, StoredEvent, by_run,
    parse_phase, phase_name,
};
use crate::api::RunPhase;
use jiff::Timestamp;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Row as _, any::AnyPoolOptions};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The PostgreSQL channel that appends notify.
const CHANNEL: &str = "devset_events";
/// How often SQLite's `data_version` is read for changes by other processes.
const SQLITE_POLL: Duration = Duration::from_millis(5);
/// A safety net under PostgreSQL's notifications (a listener reconnecting may miss some).
const PG_POLL: Duration = Duration::from_secs(1);
/// Rows per multi-row INSERT (6 parameters a row, well under both databases' limits).
const ROWS_PER_INSERT: usize = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

// `devset_events` is a rowid table: a WITHOUT ROWID table keeps its rows in index pages, where
// a row of more than about 1,000 bytes (an event with a 1 KiB payload) takes an overflow page
// of its own, which wrote 3.4 times the data and took 3.7 times as long. (A database created
// before keeps its layout; it works, only slower.)
const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devset_events (
  namespace TEXT NOT NULL, run TEXT NOT NULL, seq INTEGER NOT NULL,
  type TEXT NOT NULL, time_us INTEGER NOT NULL, data TEXT NOT NULL,
  PRIMARY KEY (namespace, run, seq));
CREATE TABLE IF NOT EXISTS devset_run_logs (
  namespace TEXT NOT NULL, run TEXT NOT NULL,
  last_seq INTEGER NOT NULL, message_events INTEGER NOT NULL, dropped_messages INTEGER NOT NULL,
  final_phase TEXT, finished_at INTEGER, expired INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (namespace, run));
CREATE INDEX IF NOT EXISTS devset_run_logs_finished ON devset_run_logs (final_phase, finished_at);
";

const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devset_events (
  namespace TEXT NOT NULL, run TEXT NOT NULL, seq BIGINT NOT NULL,
  type TEXT NOT NULL, time_us BIGINT NOT NULL, data TEXT NOT NULL,
  PRIMARY KEY (namespace, run, seq));
CREATE TABLE IF NOT EXISTS devset_run_logs (
  namespace TEXT NOT NULL, run TEXT NOT NULL,
  last_seq BIGINT NOT NULL, message_events BIGINT NOT NULL, dropped_messages BIGINT NOT NULL,
  final_phase TEXT, finished_at BIGINT, expired BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (namespace, run));
CREATE INDEX IF NOT EXISTS devset_run_logs_finished ON devset_run_logs (final_phase, finished_at);
";

/// The event store: SQLite or PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    url: Arc<str>,
    limits: Limits,
    changes: Arc<Mutex<Option<watch::Receiver<u64>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Store {
    /// Opens the store at `url` and creates its tables: `postgres://…`, or `sqlite://PATH` or a
    /// plain file path for SQLite (the file is created).
    pub async fn open(url: &str, limits: Limits) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_owned())
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() {
                return Err(StoreError::Config(format!(
                    "{url:?} names no SQLite file; use sqlite://PATH or postgres://…"
                )));
            }
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Config(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            (Dialect::Sqlite, format!("sqlite://{path}?mode=rwc"))
        };
        let options = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            // Warm PostgreSQL connections: opening one (scram) takes tens of milliseconds.
            .min_connections(if dialect == Dialect::Sqlite { 0 } else { 2 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        sqlite_pragmas(conn).await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        let schema = match dialect {
            Dialect::Sqlite => SQLITE_SCHEMA,
            Dialect::Postgres => POSTGRES_SCHEMA,
        };
        // Two processes may create the tables at once (PostgreSQL's IF NOT EXISTS can still
        // race on its catalog); a lock makes that one at a time.
        let mut tx = pool.begin().await?;
        if dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7415001)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::raw_sql(schema).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Store {
            pool,
            dialect,
            url: url.into(),
            limits,
            changes: Arc::default(),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn describe(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// The bounds this store keeps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends events in one transaction, numbering each run's events on from its last one.
    /// Message events beyond the per-run cap are counted, not stored; `dropped` adds to that
    /// count message events the caller already left out. Durable on return.
    pub async fn append(
        &self,
        events: &mut [Append],
        dropped: &BTreeMap<RunKey, u64>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let appended = self.append_on(&mut conn, events, dropped).await;
        if appended.is_err() {
            // A connection whose append failed is closed, never given back to the pool: on a
            // full disk SQLite rolls the transaction back by itself, sqlx's ROLLBACK then fails
            // and it believes a transaction is still open, so the next append on that
            // connection would only open and release a savepoint, and the writer would take
            // events for committed that no other connection ever sees (found by
            // tests/chaos_faults.rs, 7b). Closing rolls back whatever is still open.
            if let Err(e) = conn.detach().close().await {
                debug!(error = %e, "closing the event store connection of a failed append");
            }
        }
        appended
    }

    async fn append_on(
        &self,
        conn: &mut AnyConnection,
        events: &mut [Append],
        dropped: &BTreeMap<RunKey, u64>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut runs = by_run(events);
        for run in dropped.keys() {
            runs.entry(run).or_default();
        }
        let mut out = Vec::with_capacity(runs.len());
        let mut tx = conn.begin().await?;
        for (run, events) in runs {
            let row = sqlx::query(SELECT_LOG)
                .bind(&run.namespace)
                .bind(&run.name)
                .fetch_optional(&mut *tx)
                .await?;
            let mut st =
                RunState::from(row.as_ref().map(log_info).transpose()?.unwrap_or_default());
            st.dropped += dropped.get(run).copied().unwrap_or(0);
            let rows: Vec<Row> = events
                .into_iter()
                .filter_map(|e| st.admit(e, &self.limits))
                .collect();
            let mut rows = rows.into_iter();
            loop {
                // The rows move into the query: their JSON is not copied again.
                let chunk: Vec<Row> = rows.by_ref().take(ROWS_PER_INSERT).collect();
                if chunk.is_empty() {
                    break;
                }
                let sql = insert_sql(chunk.len(), self.dialect);
                let mut q = sqlx::query(AssertSqlSafe(sql));
                for r in chunk {
                    q = q
                        .bind(&run.namespace)
                        .bind(&run.name)
                        .bind(r.seq)
                        .bind(r.kind)
                        .bind(r.time_us)
                        .bind(r.data);
                }
                q.execute(&mut *tx).await?;
            }
            sqlx::query(
                "INSERT INTO devset_run_logs (namespace, run, last_seq, message_events, \
                 dropped_messages, final_phase, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (namespace, run) DO UPDATE SET last_seq = excluded.last_seq, \
                 message_events = excluded.message_events, \
                 dropped_messages = excluded.dropped_messages, \
                 final_phase = excluded.final_phase, finished_at = excluded.finished_at",
            )
            .bind(&run.namespace)
            .bind(&run.name)
            .bind(st.last_seq as i64)
            .bind(st.message_events as i64)
            .bind(st.dropped as i64)
            .bind(st.final_phase.map(|p| phase_name(p).to_owned()))
            .bind(st.finished_at.map(|t| t.as_second()))
            .execute(&mut *tx)
            .await?;
            out.push(Appended {
                run: run.clone(),
                last_seq: st.last_seq,
            });
        }
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Up to `limit` events of `run` after `after`, in order.
    pub async fn events(
        &self,
        run: &RunKey,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, type, time_us, data FROM devset_events \
             WHERE namespace = $1 AND run = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(&run.namespace)
        .bind(&run.name)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: r.try_get::<i64, _>(0)? as u64,
                    kind: r.try_get(1)?,
                    time_us: r.try_get(2)?,
                    data: r.try_get::<String, _>(3)?.into(),
                })
            })
            .collect()
    }

    /// Event `seq` of `run`.
    pub async fn event(&self, run: &RunKey, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        Ok(self
            .events(run, seq - 1, 1)
            .await?
            .pop()
            .filter(|e| e.seq == seq))
    }

    /// What the store knows of `run`'s log; `None` when it has none.
    pub async fn log(&self, run: &RunKey) -> Result<Option<LogInfo>, StoreError> {
        let row = sqlx::query(SELECT_LOG)
            .bind(&run.namespace)
            .bind(&run.name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(log_info).transpose()?)
    }

    /// Removes `run`'s log.
    pub async fn delete(&self, run: &RunKey) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM devset_events WHERE namespace = $1 AND run = $2",
            "DELETE FROM devset_run_logs WHERE namespace = $1 AND run = $2",
        ] {
            sqlx::query(sql)
                .bind(&run.namespace)
                .bind(&run.name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes the events of runs that ended in `phase` before `before`; their logs stay,
    /// marked expired. Returns how many runs' events went.
    pub(super) async fn expire_phase(
        &self,
        phase: RunPhase,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM devset_events WHERE (namespace, run) IN (SELECT namespace, run \
             FROM devset_run_logs WHERE final_phase = $1 AND finished_at < $2 AND expired = 0)",
        )
        .bind(phase_name(phase))
        .bind(before.as_second())
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "UPDATE devset_run_logs SET expired = 1 \
             WHERE final_phase = $1 AND finished_at < $2 AND expired = 0",
        )
        .bind(phase_name(phase))
        .bind(before.as_second())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Removes the events of runs that ended longer ago than their retention; returns how
    /// many runs' events went.
    pub async fn expire(
        &self,
        now: Timestamp,
        retention: &super::Retention,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for phase in [RunPhase::Completed, RunPhase::Failed, RunPhase::Stopped] {
            let keep = retention.of(phase).expect("a final phase");
            let before = jiff::SignedDuration::try_from(keep)
                .ok()
                .and_then(|d| now.checked_sub(d).ok())
                .unwrap_or(Timestamp::MIN);
            n += self.expire_phase(phase, before).await?;
        }
        Ok(n)
    }

    /// A counter that moves whenever any log may have grown, other processes' appends
    /// included: SQLite's `data_version` read every few milliseconds, or PostgreSQL's
    /// `LISTEN`. Readers wait on it, then read what is new.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let mut slot = self.changes.lock().unwrap();
        if let Some(rx) = &*slot {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(0u64);
        let url = self.url.clone();
        match self.dialect {
            Dialect::Sqlite => tokio::spawn(watch_sqlite(url, tx)),
            Dialect::Postgres => tokio::spawn(watch_postgres(self.pool.clone(), url, tx)),
        };
        *slot = Some(rx.clone());
        rx
    }
}

/// One run's log row, read by [`log_info`].
const SELECT_LOG: &str = "SELECT last_seq, message_events, dropped_messages, final_phase, \
     finished_at, expired FROM devset_run_logs WHERE namespace = $1 AND run = $2";

fn log_info(r: &sqlx::any::AnyRow) -> Result<LogInfo, sqlx::Error> {
    Ok(LogInfo {
        last_seq: r.try_get::<i64, _>(0)? as u64,
        message_events: r.try_get::<i64, _>(1)? as u64,
        dropped_message_events: r.try_get::<i64, _>(2)? as u64,
        final_phase: r
            .try_get::<Option<String>, _>(3)?
            .and_then(|p| parse_phase(&p)),
        finished_at: r
            .try_get::<Option<i64>, _>(4)?
            .and_then(|s| Timestamp::from_second(s).ok()),
        expired: r.try_get::<i64, _>(5)? != 0,
    })
}

/// `INSERT INTO devset_events … VALUES ($1, …, $6), ($7, …)` for `rows` rows on PostgreSQL
/// (QueryBuilder on `Any` writes `?`, which PostgreSQL does not read), and with `?` on SQLite:
/// binding numbered parameters looks each one's name up in a list (sqlite3_bind_parameter_name),
/// which made binding a 3,000-parameter insert quadratic and most of the controller's CPU while
/// it logged a fast publish stage (tests/bench).
fn insert_sql(rows: usize, dialect: Dialect) -> String {
    use std::fmt::Write;
    let mut sql = String::from(
        "INSERT INTO devset_events (namespace, run, seq, type, time_us, data) VALUES ",
    );
    for r in 0..rows {
        let b = r * 6;
        if r > 0 {
            sql.push_str(", ");
        }
        if dialect == Dialect::Sqlite {
            sql.push_str("(?, ?, ?, ?, ?, ?)");
            continue;
        }
        let _ = write!(
            sql,
            "(${}, ${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        );
    }
    sql
}

async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    // WAL: readers (the API) never block the writer (the controller). synchronous=FULL: a
    // commit is on disk when it returns.
    sqlx::raw_sql(
        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Polls `PRAGMA data_version` on a connection of its own: it changes when another
/// connection (of any process) commits.
async fn watch_sqlite(url: Arc<str>, tx: watch::Sender<u64>) {
    let mut conn: Option<AnyConnection> = None;
    let mut last: Option<i64> = None;
    let mut tick = tokio::time::interval(SQLITE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        if conn.is_none() {
            match AnyConnection::connect(&url).await {
                Ok(mut c) => {
                    if sqlite_pragmas(&mut c).await.is_ok() {
                        conn = Some(c);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "event store: cannot open a watch connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match sqlx::query("PRAGMA data_version").fetch_one(&mut *c).await {
            Ok(row) => {
                let v: i64 = row.try_get(0).unwrap_or_default();
                if last != Some(v) {
                    last = Some(v);
                    tx.send_modify(|n| *n += 1);
                }
            }
            Err(e) => {
                debug!(error = %e, "event store: data_version failed; reconnecting");
                conn = None;
            }
        }
    }
}

/// `LISTEN devset_events`, plus a slow tick in case a notification was lost.
async fn watch_postgres(pool: AnyPool, url: Arc<str>, tx: watch::Sender<u64>) {
    drop(pool);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "event store: cannot LISTEN; retrying");
                tx.send_modify(|n| *n += 1);
                tokio::time::sleep(PG_POLL).await;
                if tx.is_closed() {
                    return;
                }
                continue;
            }
        };
        // A (re)connected listener may have missed notifications.
        tx.send_modify(|n| *n += 1);
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => tx.send_modify(|n| *n += 1),
                    Ok(None) => { tx.send_modify(|n| *n += 1); }
                    Err(e) => {
                        debug!(error = %e, "event store: listener failed; reconnecting");
                        break;
                    }
                },
                _ = tokio::time::sleep(PG_POLL) => {
                    if tx.is_closed() {
                        return;
                    }
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
    }
}
