//! Connection parameters (the Java SDK's `OmniRealtimeParam`) and session configuration (its
//! `OmniRealtimeConfig` + `OmniRealtimeTranscriptionParam`), with validation and the exact
//! `session.update` JSON.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// The model used when none is given: the stable alias, currently served by the dated snapshot
/// `qwen3-asr-flash-realtime-2025-10-27` (as of the service's documentation of late 2025).
pub const DEFAULT_MODEL: &str = "qwen3-asr-flash-realtime";

/// China (Beijing) endpoint; the default, as in both official SDKs.
pub const BEIJING_URL: &str = "wss://dashscope.aliyuncs.com/api-ws/v1/realtime";

/// International (Singapore) endpoint. API keys are per region: use a Singapore key here.
pub const SINGAPORE_URL: &str = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime";

/// The environment variable holding the API key (both SDKs).
pub const API_KEY_ENV: &str = "DASHSCOPE_API_KEY";

/// The environment variable naming a file whose first line is the API key (Java SDK).
pub const API_KEY_FILE_ENV: &str = "DASHSCOPE_API_KEY_FILE_PATH";

/// The gateway closes the socket (1009) on a frame larger than this (observed against the
/// live gateway; the documented 15 MiB per `audio` field is not what it enforces).
pub const GATEWAY_MAX_FRAME_BYTES: usize = 262_144;

/// The language codes the service accepts for `input_audio_transcription.language`
/// (the 27 codes of its documentation). Omitting the language means automatic detection.
pub const LANGUAGES: [&str; 27] = [
    "zh", "yue", "en", "ja", "de", "ko", "ru", "fr", "pt", "ar", "it", "es", "hi", "id", "th",
    "tr", "uk", "vi", "cs", "da", "fil", "fi", "is", "ms", "no", "pl", "sv",
];

/// The workspace-scoped host for a region: `wss://{id}.{region}.maas.aliyuncs.com/…`
/// (`region` is for example `cn-beijing` or `ap-southeast-1`).
pub fn workspace_url(workspace_id: &str, region: &str) -> String {
    format!("wss://{workspace_id}.{region}.maas.aliyuncs.com/api-ws/v1/realtime")
}

/// An API key. It never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// Wraps a key as given (surrounding white space removed).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into().trim().to_owned())
    }

    /// The key itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The Java SDK's order: `DASHSCOPE_API_KEY`, then the file named by
    /// `DASHSCOPE_API_KEY_FILE_PATH`, then `~/.dashscope/api_key` (first line, trimmed).
    /// Empty values count as absent.
    pub fn from_env() -> Result<ApiKey> {
        Self::resolve_with(
            |name| std::env::var(name).ok(),
            std::env::var_os("HOME").map(PathBuf::from).as_deref(),
        )
    }

    fn resolve_with(var: impl Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<ApiKey> {
        if let Some(k) = var(API_KEY_ENV).filter(|k| !k.trim().is_empty()) {
            return Ok(ApiKey::new(k));
        }
        let from_file = |p: &Path| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .filter(|k| !k.is_empty())
        };
        if let Some(path) = var(API_KEY_FILE_ENV).filter(|p| !p.is_empty()) {
            if let Some(k) = from_file(Path::new(&path)) {
                return Ok(ApiKey(k));
            }
        }
        if let Some(k) = home.and_then(|h| from_file(&h.join(".dashscope").join("api_key"))) {
            return Ok(ApiKey(k));
        }
        Err(Error::NoApiKey)
    }
}

/// Per-phase time limits. A timeout error names the phase, and so the field to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// TCP connect. Default 10 s.
    pub connect: Duration,
    /// TLS and WebSocket handshakes together. Default 10 s.
    pub handshake: Duration,
    /// From the handshake to `session.created`. Default 10 s.
    pub session_created: Duration,
    /// From `session.update` to `session.updated` (in `update_session`). Default 10 s.
    pub session_updated: Duration,
    /// The default for `end_session`: from `session.finish` to `session.finished`. Default
    /// 20 s, as in both official SDKs.
    pub end_session: Duration,
}

impl Timeouts {
    /// Sets [`connect`](Self::connect).
    pub fn connect(mut self, connect: Duration) -> Self {
        self.connect = connect;
        self
    }

    /// Sets [`handshake`](Self::handshake).
    pub fn handshake(mut self, handshake: Duration) -> Self {
        self.handshake = handshake;
        self
    }

    /// Sets [`session_created`](Self::session_created).
    pub fn session_created(mut self, session_created: Duration) -> Self {
        self.session_created = session_created;
        self
    }

    /// Sets [`session_updated`](Self::session_updated).
    pub fn session_updated(mut self, session_updated: Duration) -> Self {
        self.session_updated = session_updated;
        self
    }

    /// Sets [`end_session`](Self::end_session).
    pub fn end_session(mut self, end_session: Duration) -> Self {
        self.end_session = end_session;
        self
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            session_created: Duration::from_secs(10),
            session_updated: Duration::from_secs(10),
            end_session: Duration::from_secs(20),
        }
    }
}

/// Keepalive and dead-peer detection. A Wi-Fi link can die without TCP noticing for many
/// minutes; a peer that answers nothing within `dead_peer_timeout` is treated as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// WebSocket pings at this interval; `None` sends none. Default 10 s.
    pub ping_interval: Option<Duration>,
    /// No frame at all (pong or other) for this long means the link is dead. Default 20 s.
    /// Only checked while pings are on: without them a quiet server is indistinguishable
    /// from a dead one.
    pub dead_peer_timeout: Duration,
    /// TCP keepalive idle time on the socket (the kernel probes after it); `None` leaves the
    /// socket's default. Default 30 s.
    pub tcp_keepalive: Option<Duration>,
}

impl Keepalive {
    /// Sets [`ping_interval`](Self::ping_interval).
    pub fn ping_interval(mut self, ping_interval: Option<Duration>) -> Self {
        self.ping_interval = ping_interval;
        self
    }

    /// Sets [`dead_peer_timeout`](Self::dead_peer_timeout).
    pub fn dead_peer_timeout(mut self, dead_peer_timeout: Duration) -> Self {
        self.dead_peer_timeout = dead_peer_timeout;
        self
    }

    /// Sets [`tcp_keepalive`](Self::tcp_keepalive).
    pub fn tcp_keepalive(mut self, tcp_keepalive: Option<Duration>) -> Self {
        self.tcp_keepalive = tcp_keepalive;
        self
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            ping_interval: Some(Duration::from_secs(10)),
            dead_peer_timeout: Duration::from_secs(20),
            tcp_keepalive: Some(Duration::from_secs(30)),
        }
    }
}

/// Automatic reconnection. When the link dies or the server closes with a retryable code
/// (1001, 1006, 1011, 1012, 1013, 1014, a reset, a timeout), a new connection is opened, the
/// session configuration is sent again, and the audio whose result had not come back is
/// replayed (see the README's Reliability section). Authentication and other permanent
/// failures are not retried.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Attempts per outage before giving up. Default 10.
    pub max_attempts: u32,
    /// The wait before the first attempt; doubles with each failed one. Default 250 ms.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. Default 10 s.
    pub max_backoff: Duration,
    /// Each wait is varied by up to this fraction either way, so that many devices losing
    /// the same access point do not reconnect in lockstep. Default 0.2.
    pub jitter: f64,
    /// Sent audio kept for replay until its result comes back; older audio is let go and,
    /// if a reconnect needed it, reported lost. Default 30 s.
    pub replay_window: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
            replay_window: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff).
    pub fn initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets [`jitter`](Self::jitter).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`replay_window`](Self::replay_window).
    pub fn replay_window(mut self, replay_window: Duration) -> Self {
        self.replay_window = replay_window;
        self
    }

    /// The wait before attempt `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Which HTTP proxy to reach the service through (HTTP CONNECT). Its `Debug` output hides
/// the credentials of a proxy URL.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Proxy {
    /// From the environment, as curl reads it: `HTTPS_PROXY`/`https_proxy` for wss://,
    /// `HTTP_PROXY`/`http_proxy` for ws://, then `ALL_PROXY`/`all_proxy`; hosts matching
    /// `NO_PROXY`/`no_proxy`, and loopback, go direct. The default.
    #[default]
    Environment,
    /// Always direct.
    None,
    /// Through this proxy (`http://[user:pass@]host:port`), for every host.
    Url(String),
}

/// The default [`ConnectParams::send_buffer_bytes`].
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 32 * 1024;

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::Environment => f.write_str("Environment"),
            Proxy::None => f.write_str("None"),
            Proxy::Url(u) => f.debug_tuple("Url").field(&redact_userinfo(u)).finish(),
        }
    }
}

/// `url` with any `user:password@` replaced by `***@`, for messages and `Debug` output.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}***@{host}{}", &rest[authority_end..]),
        None => url.to_owned(),
    }
}

/// `url` without credentials and with the value of every query parameter but `model`
/// hidden: a gateway may take a token there.
fn redact_url(url: &str) -> String {
    let url = redact_userinfo(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("model", _)) | None => pair.to_owned(),
            Some((name, _)) => format!("{name}=<redacted>"),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// How to reach the service: the Java SDK's `OmniRealtimeParam` plus this crate's transport
/// knobs. Its `Debug` output shows no secret: not the API key, no header value (an
/// `Authorization` header is a key too), no proxy or URL credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectParams {
    /// The model. Default [`DEFAULT_MODEL`].
    pub model: String,
    /// The endpoint. Default [`BEIJING_URL`]. `?model=` is appended unless already present.
    pub url: String,
    /// The API key; `None` resolves it from the environment at connect ([`ApiKey::from_env`]).
    pub api_key: Option<ApiKey>,
    /// Sent as `X-DashScope-WorkSpace` when set.
    pub workspace: Option<String>,
    /// Sends `X-DashScope-DataInspection: enable` when true (the service advises against it
    /// unless needed). Default false.
    pub data_inspection: bool,
    /// Extra upgrade-request headers; they override ours of the same name, as in the SDKs.
    pub headers: Vec<(String, String)>,
    /// Time limits per phase.
    pub timeouts: Timeouts,
    /// Extra trusted root certificates (PEM), for private gateways and tests. The system's
    /// roots stay trusted.
    pub root_certificates: Vec<Vec<u8>>,
    /// Allows `ws://` (no TLS) to hosts that are not loopback. Default false: the API key
    /// would travel in clear text.
    pub allow_insecure_ws: bool,
    /// No outgoing frame is larger than this; long audio is split. Default
    /// [`GATEWAY_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Outgoing frames queued between the caller and the socket before appends block (or
    /// `try_append_*` returns `Full`). Default 64: 6.4 s of 100 ms chunks.
    pub send_queue_frames: usize,
    /// Events buffered for the caller before partial transcripts start to be coalesced.
    /// Default 1024.
    pub event_capacity: usize,
    /// The largest message (and frame) accepted from the server; a larger one closes the
    /// connection with 1009. Default 1 MiB: the service's events are a few hundred bytes.
    pub max_incoming_message_bytes: usize,
    /// Keepalive and dead-peer detection.
    pub keepalive: Keepalive,
    /// Automatic reconnection; `None` (the default) ends the conversation when the link dies.
    pub reconnect: Option<ReconnectPolicy>,
    /// The proxy. Default [`Proxy::Environment`].
    pub proxy: Proxy,
    /// The kernel's send buffer for the socket (`SO_SNDBUF`, which Linux doubles), or `None`
    /// to let the kernel autotune it. Default 32 KiB: under a second of PCM. Autotuned, it
    /// grows to 4 MiB, and on a link slower than the audio that is over a minute of audio
    /// that appends hand over without ever waiting, and that no one can see or get back.
    pub send_buffer_bytes: Option<usize>,
    /// The most audio that may wait to leave the device (queued, in the socket's buffers, in
    /// the kernel's send queue) before the oldest queued audio is dropped and reported as
    /// `client.audio_dropped`. For live sources that must not fall behind real time. Default
    /// `None`: appends wait for the link instead, and nothing is dropped.
    pub max_backlog: Option<Duration>,
    /// The backlog at which `client.link_behind` is raised. Default 1 s.
    pub behind_threshold: Duration,
}

impl Default for ConnectParams {
    fn default() -> Self {
        ConnectParams {
            model: DEFAULT_MODEL.to_owned(),
            url: BEIJING_URL.to_owned(),
            api_key: None,
            workspace: None,
            data_inspection: false,
            headers: Vec::new(),
            timeouts: Timeouts::default(),
            root_certificates: Vec::new(),
            allow_insecure_ws: false,
            max_frame_bytes: GATEWAY_MAX_FRAME_BYTES,
            send_queue_frames: 64,
            event_capacity: 1024,
            max_incoming_message_bytes: 1 << 20,
            keepalive: Keepalive::default(),
            reconnect: None,
            proxy: Proxy::Environment,
            send_buffer_bytes: Some(DEFAULT_SEND_BUFFER_BYTES),
            max_backlog: None,
            behind_threshold: Duration::from_secs(1),
        }
    }
}

/// Text that `Debug` prints as it is, without quotes.
struct Verbatim(String);

impl fmt::Debug for Verbatim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be added without deciding how it is shown.
        let ConnectParams {
            model,
            url,
            api_key,
            workspace,
            data_inspection,
            headers,
            timeouts,
            root_certificates,
            allow_insecure_ws,
            max_frame_bytes,
            send_queue_frames,
            event_capacity,
            max_incoming_message_bytes,
            keepalive,
            reconnect,
            proxy,
            send_buffer_bytes,
            max_backlog,
            behind_threshold,
        } = self;
        let header_names: Vec<Verbatim> = headers
            .iter()
            .map(|(name, _)| Verbatim(format!("({name:?}, <redacted>)")))
            .collect();
        let root_sizes: Vec<Verbatim> = root_certificates
            .iter()
            .map(|pem| Verbatim(format!("<{} bytes of PEM>", pem.len())))
            .collect();
        f.debug_struct("ConnectParams")
            .field("model", model)
            .field("url", &redact_url(url))
            .field("api_key", api_key)
            .field("workspace", workspace)
            .field("data_inspection", data_inspection)
            .field("headers", &header_names)
            .field("timeouts", timeouts)
            .field("root_certificates", &root_sizes)
            .field("allow_insecure_ws", allow_insecure_ws)
            .field("max_frame_bytes", max_frame_bytes)
            .field("send_queue_frames", send_queue_frames)
            .field("event_capacity", event_capacity)
            .field("max_incoming_message_bytes", max_incoming_message_bytes)
            .field("keepalive", keepalive)
            .field("reconnect", reconnect)
            .field("proxy", proxy)
            .field("send_buffer_bytes", send_buffer_bytes)
            .field("max_backlog", max_backlog)
            .field("behind_threshold", behind_threshold)
            .finish()
    }
}

impl ConnectParams {
    /// Defaults: the Beijing endpoint and [`DEFAULT_MODEL`], key from the environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`data_inspection`](Self::data_inspection).
    pub fn data_inspection(mut self, data_inspection: bool) -> Self {
        self.data_inspection = data_inspection;
        self
    }

    /// Sets [`max_frame_bytes`](Self::max_frame_bytes).
    pub fn max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    /// Sets [`send_queue_frames`](Self::send_queue_frames).
    pub fn send_queue_frames(mut self, send_queue_frames: usize) -> Self {
        self.send_queue_frames = send_queue_frames;
        self
    }

    /// Sets [`event_capacity`](Self::event_capacity).
    pub fn event_capacity(mut self, event_capacity: usize) -> Self {
        self.event_capacity = event_capacity;
        self
    }

    /// Sets [`max_incoming_message_bytes`](Self::max_incoming_message_bytes).
    pub fn max_incoming_message_bytes(mut self, max_incoming_message_bytes: usize) -> Self {
        self.max_incoming_message_bytes = max_incoming_message_bytes;
        self
    }

    /// Sets [`send_buffer_bytes`](Self::send_buffer_bytes).
    pub fn send_buffer_bytes(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer_bytes = bytes;
        self
    }

    /// Sets [`max_backlog`](Self::max_backlog).
    pub fn max_backlog(mut self, max: Option<Duration>) -> Self {
        self.max_backlog = max;
        self
    }

    /// Sets [`behind_threshold`](Self::behind_threshold).
    pub fn behind_threshold(mut self, threshold: Duration) -> Self {
        self.behind_threshold = threshold;
        self
    }

    /// Sets the model.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the endpoint URL (for example [`SINGAPORE_URL`], [`workspace_url`], or an
    /// emulator's URL).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets the API key explicitly.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Sets the workspace id header.
    pub fn workspace(mut self, workspace: impl Into<String>) -> Self {
        self.workspace = Some(workspace.into());
        self
    }

    /// Adds an upgrade-request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the per-phase timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Trusts an extra root certificate (PEM).
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Turns on automatic reconnection with this policy.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Sets keepalive and dead-peer detection.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Sets the proxy.
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// Allows `ws://` to non-loopback hosts.
    pub fn allow_insecure_ws(mut self, allow: bool) -> Self {
        self.allow_insecure_ws = allow;
        self
    }

    /// The URL actually requested: `url` with `model=` added unless it already has one.
    pub fn request_url(&self) -> String {
        let has_model = self
            .url
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("model=")));
        if has_model {
            self.url.clone()
        } else {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}model={}", self.url, self.model)
        }
    }

    /// Checks the values that can be checked before connecting.
    pub fn validate(&self) -> Result<()> {
        if self.model.trim().is_empty() {
            return Err(Error::InvalidConfig {
                field: "model",
                message: "must not be empty".into(),
            });
        }
        // Room for the append event's envelope plus at least one sample.
        let min = crate::protocol::APPEND_OVERHEAD_BYTES + 8;
        if self.max_frame_bytes < min {
            return Err(Error::InvalidConfig {
                field: "max_frame_bytes",
                message: format!("{} is below the minimum of {min}", self.max_frame_bytes),
            });
        }
        for (field, v) in [
            ("send_queue_frames", self.send_queue_frames),
            ("event_capacity", self.event_capacity),
        ] {
            if v == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    message: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// The audio format announced in `session.update`. PCM is 16-bit signed little-endian mono;
/// Opus is passed through as given (the service documents `opus` but not its framing), unless
/// the library encodes it: `SessionConfig::opus`, feature `opus`, writes one Ogg Opus stream
/// per session from the PCM appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioFormat {
    /// 16-bit signed little-endian mono PCM.
    #[default]
    Pcm,
    /// Opus, passed through.
    Opus,
}

impl AudioFormat {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            AudioFormat::Pcm => "pcm",
            AudioFormat::Opus => "opus",
        }
    }
}

/// Server-side voice activity detection: the server cuts utterances by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnDetection {
    /// Speech threshold in [-1, 1]; lower is more sensitive. Default 0.2 (the service
    /// recommends 0.0 for low latency).
    pub threshold: f64,
    /// Silence that ends an utterance, in [200, 6000] ms. Default 800 (400 recommended for
    /// low latency).
    pub silence_duration_ms: u32,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            threshold: 0.2,
            silence_duration_ms: 800,
        }
    }
}

/// What `session.update` configures. The default is the service's own: server VAD with
/// threshold 0.2 and 800 ms silence, 16 kHz PCM, automatic language detection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// `Some` for server-VAD mode, `None` for manual mode (`"turn_detection": null`), where
    /// the caller commits each utterance.
    pub turn_detection: Option<TurnDetection>,
    /// One of [`LANGUAGES`], or `None` for automatic detection. Setting a language that does
    /// not match the audio can make the service translate into it (observed).
    pub language: Option<String>,
    /// 16000 or 8000 Hz.
    pub sample_rate: u32,
    /// The input audio format.
    pub input_audio_format: AudioFormat,
    /// Context text for biasing (`input_audio_transcription.corpus.text`): names, vocabulary,
    /// background. The service takes up to 10,000 tokens.
    pub context: Option<String>,
    /// `Some`: the library encodes the PCM given to `append_pcm`, `try_append_pcm` and
    /// capture into one Ogg Opus stream per session (headers first, one whole page per
    /// append; a new stream after every reconnect) with these settings, and
    /// `input_audio_format` must be [`AudioFormat::Opus`] ([`opus`](Self::opus) sets both).
    /// `None` (the default): PCM is sent as it is, and an Opus session passes the caller's
    /// bytes through untouched.
    #[cfg(feature = "opus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opus")))]
    pub opus: Option<crate::opus::OpusConfig>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            turn_detection: Some(TurnDetection::default()),
            language: None,
            sample_rate: 16_000,
            input_audio_format: AudioFormat::Pcm,
            context: None,
            #[cfg(feature = "opus")]
            opus: None,
        }
    }
}

/// The longest context we send: it must fit in one frame under the gateway's cap with room
/// to spare. The service's own limit is 10,000 tokens, which it checks itself.
pub const MAX_CONTEXT_BYTES: usize = 128 * 1024;

impl SessionConfig {
    /// Server-VAD mode with the service's defaults.
    pub fn vad() -> Self {
        Self::default()
    }

    /// Manual mode: the caller commits each utterance.
    pub fn manual() -> Self {
        SessionConfig {
            turn_detection: None,
            ..Self::default()
        }
    }

    /// Sets the language (checked by [`validate`](Self::validate)).
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// Sets the sample rate (16000 or 8000).
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.sample_rate = hz;
        self
    }

    /// Sets the context text.
    pub fn context(mut self, text: impl Into<String>) -> Self {
        self.context = Some(text.into());
        self
    }

    /// Sets the VAD threshold (switches to VAD mode).
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.turn_detection
            .get_or_insert_with(Default::default)
            .threshold = threshold;
        self
    }

    /// Sets the VAD silence duration (switches to VAD mode).
    pub fn silence_duration_ms(mut self, ms: u32) -> Self {
        self.turn_detection
            .get_or_insert_with(Default::default)
            .silence_duration_ms = ms;
        self
    }

    /// Encodes the uplink as Ogg Opus with these settings: sets [`opus`](Self::opus) and
    /// `input_audio_format` = [`AudioFormat::Opus`]. PCM appends are encoded on the
    /// conversation's I/O thread; the accounting ([`Stats`](crate::Stats),
    /// `client.audio_dropped`) still counts the PCM's milliseconds. Pre-encoded bytes
    /// (`append_bytes`, `append_base64`) are refused in such a session: spliced into the
    /// stream this library writes they would break it.
    #[cfg(feature = "opus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opus")))]
    pub fn opus(mut self, config: crate::opus::OpusConfig) -> Self {
        self.opus = Some(config);
        self.input_audio_format = AudioFormat::Opus;
        self
    }

    /// True when appends of PCM are encoded to Opus by the library (feature `opus`).
    pub fn encodes_opus(&self) -> bool {
        #[cfg(feature = "opus")]
        {
            self.opus.is_some()
        }
        #[cfg(not(feature = "opus"))]
        {
            false
        }
    }

    /// True in manual mode.
    pub fn is_manual(&self) -> bool {
        self.turn_detection.is_none()
    }

    /// Checks every field against the service's documented ranges, so that a bad value is
    /// refused here, before anything is sent.
    pub fn validate(&self) -> Result<()> {
        if let Some(td) = &self.turn_detection {
            if !(-1.0..=1.0).contains(&td.threshold) {
                return Err(Error::InvalidConfig {
                    field: "turn_detection.threshold",
                    message: format!("{} is outside [-1.0, 1.0]", td.threshold),
                });
            }
            if !(200..=6000).contains(&td.silence_duration_ms) {
                return Err(Error::InvalidConfig {
                    field: "turn_detection.silence_duration_ms",
                    message: format!("{} is outside [200, 6000] ms", td.silence_duration_ms),
                });
            }
        }
        if !matches!(self.sample_rate, 8000 | 16000) {
            return Err(Error::InvalidConfig {
                field: "sample_rate",
                message: format!(
                    "{} Hz is not supported; use 16000 or 8000",
                    self.sample_rate
                ),
            });
        }
        #[cfg(feature = "opus")]
        if let Some(opus) = &self.opus {
            if self.input_audio_format != AudioFormat::Opus {
                return Err(Error::InvalidConfig {
                    field: "input_audio_format",
                    message: "must be opus when the library encodes Opus (opus is set)".into(),
                });
            }
            if let Err(e) = opus.validate() {
                let field = match &e {
                    crate::opus::OpusError::InvalidConfig { field, .. } => field,
                    _ => "opus",
                };
                return Err(Error::InvalidConfig {
                    field,
                    message: e.to_string(),
                });
            }
        }
        if let Some(lang) = &self.language {
            if !LANGUAGES.contains(&lang.as_str()) {
                return Err(Error::InvalidConfig {
                    field: "input_audio_transcription.language",
                    message: format!(
                        "{lang:?} is not one of {} (omit it for automatic detection)",
                        LANGUAGES.join(", ")
                    ),
                });
            }
        }
        if let Some(ctx) = &self.context {
            if ctx.len() > MAX_CONTEXT_BYTES {
                return Err(Error::InvalidConfig {
                    field: "input_audio_transcription.corpus.text",
                    message: format!(
                        "{} bytes is over the limit of {MAX_CONTEXT_BYTES} bytes",
                        ctx.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The `session.update` event, with the keys and order of the official Python SDK
    /// (`OmniRealtimeConversation.update_session`), so the service sees what it sees from the
    /// SDKs: `modalities`,
    /// `voice: null` and `output_audio_format` are Omni leftovers the SDKs always send, and
    /// `prefix_padding_ms: 300` is the SDKs' constant.
    pub(crate) fn to_update_json(&self, event_id: &str) -> String {
        #[derive(Serialize)]
        struct Update<'a> {
            event_id: &'a str,
            #[serde(rename = "type")]
            event_type: &'static str,
            session: WireSession<'a>,
        }
        #[derive(Serialize)]
        struct WireSession<'a> {
            modalities: [&'static str; 1],
            voice: Option<()>,
            input_audio_format: &'static str,
            output_audio_format: &'static str,
            input_audio_transcription: Transcription<'a>,
            turn_detection: Option<WireTurn>,
            sample_rate: u32,
        }
        #[derive(Serialize)]
        struct Transcription<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            language: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            corpus: Option<Corpus<'a>>,
        }
        #[derive(Serialize)]
        struct Corpus<'a> {
            text: &'a str,
        }
        #[derive(Serialize)]
        struct WireTurn {
            #[serde(rename = "type")]
            kind: &'static str,
            threshold: f64,
            prefix_padding_ms: u32,
            silence_duration_ms: u32,
        }
        let update = Update {
            event_id,
            event_type: "session.update",
            session: WireSession {
                modalities: ["text"],
                voice: None,
                input_audio_format: self.input_audio_format.as_str(),
                output_audio_format: "pcm16",
                input_audio_transcription: Transcription {
                    language: self.language.as_deref(),
                    corpus: self.context.as_deref().map(|text| Corpus { text }),
                },
                turn_detection: self.turn_detection.map(|td| WireTurn {
                    kind: "server_vad",
                    threshold: td.threshold,
                    prefix_padding_ms: 300,
                    silence_duration_ms: td.silence_duration_ms,
                }),
                sample_rate: self.sample_rate,
            },
        };
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(&update).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_update_json_matches_the_python_sdk_in_vad_mode() {
        let cfg = SessionConfig::vad()
            .language("zh")
            .context("ctx")
            .threshold(0.0)
            .silence_duration_ms(400);
        assert_eq!(
            cfg.to_update_json("event_31712206265640cd95007b4b5dc00b81"),
            r#"{"event_id":"event_31712206265640cd95007b4b5dc00b81","type":"session.update","session":{"modalities":["text"],"voice":null,"input_audio_format":"pcm","output_audio_format":"pcm16","input_audio_transcription":{"language":"zh","corpus":{"text":"ctx"}},"turn_detection":{"type":"server_vad","threshold":0.0,"prefix_padding_ms":300,"silence_duration_ms":400},"sample_rate":16000}}"#
        );
    }

    #[test]
    fn session_update_json_in_manual_mode_has_null_turn_detection() {
        let cfg = SessionConfig::manual().sample_rate(8000);
        assert_eq!(
            cfg.to_update_json("event_0"),
            r#"{"event_id":"event_0","type":"session.update","session":{"modalities":["text"],"voice":null,"input_audio_format":"pcm","output_audio_format":"pcm16","input_audio_transcription":{},"turn_detection":null,"sample_rate":8000}}"#
        );
    }

    #[test]
    fn default_threshold_serialises_as_in_the_sdk() {
        let json = SessionConfig::vad().to_update_json("e");
        assert!(
            json.contains(r#""threshold":0.2,"prefix_padding_ms":300,"silence_duration_ms":800"#)
        );
    }

    #[test]
    fn out_of_range_values_name_the_field_and_range() {
        let cases: [(SessionConfig, &str, &str); 6] = [
            (
                SessionConfig::vad().threshold(1.5),
                "turn_detection.threshold",
                "[-1.0, 1.0]",
            ),
            (
                SessionConfig::vad().threshold(f64::NAN),
                "turn_detection.threshold",
                "[-1.0, 1.0]",
            ),
            (
                SessionConfig::vad().silence_duration_ms(199),
                "turn_detection.silence_duration_ms",
                "[200, 6000]",
            ),
            (
                SessionConfig::vad().silence_duration_ms(6001),
                "turn_detection.silence_duration_ms",
                "[200, 6000]",
            ),
            (
                SessionConfig::vad().sample_rate(44100),
                "sample_rate",
                "16000 or 8000",
            ),
            (
                SessionConfig::vad().language("auto"),
                "input_audio_transcription.language",
                "zh, yue, en",
            ),
        ];
        for (cfg, want_field, want_text) in cases {
            match cfg.validate() {
                Err(Error::InvalidConfig { field, message }) => {
                    assert_eq!(field, want_field);
                    let shown = Error::InvalidConfig { field, message }.to_string();
                    assert!(shown.contains(want_text), "{shown}");
                }
                other => panic!("{want_field}: expected InvalidConfig, got {other:?}"),
            }
        }
        for ok in [
            SessionConfig::vad()
                .threshold(-1.0)
                .silence_duration_ms(200),
            SessionConfig::vad()
                .threshold(1.0)
                .silence_duration_ms(6000),
            SessionConfig::manual().sample_rate(8000).language("fil"),
        ] {
            ok.validate().unwrap();
        }
    }

    #[test]
    fn model_is_appended_to_the_url_unless_present() {
        let p = ConnectParams::new();
        assert_eq!(
            p.request_url(),
            format!("{BEIJING_URL}?model=qwen3-asr-flash-realtime")
        );
        let p = ConnectParams::new().url("wss://h/x?model=m2").model("m1");
        assert_eq!(p.request_url(), "wss://h/x?model=m2");
        let p = ConnectParams::new().url("wss://h/x?a=1").model("m1");
        assert_eq!(p.request_url(), "wss://h/x?a=1&model=m1");
        assert_eq!(
            workspace_url("ws1", "ap-southeast-1"),
            "wss://ws1.ap-southeast-1.maas.aliyuncs.com/api-ws/v1/realtime"
        );
    }

    #[test]
    fn api_key_resolution_follows_the_java_order() {
        let dir = std::env::temp_dir().join(format!("qwen-asr-key-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".dashscope")).unwrap();
        let file = dir.join("keyfile");
        std::fs::write(&file, "  from-file  \nsecond line\n").unwrap();
        std::fs::write(dir.join(".dashscope/api_key"), "from-home\n").unwrap();
        let file_s = file.to_string_lossy().into_owned();

        let env = |k: Option<&str>, f: Option<&str>| {
            let (k, f) = (k.map(str::to_owned), f.map(str::to_owned));
            move |name: &str| match name {
                API_KEY_ENV => k.clone(),
                API_KEY_FILE_ENV => f.clone(),
                _ => None,
            }
        };
        let got = |r: Result<ApiKey>| r.map(|k| k.expose().to_owned()).ok();
        assert_eq!(
            got(ApiKey::resolve_with(
                env(Some("from-env"), Some(&file_s)),
                Some(&dir)
            ))
            .as_deref(),
            Some("from-env")
        );
        assert_eq!(
            got(ApiKey::resolve_with(
                env(Some(""), Some(&file_s)),
                Some(&dir)
            ))
            .as_deref(),
            Some("from-file")
        );
        assert_eq!(
            got(ApiKey::resolve_with(
                env(None, Some("/nonexistent")),
                Some(&dir)
            ))
            .as_deref(),
            Some("from-home")
        );
        let none = ApiKey::resolve_with(env(None, None), Some(Path::new("/nonexistent")));
        let msg = none.unwrap_err().to_string();
        assert!(msg.contains("DASHSCOPE_API_KEY"), "{msg}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn debug_shows_no_header_value_and_no_credentials() {
        let secrets = [
            "sk-secret-123",
            "Bearer hdr-token-456",
            "proxy-pw-789",
            "url-pw-012",
            "query-token-345",
        ];
        let p = ConnectParams::new()
            .api_key(secrets[0])
            .header("Authorization", secrets[1])
            .header("X-Trace", "trace-1")
            .url(format!(
                "wss://me:{}@gw.example/realtime?token={}&model=m1",
                secrets[3], secrets[4]
            ))
            .proxy(Proxy::Url(format!(
                "http://corp-user:{}@proxy:3128",
                secrets[2]
            )));
        for shown in [format!("{p:?}"), format!("{p:#?}")] {
            for s in secrets {
                assert!(!shown.contains(s), "{s} in {shown}");
            }
            // What is not secret is still there to debug with.
            for s in [
                "\"Authorization\"",
                "X-Trace",
                "proxy:3128",
                "gw.example",
                "model=m1",
            ] {
                assert!(shown.contains(s), "{s} missing in {shown}");
            }
        }
        let proxy = Proxy::Url(format!("http://u:{}@h:1/", secrets[2]));
        for shown in [format!("{proxy:?}"), format!("{proxy:#?}")] {
            assert!(
                !shown.contains(secrets[2]) && shown.contains("h:1"),
                "{shown}"
            );
        }
        assert_eq!(redact_userinfo("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(redact_userinfo("u:p@h:1"), "***@h:1");
    }

    #[test]
    fn api_key_is_redacted_in_debug() {
        let p = ConnectParams::new().api_key("sk-secret-123");
        let shown = format!("{p:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
