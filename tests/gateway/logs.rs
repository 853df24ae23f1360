//! The gateway's log lines, captured for tests that check what is (never) logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

/// Everything the `lakegate` crate logs from now on, from every thread (the
/// gateway's tasks run on the runtime's workers). Other tests' lines may be
/// mixed in; each test looks for its own values.
pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.clone()
    }
}

/// Installs the process-wide subscriber once (every level of `lakegate`'s own
/// events, with their spans' fields) and returns the shared buffer.
pub(crate) fn capture() -> Captured {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let ours = tracing_subscriber::filter::filter_fn(|metadata| {
            let target = metadata.target();
            target == "lakegate" || target.starts_with("lakegate::")
        });
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(Sink(buffer.clone()))
            .with_ansi(false)
            .with_filter(ours);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber");
        buffer
    });
    Captured(buffer.clone())
}
