//! What the simulators share: fault injection and the server lifecycle.
//!
//! The LiteLLM and Stripe simulators take the same fault flags
//! ([`FaultFlags`]) and turn them into [`Faults`], draw each request's faults with [`roll`], close connections
//! without an answer through [`ConnHandle`], and run as a [`SimServer`] on
//! 127.0.0.1 ([`serve_until_signal`] from the command line). Each simulator
//! decides the order in which the drawn faults apply and what its errors
//! look like.

use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use rand::RngExt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// Faults injected into a simulator's answers; change them at run time with
/// the simulator's `set_faults`. `Default` injects nothing.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction (0..1) of requests answered with a simulated 5xx, without acting.
    pub error_rate: f64,
    /// Added latency in milliseconds, uniformly drawn from `min..=max`
    /// (`(0, 0)` for none).
    pub latency_ms: (u64, u64),
    /// A mutating call's first successful attempt acts, then answers 502 (a
    /// lost answer): per resource on LiteLLM, per idempotency key on Stripe.
    pub perform_then_502: bool,
    /// Fraction (0..1) of requests whose connection is closed without an
    /// answer (and without acting).
    pub drop_rate: f64,
    /// `(endpoint, status)`: that endpoint (`*`: every endpoint) always
    /// fails with that status, without acting. The first match wins.
    pub fail: Vec<(String, u16)>,
}

impl Faults {
    /// The same faults, tidied: rates clamped to 0..1 (NaN is 0), the
    /// latency range in order, endpoint names without a leading `/`.
    pub fn normalized(mut self) -> Self {
        self.error_rate = clamp_fraction(self.error_rate);
        self.drop_rate = clamp_fraction(self.drop_rate);
        if self.latency_ms.0 > self.latency_ms.1 {
            self.latency_ms = (self.latency_ms.1, self.latency_ms.0);
        }
        for (endpoint, _) in &mut self.fail {
            *endpoint = endpoint.trim_start_matches('/').to_owned();
        }
        self
    }
}

/// The fault flags both simulators take on their command line (`--fail`,
/// whose endpoint names differ, is each simulator's own).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultFlags {
    /// Fraction (0..1) of requests answered with a simulated server error
    /// (5xx), without acting.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Latency added to every request, in milliseconds: `N`, or `MIN..MAX`
    /// for a uniform pick.
    #[arg(long, default_value = "0", value_parser = parse_latency)]
    pub latency_ms: (u64, u64),
    /// A mutating call's first successful attempt acts, then answers 502 (a
    /// lost answer): per resource on LiteLLM, per idempotency key on Stripe.
    #[arg(long)]
    pub perform_then_502: bool,
    /// Fraction (0..1) of requests whose connection is closed without an
    /// answer (and without acting).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_rate: f64,
}

impl FaultFlags {
    /// These flags with the `--fail` rules, as the faults to inject.
    pub fn faults(&self, fail: &[(String, u16)]) -> Faults {
        Faults {
            error_rate: self.error_rate,
            latency_ms: self.latency_ms,
            perform_then_502: self.perform_then_502,
            drop_rate: self.drop_rate,
            fail: fail.to_vec(),
        }
    }
}

fn clamp_fraction(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Parses a fraction between 0 and 1 (`--error-rate`, `--drop-rate`).
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 1"));
    }
    Ok(v)
}

/// Parses `N` or `MIN..MAX` (milliseconds) for `--latency-ms`.
pub fn parse_latency(s: &str) -> Result<(u64, u64), String> {
    let s = s.trim();
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("{t:?} is not a whole number of milliseconds (use N or MIN..MAX)"))
    };
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.trim_start_matches('='))?),
        None => {
            let n = num(s)?;
            (n, n)
        }
    };
    if min > max {
        return Err(format!("latency range {min}..{max} is empty"));
    }
    Ok((min, max))
}

/// Parses `ENDPOINT=STATUS` for `--fail`: the endpoint one of `known` or
/// `*` (every endpoint), the status an error status (400..599).
pub fn parse_fail(s: &str, known: &[&str]) -> Result<(String, u16), String> {
    let example = known.first().copied().unwrap_or("ENDPOINT");
    let (endpoint, status) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ENDPOINT=STATUS (e.g. {example}=503)"))?;
    let endpoint = endpoint.trim();
    if endpoint != "*" && !known.contains(&endpoint) {
        return Err(format!(
            "unknown endpoint {endpoint:?}; known: {}, or * for every endpoint",
            known.join(", ")
        ));
    }
    let status: u16 = status
        .trim()
        .parse()
        .map_err(|_| format!("{status:?} is not an HTTP status"))?;
    if !(400..=599).contains(&status) {
        return Err(format!("{status} is not an error status (400..599)"));
    }
    Ok((endpoint.to_owned(), status))
}

/// What one request drew: its latency and the faults that apply to it. The
/// simulator decides in which order they apply.
#[derive(Debug)]
pub struct Roll<'a> {
    /// Latency to add before answering.
    pub delay: Duration,
    /// The first `fail` rule for the endpoint: its endpoint as written
    /// (the name or `*`) and its status.
    pub fail: Option<(&'a str, u16)>,
    /// Close the connection without an answer.
    pub drop: bool,
    /// Answer with a simulated 5xx.
    pub error: bool,
}

/// Draws the latency and faults of one request to `endpoint` (takes no lock,
/// never waits).
pub fn roll<'a>(faults: &'a Faults, endpoint: &str) -> Roll<'a> {
    let mut rng = rand::rng();
    let (lo, hi) = faults.latency_ms;
    let delay = Duration::from_millis(if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    });
    let fail = faults
        .fail
        .iter()
        .find(|(e, _)| e == "*" || e == endpoint)
        .map(|(e, status)| (e.as_str(), *status));
    let drop = faults.drop_rate > 0.0 && rng.random::<f64>() < faults.drop_rate;
    let error = faults.error_rate > 0.0 && rng.random::<f64>() < faults.error_rate;
    Roll {
        delay,
        fail,
        drop,
        error,
    }
}

/// Sleeps for a drawn latency (returns at once when it is zero).
pub async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

// ---------------------------------------------------------------------------
// Connections that fault injection can drop
// ---------------------------------------------------------------------------

/// A handler's switch on its own connection, taken as
/// `ConnectInfo<ConnHandle>`: [`drop_connection`](Self::drop_connection)
/// closes it without an answer.
#[derive(Clone, Default)]
pub struct ConnHandle(Arc<AtomicBool>);

impl ConnHandle {
    /// Makes the connection fail, so that hyper closes it without writing
    /// the answer; returns the placeholder answer that is never sent.
    pub fn drop_connection(&self) -> Response {
        self.0.store(true, Ordering::Release);
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }

    fn killed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A TCP stream whose reads and writes fail once its [`ConnHandle`] is killed:
/// hyper then drops the connection without writing the pending answer.
struct SimIo {
    inner: TcpStream,
    conn: ConnHandle,
}

fn dropped_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection dropped by the simulator",
    )
}

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(dropped_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(dropped_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(dropped_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.killed() {
            return Poll::Ready(Err(dropped_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections can be dropped from inside a handler.
struct SimListener(TcpListener);

impl Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimIo, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = SimIo {
                        inner: stream,
                        conn: ConnHandle::default(),
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // A connection that died while queued: take the next one.
                    // Out of file descriptors and the like: wait instead of spinning.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!("simulator accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.io().conn.clone()
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A simulator's running server on 127.0.0.1. Dropping it stops the server;
/// [`shutdown`](Self::shutdown) also waits for it.
pub struct SimServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds 127.0.0.1:`port` (0 = any free port) and serves `app` in a task
    /// of its own; handlers may take `ConnectInfo<ConnHandle>`. `name`
    /// ("LiteLLM") labels the error logged if the server fails.
    pub async fn start(name: &'static str, port: u16, app: Router) -> io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = axum::serve(
            SimListener(listener),
            app.into_make_service_with_connect_info::<ConnHandle>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("{name} simulator stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets answers in flight finish (up to 5 s), then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves until Ctrl-C or SIGTERM (for `orgkeeper simulate …`), then prints
/// `stopping` and shuts the server down.
pub async fn serve_until_signal(server: SimServer, stopping: &str) -> anyhow::Result<()> {
    wait_for_signal().await?;
    println!("{stopping}");
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_refuse_nonsense() {
        assert_eq!(parse_latency("5"), Ok((5, 5)));
        assert_eq!(parse_latency(" 5..20 "), Ok((5, 20)));
        assert_eq!(parse_latency("5..=20"), Ok((5, 20)));
        assert!(parse_latency("20..5").is_err());
        assert!(parse_latency("fast").is_err());
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("NaN").is_err());
        let known = ["a/b", "c"];
        assert_eq!(parse_fail(" c = 429", &known), Ok(("c".into(), 429)));
        assert!(parse_fail("d=429", &known).is_err());
        assert!(parse_fail("c=200", &known).is_err());
        assert!(parse_fail("c", &known).is_err());
    }

    #[test]
    fn normalized_faults_are_safe_to_roll() {
        let f = Faults {
            error_rate: f64::NAN,
            latency_ms: (9, 3),
            drop_rate: 7.0,
            fail: vec![("/a/b".into(), 500)],
            ..Faults::default()
        }
        .normalized();
        assert_eq!(
            (f.error_rate, f.latency_ms, f.drop_rate),
            (0.0, (3, 9), 1.0)
        );
        assert_eq!(f.fail, vec![("a/b".to_string(), 500)]);
    }

    #[test]
    fn a_roll_finds_the_first_matching_rule() {
        let nothing = Faults::default();
        let none = roll(&nothing, "a");
        assert_eq!(
            (none.delay, none.fail, none.drop, none.error),
            (Duration::ZERO, None, false, false)
        );
        let f = Faults {
            error_rate: 1.0,
            latency_ms: (4, 4),
            drop_rate: 1.0,
            fail: vec![("b".into(), 429), ("*".into(), 503), ("a".into(), 400)],
            ..Faults::default()
        };
        let r = roll(&f, "a");
        assert_eq!(
            (r.delay, r.fail, r.drop, r.error),
            (Duration::from_millis(4), Some(("*", 503)), true, true)
        );
        assert_eq!(roll(&f, "b").fail, Some(("b", 429)));
    }
}
