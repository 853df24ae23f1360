//! Bodies streamed through the proxy: the request's under a size cap, the response's
//! under the request's deadline. Neither is ever collected whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body on its way to the app; fails once more than `cap` bytes
/// have passed, and says so through [`Capped::exceeded`].
pub(super) struct Capped {
    inner: AxumBody,
    cap: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl Capped {
    pub(super) fn new(inner: AxumBody, cap: u64) -> Self {
        Self {
            inner,
            cap,
            seen: 0,
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once the body has passed its cap.
    pub(super) fn exceeded(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.exceeded)
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.exceeded.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(over_cap())));
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let length = u64::try_from(data.len()).unwrap_or(u64::MAX);
            self.seen = self.seen.saturating_add(length);
            if self.seen > self.cap {
                self.exceeded.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(over_cap())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn over_cap() -> BoxError {
    "the request body exceeds the proxy's limit".into()
}

/// The app's response body on its way to the client, cut off at `deadline`.
pub(super) struct Deadline<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
}

impl<B> Deadline<B> {
    pub(super) fn new(inner: B, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.is_elapsed() {
            return Poll::Ready(Some(Err(too_late())));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(too_late()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn too_late() -> BoxError {
    "the app's response outlasted the proxy's request timeout".into()
}
