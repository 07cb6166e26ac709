//! Logs to stderr without a worker ever waiting on stderr, and without a failed write ever
//! touching a review.
//!
//! Each event is formatted on the thread that logs it (JSON lines written field by field, or
//! tracing-subscriber's text for people) and handed to one writer thread through a bounded
//! queue; that thread writes whatever has queued up in one `write` and flushes. A full queue
//! (stderr slower than the log) or a failed write (a closed pipe) drops the line and counts it
//! ([`dropped_lines`], exported as `daemonset_webhook_log_lines_dropped_total`); nothing
//! panics and nothing else is written to stderr about it.
//!
//! Hand-written rather than tracing-appender's non-blocking writer: its worker reports a failed
//! write with `eprintln!`, which panics when stderr is the broken pipe, and it counts only the
//! lines a full queue drops.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
#[cfg(test)]
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Lines waiting for the writer thread; beyond this, lines are dropped (and counted).
const QUEUE_LINES: usize = 8192;

/// Lines not written: queue full, or the write failed.
pub fn dropped_lines() -> &'static Counter {
    static DROPPED: OnceLock<Counter> = OnceLock::new();
    DROPPED.get_or_init(Counter::default)
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), JSON lines or text
/// (`ansi` colours), queued for the writer thread. `None` if the thread could not start; then
/// lines go to stderr directly.
pub fn init(json: bool, ansi: bool) -> Option<Flush> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, flush, queued) = match QueuedStderr::start(io::stderr()) {
        Ok((writer, flush)) => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer.clone()),
            Some(flush),
            Some(writer),
        ),
        Err(_) => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(io::stderr),
            None,
            None,
        ),
    };
    let registry = tracing_subscriber::registry().with(filter);
    if let (true, Some(queue)) = (json, &queued) {
        let _ = DIRECT.set(queue.clone());
    }
    let installed = if json {
        registry
            .with(SpanFieldsLayer)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_writer(writer)
                    .log_internal_errors(false),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer)
                    .log_internal_errors(false),
            )
            .try_init()
    };
    // Already installed (a test, a second call): the first one stays.
    let _ = installed;
    flush
}

/// The queue JSON lines go to, once [`init`] chose JSON: for [`json_line`].
static DIRECT: OnceLock<QueuedStderr> = OnceLock::new();

/// One JSON line in the shape [`JsonLines`] writes, built by hand: for the review line, logged
/// once per review, whose fields through tracing's visitors cost more than the rest of the log.
pub struct JsonLine {
    line: String,
}

impl JsonLine {
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        let _ = json_string(&mut self.line, value);
        self
    }

    pub fn display(&mut self, key: &str, value: &dyn fmt::Display) -> &mut Self {
        self.key(key);
        self.line.push('"');
        let _ = write!(Escaping(&mut self.line), "{value}");
        self.line.push('"');
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.line, "{value}");
        self
    }

    fn key(&mut self, key: &str) {
        self.line.push(',');
        let _ = json_string(&mut self.line, key);
        self.line.push(':');
    }
}

/// Logs an event whose fields `fields` writes, as `tracing` with the JSON format would log it
/// from `target` (outside any span), straight to the writer queue. `false` (nothing logged)
/// unless [`init`] chose JSON: then log it through `tracing`. The caller checks the level is
/// enabled (`tracing::enabled!`), so `RUST_LOG` rules it as it rules every line.
pub fn json_line(
    level: tracing::Level,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut JsonLine),
) -> bool {
    let Some(queue) = DIRECT.get() else {
        return false;
    };
    queue.queue_line(build_line(level, target, message, fields).into_bytes());
    true
}

fn build_line(
    level: tracing::Level,
    target: &str,
    message: &str,
    fields: impl FnOnce(&mut JsonLine),
) -> String {
    let mut line = JsonLine {
        line: String::with_capacity(512),
    };
    line.line.push_str("{\"timestamp\":\"");
    let _ = SystemTime.format_time(&mut Writer::new(&mut line.line));
    line.line.push_str("\",\"level\":\"");
    line.line.push_str(level.as_str());
    line.line.push('"');
    line.str("message", message);
    fields(&mut line);
    line.str("target", target);
    line.line.push_str("}\n");
    line.line
}

/// How lines reach stderr: queued for the writer thread.
#[derive(Clone)]
pub struct QueuedStderr {
    queue: SyncSender<Vec<u8>>,
}

/// Flushes what is queued when dropped (at exit), waiting at most a second.
pub struct Flush {
    done: Receiver<()>,
    queue: Option<SyncSender<Vec<u8>>>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        // The writer ends once every sender is gone; the subscriber keeps one, so wait for what
        // is queued now to be written instead.
        if let Some(queue) = self.queue.take() {
            let _ = queue.try_send(Vec::new());
        }
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

impl QueuedStderr {
    /// Starts the writer thread on `out` (stderr).
    pub fn start<W: Write + Send + 'static>(out: W) -> io::Result<(Self, Flush)> {
        let (queue, lines) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || write_lines(lines, out, done_tx))?;
        Ok((
            Self {
                queue: queue.clone(),
            },
            Flush {
                done,
                queue: Some(queue),
            },
        ))
    }
}

/// How long the writer thread lets lines gather while they keep coming: under load it polls
/// rather than being woken for each line (a wake-up costs more than formatting the line).
const GATHER: Duration = Duration::from_millis(5);

/// The writer thread: whatever has queued, in one write and one flush. Idle, it waits for a
/// line; busy, it polls every [`GATHER`]. An empty line asks for a sign that what came before
/// it is written.
fn write_lines<W: Write>(lines: Receiver<Vec<u8>>, out: W, done: SyncSender<()>) {
    const BUFFER: usize = 64 * 1024;
    let mut out = io::BufWriter::with_capacity(BUFFER, out);
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(first) = next.take() {
            let mut flush_asked = false;
            let mut batch = 0u64;
            let mut failed = false;
            for line in std::iter::once(first).chain(std::iter::from_fn(|| lines.try_recv().ok())) {
                if line.is_empty() {
                    flush_asked = true;
                    continue;
                }
                batch += 1;
                if !failed {
                    failed = out.write_all(&line).is_err();
                }
            }
            if failed || out.flush().is_err() {
                // What this batch held is lost; drop it from the buffer too, so that a pipe
                // that comes back gets whole lines.
                dropped_lines().inc_by(batch);
                let (inner, _) = out.into_parts();
                out = io::BufWriter::with_capacity(BUFFER, inner);
            }
            if flush_asked {
                let _ = done.try_send(());
            }
            std::thread::sleep(GATHER);
            next = lines.try_recv().ok();
        }
    }
}

impl QueuedStderr {
    /// Queues one line; a full queue drops it, counted. Never waits.
    fn queue_line(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            dropped_lines().inc();
        }
    }
}

impl Write for QueuedStderr {
    /// Queues one formatted event (the fmt layer writes each event with one `write_all`).
    /// Never fails and never waits.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if line.is_empty() {
            return Ok(0);
        }
        self.queue_line(line.to_vec());
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = QueuedStderr;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A writer that serializes a `Mutex`-held one (for tests that capture lines).
#[cfg(test)]
pub struct Shared<W>(pub std::sync::Arc<Mutex<W>>);

#[cfg(test)]
impl<W: Write> Write for Shared<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON lines.

/// One JSON object per event, fields at the top level, in the shape tracing-subscriber's
/// `json().flatten_event(true)` writes: `timestamp`, `level`, the event's fields (`message`
/// first), the fields of the spans it happened in (innermost last; a span's field does not
/// replace the event's), then `target`. Written straight into the line, field by field: no
/// map of values is built.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = JsonFields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(recorded) = span.extensions().get::<SpanFields>() {
                    fields.out.write_str(&recorded.0)?;
                }
            }
        }
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_string(&mut writer, metadata.target())?;
        writer.write_str("}\n")
    }
}

/// A span's fields, already written as `,"name":value` pairs.
struct SpanFields(String);

/// Records span fields as [`JsonLines`] writes them, once, when the span is made.
pub struct SpanFieldsLayer;

impl<S> tracing_subscriber::Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut text = String::new();
        let mut fields = JsonFields {
            out: &mut text,
            result: Ok(()),
        };
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(text));
    }
}

struct JsonFields<'w, W: fmt::Write> {
    out: &'w mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.out.write_char(',')?;
        json_string(self.out, field.name())?;
        self.out.write_char(':')
    }

    fn record(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |out| json_string(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.record(field, |out| write!(out, "{value}"));
        } else {
            self.record(field, |out| json_string(out, &value.to_string()));
        }
    }
}

/// Writes `s` as a JSON string.
fn json_string(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    crate::json::escaped_str(out, s)?;
    out.write_char('"')
}

/// Escapes what is written through it as the inside of a JSON string: a value's `Display` goes
/// straight into the line, without a copy.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::json::escaped_str(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = Shared(captured.clone());
        let writer = Mutex::new(writer);
        let subscriber = tracing_subscriber::registry().with(SpanFieldsLayer).with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn events_are_json_lines_with_their_fields_and_their_spans() {
        let got = lines(|| {
            let span = tracing::info_span!("review", uid = "u-1", kind = %"apps/v1/DaemonSet");
            let _entered = span.enter();
            tracing::warn!(
                count = 3u64,
                ok = true,
                ratio = 0.5,
                text = "a \"quoted\"\nline",
                "something {}",
                "happened"
            );
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "something happened");
        assert_eq!(line["count"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["text"], "a \"quoted\"\nline");
        assert_eq!(line["uid"], "u-1");
        assert_eq!(line["kind"], "apps/v1/DaemonSet");
        assert!(line["target"].as_str().unwrap().ends_with("logging::tests"));
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.len() >= 20,
            "{timestamp}"
        );
    }

    #[test]
    fn a_line_built_by_hand_is_the_line_tracing_writes() {
        let text = "a \"quoted\"\nline\u{1}";
        let traced = lines(|| {
            tracing::info!(
                uid = "u-1",
                operation = %"CREATE",
                text,
                count = 3u64,
                "review"
            );
        });
        let by_hand = build_line(tracing::Level::INFO, module_path!(), "review", |line| {
            line.str("uid", "u-1")
                .display("operation", &"CREATE")
                .str("text", text)
                .u64("count", 3);
        });
        assert!(by_hand.ends_with("}\n"));
        let mut by_hand: serde_json::Value = serde_json::from_str(&by_hand).unwrap();
        let mut traced = traced[0].clone();
        for line in [&mut by_hand, &mut traced] {
            line.as_object_mut().unwrap().remove("timestamp");
        }
        assert_eq!(by_hand, traced);
    }

    #[test]
    fn a_failing_or_full_stderr_drops_lines_and_counts_them() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
        }
        let before = dropped_lines().get();
        let (mut writer, flush) = QueuedStderr::start(Broken).unwrap();
        for _ in 0..10 {
            assert_eq!(writer.write(b"line\n").unwrap(), 5, "a write never fails");
        }
        drop(flush);
        assert!(dropped_lines().get() >= before + 10);
    }

    #[test]
    fn queued_lines_are_written_in_order() {
        let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
        let (mut writer, flush) = QueuedStderr::start(Shared(captured.clone())).unwrap();
        for i in 0..1000 {
            writer.write_all(format!("{i}\n").as_bytes()).unwrap();
        }
        drop(flush);
        let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
        let numbers: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
    }
}
