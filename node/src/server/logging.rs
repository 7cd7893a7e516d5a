//! A node's logs: `tracing` events and spans, written by
//! `tracing-subscriber` to stderr as text lines (the default) or JSON lines
//! (`[log] format`), filtered by `[log] filter` or, when it is set,
//! `RUST_LOG` (the same directive syntax: `info,openraft=warn`).
//!
//! Every `Inventory` and `Admin` call runs in an `rpc` span (target
//! [`RPC_TARGET`], level INFO) that names the method, the plane it came in
//! on, its request id or reservation id, the node that forwarded it and the
//! leader it was forwarded to, so whatever a call logs carries them. An
//! enabled span costs a slot in the registry and its fields formatted once,
//! an estimated 1–2 µs per call (not measured), against the ~100 µs of CPU a
//! leader spends per reserve; `reservoir::rpc=off` in the filter turns the
//! spans off when they cost more than they tell.
//!
//! Lines that calls log (refusals, forward failures, commit timeouts) pass a
//! budget first ([`call_line_allowed`]): at most
//! [`CALL_LINES_PER_SECOND_MAX`] a second, the rest counted in
//! `reservoir_log_lines_dropped_total`, so a failover under load writes
//! a few hundred lines, not one per failed call.
//!
//! Caveats: lines are written synchronously, one `write` per line, from the
//! task that logs; fine at the rates the budget allows, not for tracing
//! every call at debug under load.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter a node logs with unless its config or `RUST_LOG` says
/// otherwise: Reservoir's own events at info and above, openraft's and
/// sled's at warn and above (openraft logs every election at info).
pub const FILTER_DEFAULT: &str = "info,openraft=warn,sled=warn";
/// The target of the per-call spans (`rpc`), for filters.
pub const RPC_TARGET: &str = "reservoir::rpc";
/// The environment variable whose filter, when set and not empty, replaces
/// `[log] filter`.
pub const FILTER_ENV: &str = "RUST_LOG";
/// Most lines all calls together may log in one second; the rest are
/// dropped and counted.
pub const CALL_LINES_PER_SECOND_MAX: u64 = 100;
/// Longest filter a config may hold.
pub const FILTER_BYTES_MAX: usize = 4096;
/// Longest client-supplied string (a request or reservation id) a span
/// records; longer ones are cut (they are refused at the edge anyway).
pub const FIELD_BYTES_MAX: usize = 160;

/// How a node logs (`[log]` in its config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default): one human-readable line per event, with a UTC
    /// timestamp, the level, the spans and the fields; `json`: one JSON
    /// object per line.
    pub format: LogFormat,
    /// Which events to write, as `tracing-subscriber`'s `EnvFilter`
    /// directives; `RUST_LOG` replaces it when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: FILTER_DEFAULT.to_string(),
        }
    }
}

/// The line format of a node's logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `2026-05-01T10:00:00.123456Z  WARN rpc{method="reserve" ...}: target: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":"...","level":"WARN","fields":{"message":"...","key":"value"},"target":"...","span":{...}}`.
    Json,
}

impl LogConfig {
    /// Checks the filter parses; the parser's message if not.
    pub fn check(&self) -> Result<(), String> {
        if self.filter.trim().is_empty() || self.filter.len() > FILTER_BYTES_MAX {
            return Err(format!("must hold 1-{FILTER_BYTES_MAX} bytes of directives"));
        }
        EnvFilter::try_new(&self.filter)
            .map(|_| ())
            .map_err(|e| format!("{:?}: {e}", self.filter))
    }
}

/// Installs the process's subscriber: `config`'s format, writing to stderr
/// (with colours only on a terminal), filtered by `RUST_LOG` when set and
/// not empty, else by `config.filter`. `log` records (sled's) are turned
/// into events. An error (a bad `RUST_LOG`, a subscriber already set) is
/// one line for the caller to print.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| format!("{FILTER_ENV} {directives:?}: {e}"))?
        }
        _ => EnvFilter::try_new(&config.filter).map_err(|e| format!("log.filter: {e}"))?,
    };
    let ansi = std::io::stderr().is_terminal();
    subscriber(config.format, filter, ansi, std::io::stderr)
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))
}

/// The subscriber a node logs through: `format` lines to `writer`, events
/// and spans that `filter` lets through, with colours only when `ansi`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                // The event's fields in `fields`, apart from the line's own
                // keys: an event may have a field named `target` or `level`
                // (openraft's do), which flattened would repeat a key.
                .flatten_event(false)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// `value` cut to at most [`FIELD_BYTES_MAX`] bytes (on a character
/// boundary), for a span field that a client chose.
pub fn bounded(value: &str) -> &str {
    if value.len() <= FIELD_BYTES_MAX {
        return value;
    }
    let mut end = FIELD_BYTES_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The second of the current window (since the process started) in the high
/// 32 bits, the lines logged in it in the low 32.
static CALL_LINES: AtomicU64 = AtomicU64::new(0);

/// True when a call may log one more line this second (at most
/// [`CALL_LINES_PER_SECOND_MAX`]); a line refused is counted in
/// `reservoir_log_lines_dropped_total`. One atomic update.
pub fn call_line_allowed() -> bool {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let second = START.get_or_init(Instant::now).elapsed().as_secs() & u64::from(u32::MAX);
    let allowed = budget_take(&CALL_LINES, second, CALL_LINES_PER_SECOND_MAX);
    if !allowed {
        metrics::counter!("reservoir_log_lines_dropped_total").increment(1);
    }
    allowed
}

/// Takes one line from `budget` in `second`, which allows `max` a second.
fn budget_take(budget: &AtomicU64, second: u64, max: u64) -> bool {
    let mut allowed = false;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
        let (at, used) = (word >> 32, word & u64::from(u32::MAX));
        let used = if at == second { used } else { 0 };
        allowed = used < max;
        allowed.then_some((second << 32) | (used + 1))
    });
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default filter and a custom one parse; an empty or broken one is
    /// refused with the parser's word.
    #[test]
    fn filters_are_checked() {
        LogConfig::default().check().unwrap();
        let with = |filter: &str| LogConfig {
            format: LogFormat::Json,
            filter: filter.into(),
        };
        with("debug,reservoir::rpc=off,h2=info").check().unwrap();
        assert!(with("").check().is_err());
        assert!(with("info,openraft=loud").check().is_err());
    }

    /// The budget allows `max` lines a second and starts again the next second.
    #[test]
    fn the_call_line_budget_refills_each_second() {
        let budget = AtomicU64::new(0);
        assert!((0..3).all(|_| budget_take(&budget, 7, 3)));
        assert!(!budget_take(&budget, 7, 3));
        assert!(budget_take(&budget, 8, 3), "a new second");
    }

    /// A client's string is cut on a character boundary.
    #[test]
    fn client_strings_are_bounded() {
        assert_eq!(bounded("r-1"), "r-1");
        let long = "é".repeat(FIELD_BYTES_MAX);
        let cut = bounded(&long);
        assert!(cut.len() <= FIELD_BYTES_MAX && cut.chars().all(|c| c == 'é'));
    }

    /// The two formats as a node writes them: the text line has a timestamp,
    /// the level, the span with its fields and the event's fields; the JSON
    /// line is one object with the same, the event's fields in `fields`.
    #[test]
    fn lines_carry_the_span_and_fields() {
        let text = capture(LogFormat::Text);
        assert!(text.contains(" WARN rpc{"), "{text}");
        assert!(text.contains("method=\"reserve\""), "{text}");
        assert!(text.contains("request_id=\"r-1\""), "{text}");
        assert!(text.contains("leader=\"127.0.0.1:9002\""), "{text}");
        assert!(text.contains("forwarded call failed"), "{text}");
        assert!(
            text.starts_with("20") && text.contains('Z'),
            "a UTC timestamp first: {text}"
        );
        let json = capture(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(json.trim()).expect(&json);
        assert_eq!(line["level"], "WARN", "{json}");
        assert_eq!(line["fields"]["message"], "forwarded call failed", "{json}");
        assert_eq!(line["fields"]["code"], "Unavailable", "{json}");
        assert_eq!(line["span"]["name"], "rpc", "{json}");
        assert_eq!(line["span"]["request_id"], "r-1", "{json}");
        assert_eq!(line["span"]["leader"], "127.0.0.1:9002", "{json}");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{json}"
        );
    }

    /// What one event inside an `rpc` span looks like in `format`.
    fn capture(format: LogFormat) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = {
            let buffer = buffer.clone();
            move || buffer.clone()
        };
        let subscriber = subscriber(format, EnvFilter::new(FILTER_DEFAULT), false, writer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                target: RPC_TARGET,
                "rpc",
                method = "reserve",
                plane = "client",
                request_id = tracing::field::Empty,
                leader = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("request_id", "r-1");
            span.record("leader", "127.0.0.1:9002");
            tracing::warn!(code = "Unavailable", "forwarded call failed");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }
}
