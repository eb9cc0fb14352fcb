//! SSH (or any TCP) through Google Cloud's Identity-Aware Proxy TCP forwarding, and a
//! self-hosted relay that speaks the same protocol.
//!
//! # Layout
//!
//! One library behind two thin programs: `src/main.rs` (`iap-ssh`, the client) and
//! `src/bin/iap-relay.rs` (`iap-relay`). They alone read the environment, set up signal
//! handling and build runtimes; every entry point here takes its I/O and its stop signal.
//! `docs/architecture.md` follows one byte through all of it.
//!
//! ## Pure: no I/O; time is an argument
//!
//! Shared by both programs:
//! - [`frame`]: relay messages, encode and decode, size limits.
//! - [`close`]: the one close-code table: numbers, names, reason texts, what a close means.
//! - [`target`]: [`target::Target`] and the `/v4/connect` and `/v4/reconnect` query strings.
//! - [`session::state`]: byte counts, the resend buffer, when to ACK, resume arithmetic.
//! - [`session::attach`]: one WebSocket attachment as a state machine: what to send, when to
//!   wake (idle ACK, keepalive, EOF and close waits), when to stop.
//! - `session::inbound`: what a peer's binary message means, per role; LONG_CLOSE merging.
//! - `session::liveness`: when to ping a quiet relay, and when its silence means a dead path.
//! - `session::end`: how an attachment ended, and whether the session can go on.
//!
//! `iap-ssh`:
//! - [`client::cli`]: the command line as argh reads it.
//! - [`client::options`]: every option once: flag, file key, `--print-ssh-config`, `--check`.
//! - [`client::error`]: the client's one error type; a close code's exit status and message.
//! - [`client::gcloud_properties`]: the gcloud properties used, from a file or config-helper.
//! - [`client::ssh_config`]: the `Host *.iap` block of `--print-ssh-config`.
//!
//! `iap-relay`:
//! - [`relay::policy`]: IAM-style bindings, default deny, `decide`.
//! - [`relay::inventory`]: instances and destination groups, and their addresses.
//! - [`relay::locate`]: from a target to a route, and (after the policy) to dialable addresses.
//! - [`relay::forwarded`]: the client's address behind trusted proxies.
//! - [`relay::admission`]: handshake, per-principal and memory-budget slots, freed on drop.
//! - [`relay::throttle`]: token buckets per source address, for token-info lookups.
//! - [`relay::watch`]: when a client has stopped acknowledging, from the pump's `Flow`.
//! - [`relay::metrics`]: counters and their Prometheus text.
//!
//! ## I/O
//!
//! Shared:
//! - [`session::local`]: local ends (TCP, channels to threads); DATA messages built in place.
//! - [`session::stdio`]: stdin and stdout in the runtime when they are pipes or sockets, else
//!   on threads; blocking mode restored when done.
//! - [`session::pump`]: the thin driver: one `select!` joining a local end and a WebSocket,
//!   doing what [`session::attach`] decides.
//! - [`wire`]: the subprotocol, WebSocket limits, TLS client settings (reads CA files; the
//!   system roots are parsed on a thread while the client connects).
//! - [`logging`]: diagnostics to stderr only.
//! - [`signals`]: SIGINT, SIGTERM and SIGHUP as a cancellation, for `iap-ssh`.
//!
//! `iap-ssh` ([`client`]: settings from flags, file and environment to a tunnel config):
//! - [`client::source`]: which credential source a run uses.
//! - [`client::auth`]: tokens from a source, through the cache; a [`client::auth::Token`]
//!   cannot be printed.
//! - [`client::adc`]: Application Default Credentials through `google-cloud-auth`.
//! - [`client::tokeninfo`]: a fresh token's real expiry, from Google's token-info endpoint.
//! - [`client::gcloud`]: the gcloud account, through `gcloud config config-helper`.
//! - [`client::cache`]: the on-disk token cache shared by processes.
//! - [`client::destination`]: project, zone and target from HOST, flags, env and gcloud files.
//! - [`client::user_config`]: the user's `iap-ssh` configuration file.
//! - [`client::proxy`]: which HTTPS proxy, and its CONNECT exchange.
//! - [`client::dial`]: TCP, TLS and the WebSocket upgrade to the relay.
//! - [`client::tunnel`]: one tunnel: connect, first message, pump, resume with backoff.
//! - [`client::stdio`]: ProxyCommand mode: a tunnel over stdin and stdout.
//! - [`client::listen`]: listener mode: a tunnel per accepted connection.
//! - [`client::check`]: `--check`: open one tunnel and report.
//! - [`client::report`]: what the user reads on stderr: resume notices, `-v` lines.
//!
//! `iap-relay` ([`relay`]); a connection goes serve → handshake → connect or resume → attach:
//! - [`relay::serve`]: the [`relay::serve::Relay`], the accept loop, reload, the drain.
//! - `relay::handshake`: first byte, TLS, upgrade, authentication, admission.
//! - [`relay::upgrade`]: the upgrade request on hyper's server: head, 101, refusals.
//! - `relay::connect`: a new session: locate, policy, dial, session id, first attachment.
//! - `relay::resume`: `/v4/reconnect` takes a parked session back; parking with its timer.
//! - `relay::attach`: one attachment: the pump with the session's timers, then park or end.
//! - `relay::dial`: resolving a listed name and dialling the backend.
//! - `relay::report`: every outcome as its log line, audit line and counters, once.
//! - `relay::state`: what a reload replaces, and whether a session may go on under it.
//! - [`relay::sessions`]: the registry of attached and parked sessions.
//! - [`relay::authn`]: bearer tokens: JWT, static hashes or token-info, chosen per token.
//! - [`relay::jwt`]: OIDC/JWT against a JWKS; `[[jwt]]` entries and their confinement.
//! - [`relay::tokeninfo`]: Google-style access tokens at a token-info endpoint, cached.
//! - [`relay::outbound`]: the relay's own HTTPS GETs (JWKS, token-info), on hyper.
//! - [`relay::config`]: `relay.toml` read, checked and built into typed parts.
//! - [`relay::tls`]: the server certificate and optional client-certificate checks.
//! - [`relay::audit`]: the JSON-lines audit log.
//! - [`relay::admin`]: `/healthz` and `/metrics` on their own address.
//! - [`relay::check`]: `--check-config`: every problem, without side effects.
//! - [`relay::init`]: `iap-relay init DIR`: CA, certificate, token and a first `relay.toml`.
//!
//! Data in stdio mode: stdin (read by the runtime, or by a thread for terminals and files) →
//! a DATA message built in place → WebSocket → relay → backend TCP; and back: WebSocket → a
//! slice of the received message (no copy) → stdout.

pub mod client;
pub mod close;
pub mod frame;
pub mod logging;
pub mod relay;
pub mod session;
pub mod signals;
pub mod target;
pub mod wire;
